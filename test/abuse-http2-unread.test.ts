import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { boundUnreadChunks, tinyFramesReset } from '../proxy/http2/unread-chunks.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { closeSession, data, frame, h2Connect, headerFrames, hpackLiteral, RawH2 } from './helpers/h2.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { jsonLineSink, type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// The bound on a request body's unread DATA frames (proxy/http2/unread-chunks.ts) against the uploads it must let
// through and the clients it is for. A large upload streamed to an origin that takes it slower than the client sends
// can keep the stream's buffer from ever emptying, thousands of frames in a row: such an upload must go through
// whole. A client sending its body a byte a frame to a stream nobody reads is reset, and that reset is logged as ours.
const HOST = 'unread.lab.test';
/** The upload: 32 MiB in 16 KiB writes (node:http2 sends a DATA frame a write, up to its 16 KiB frame size). */
const UPLOAD_BYTES = 32 * 1024 * 1024;
const WRITE_BYTES = 16 * 1024;

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: http.Server;
const lines: Record<string, unknown>[] = [];
/** How many times the origin paused its reading of an upload. */
let pauses = 0;
/** Answers the origin holds until their test lets them go. */
const held: http.ServerResponse[] = [];

/** An origin that reads an upload slowly (each 256 KiB it stops reading for 10 ms) and answers with its length and hash; /hold answers when let go. */
function slowReader(req: http.IncomingMessage, res: http.ServerResponse): void {
  const hash = createHash('sha256');
  let bytes = 0;
  let sincePause = 0;
  req.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
    sincePause += chunk.length;
    if (sincePause >= 256 * 1024) {
      sincePause = 0;
      pauses++;
      req.pause();
      setTimeout(() => req.resume(), 10);
    }
  });
  if (req.url === '/hold') held.push(res);
  else req.on('end', () => res.end(`${bytes} ${hash.digest('hex')}`));
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('unread', lab.keys.ec, [HOST]);
  origin = http.createServer(slowReader);
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'unread', chain: cert.file }],
      // Every body streams from its first byte; one upload at a time reaches the origin (half its two connections), the next waits.
      limits: { maxBodyBytes: 2 * UPLOAD_BYTES, bodyBufferBytes: 0, originMaxConnections: 2, originMaxQueue: 8, originQueueTimeoutMs: 60_000 },
      domains: [{ name: HOST, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
    }),
    { log: createLogger('http2-unread-test', 'info', jsonLineSink(lines)) },
  );
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  origin?.closeAllConnections();
  await new Promise((resolve) => origin?.close(resolve));
  await lab?.close();
});

/** A body of `bytes` whose every 4 KiB says where it is: a byte lost or moved changes its hash. */
function numbered(bytes: number): Buffer {
  const body = Buffer.alloc(bytes);
  for (let i = 0; i < body.length; i += 4096) body.writeUInt32BE(i, i);
  return body;
}

const digest = (body: Buffer): string => `${body.length} ${createHash('sha256').update(body).digest('hex')}`;

/** Until `stream` takes more writes, or closes. */
function drained(stream: http2.ClientHttp2Stream): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off('drain', done).off('close', done);
      resolve();
    };
    stream.on('drain', done).on('close', done);
  });
}

/** Writes `body` to `stream` in WRITE_BYTES writes, each once the stream takes more; ends it when `end`. */
async function send(stream: http2.ClientHttp2Stream, body: Buffer, end: boolean): Promise<void> {
  for (let at = 0; at < body.length && !stream.destroyed; at += WRITE_BYTES) {
    if (!stream.write(body.subarray(at, at + WRITE_BYTES))) await drained(stream);
  }
  if (end && !stream.destroyed) stream.end();
}

type Closed = { status: number | undefined; text: string; rstCode: number | undefined };

/** A POST on `session`, its body to be sent: its answer's status and body, and the stream's close code, once it closes. */
function post(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): { stream: http2.ClientHttp2Stream; closed: Promise<Closed> } {
  const stream = session.request({ ':method': 'POST', ...headers }, { endStream: false });
  const closed = new Promise<Closed>((resolve) => {
    let status: number | undefined;
    const chunks: Buffer[] = [];
    stream.on('response', (head) => (status = Number(head[':status'])));
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('error', () => undefined);
    stream.on('close', () => resolve({ status, text: Buffer.concat(chunks).toString(), rstCode: stream.rstCode }));
  });
  return { stream, closed };
}

describe('a large upload to an origin that takes it slowly', () => {
  it('goes through whole', async () => {
    const body = numbered(UPLOAD_BYTES);
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    try {
      const { stream, closed } = post(session, { ':path': '/upload' });
      await send(stream, body, true);
      const answer = await closed;
      // The origin read it slowly (backpressure reached the proxy), and it all arrived.
      expect({ status: answer.status, rstCode: answer.rstCode, text: answer.text, paused: pauses > 64 }).toEqual({
        status: 200,
        rstCode: http2.constants.NGHTTP2_NO_ERROR,
        text: digest(body),
        paused: true,
      });
    } finally {
      await closeSession(session);
    }
    const line = await waitFor('its access line', () => lines.find((l) => l.access === true && l.path === '/upload'));
    expect({ status: line.status, code: line.code, aborted: line.aborted }).toEqual({ status: 200, code: undefined, aborted: undefined });
  }, 120_000);
});

describe('the bound on a stream read slower than its body arrives', () => {
  // Through the proxy on loopback, an upload's buffer empties every few dozen frames however slowly the origin reads:
  // the origin connection's socket buffer takes tens of KiB at each wake, more than the stream holds (its window and
  // Node's 16 KiB read-ahead). Over a link slower than the client's, it need not: the reader here is that case, a
  // real node:http2 stream read as fast as its body arrives, all but its last byte, so its buffer is never empty.
  let server: http2.Http2Server;
  let session: http2.ClientHttp2Session;
  const streams: http2.ServerHttp2Stream[] = [];

  /** Reads `stream` every millisecond, all but its last byte until the whole declared body is in; answers its length and hash. */
  function readAllButOne(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    boundUnreadChunks(stream);
    streams.push(stream);
    stream.on('error', () => undefined);
    const declared = Number(headers['content-length']);
    const hash = createHash('sha256');
    let bytes = 0;
    const take = (chunk: Buffer | null): void => {
      if (chunk === null) return;
      hash.update(chunk);
      bytes += chunk.length;
    };
    const timer = setInterval(() => {
      if (stream.destroyed) return clearInterval(timer);
      const unread = stream.readableLength;
      if (bytes + unread < declared) return unread > 1 ? take(stream.read(unread - 1) as Buffer | null) : undefined;
      clearInterval(timer);
      stream.on('data', take);
      stream.on('end', () => {
        stream.respond({ ':status': 200 });
        stream.end(`${bytes} ${hash.digest('hex')}`);
      });
    }, 1);
  }

  beforeAll(async () => {
    server = http2.createServer();
    server.on('stream', readAllButOne);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    session.on('error', () => undefined);
  });

  afterAll(async () => {
    await closeSession(session);
    await new Promise((resolve) => server.close(resolve));
  });

  const upload = (length: number): ReturnType<typeof post> => post(session, { ':path': '/', 'content-length': String(length) });

  it('lets a large upload in large frames through whole, its buffer never empty', async () => {
    const body = numbered(UPLOAD_BYTES);
    const { stream, closed } = upload(body.length);
    await send(stream, body, true);
    const answer = await closed;
    expect({ status: answer.status, rstCode: answer.rstCode, text: answer.text, reset: tinyFramesReset(streams.at(-1)!) }).toEqual({
      status: 200,
      rstCode: http2.constants.NGHTTP2_NO_ERROR,
      text: digest(body),
      reset: false,
    });
  }, 60_000);

  it('still resets one-byte frames that follow megabytes of large ones', async () => {
    // What the large frames sent before them averaged must not vouch for them: 4 MiB is 64 bytes a frame for 65,536.
    const TINY = 3000;
    const { stream, closed } = upload(4 * 1024 * 1024 + TINY);
    await send(stream, numbered(4 * 1024 * 1024), false);
    const one = Buffer.from('a');
    // Each written once the last went out: node:http2 would join writes waiting together into one frame.
    for (let i = 0; i < TINY && !stream.destroyed; i++) await new Promise((resolve) => stream.write(one, resolve));
    if (!stream.destroyed) stream.end();
    const answer = await closed;
    expect({ rstCode: answer.rstCode, reset: tinyFramesReset(streams.at(-1)!) }).toEqual({ rstCode: http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, reset: true });
  }, 60_000);
});

describe("the bound's reset, through the proxy", () => {
  it('is logged as ours, not as the client leaving', async () => {
    // The one upload the origin takes at a time: held open, so the next waits for its place with its body unread.
    const holder = h2Connect(proxy.ports[0]!, ca, HOST);
    const hold = post(holder, { ':path': '/hold' });
    hold.stream.write('x');
    await waitFor('the held upload at the origin', () => (held.length === 1 ? true : undefined));
    const client = new RawH2(proxy.ports[0]!, ca, HOST);
    try {
      await client.secure;
      client.preface();
      const block = Buffer.concat([Buffer.from([0x83, 0x87]), hpackLiteral(':path', '/tiny'), hpackLiteral(':authority', HOST)]);
      client.write(headerFrames(1, block, false));
      // A byte a frame, within the stream's window: what the waiting body's stream takes (some 32 KiB) and then
      // thousands more, unread behind it.
      const one = data(1, Buffer.from('a'), false);
      client.write(Buffer.concat(Array.from({ length: 40_000 }, () => one)));
      await waitFor('the reset', () => client.streamResets.get(1), 60_000);
      expect(client.streamResets.get(1)).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      const line = await waitFor('its access line', () => lines.find((l) => l.access === true && l.path === '/tiny'));
      expect({ status: line.status, code: line.code, aborted: line.aborted }).toEqual({ status: 444, code: 'KEYEDGE_HTTP_TINY_FRAMES', aborted: true });
    } finally {
      client.tls.destroy();
      held.shift()?.end('ok');
      hold.stream.end();
      await hold.closed;
      await closeSession(holder);
    }
  }, 90_000);
});

describe('the memory an unread stream holds', () => {
  // Node's HTTP/2 session hands each DATA frame over as a view of the whole socket read it came in: a frame of one
  // byte, held unread, keeps that read (tens of KiB) alive. A client that sends each tiny frame with a large frame Node
  // reads and drops (an unknown type, RFC 9113 §4.1: ignored) behind it made 1,024 one-byte frames, which the bound
  // lets in, hold 16 MB, not the kilobyte they carry; 128 such streams a connection, gigabytes.
  let server: http2.Http2Server;
  const streams: http2.ServerHttp2Stream[] = [];

  beforeAll(async () => {
    server = http2.createServer();
    server.on('stream', (stream) => {
      boundUnreadChunks(stream);
      stream.on('error', () => undefined);
      streams.push(stream);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  afterAll(async () => {
    for (const stream of streams) stream.destroy();
    await new Promise((resolve) => server.close(resolve));
  });

  it('is what its tiny frames carry, not the reads they came in', async () => {
    const FRAMES = 1000;
    const tcp = (await import('node:net')).connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    tcp.on('error', () => undefined);
    tcp.on('data', () => undefined);
    try {
      const block = Buffer.concat([Buffer.from([0x83, 0x86]), hpackLiteral(':path', '/'), hpackLiteral(':authority', HOST)]);
      tcp.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(0x4, 0, 0, Buffer.alloc(0)), headerFrames(1, block, false)]));
      const junk = frame(0xb0, 0, 0, Buffer.alloc(16_000));
      const one = data(1, Buffer.from('a'), false);
      for (let i = 0; i < FRAMES; i++) if (!tcp.write(Buffer.concat([junk, one]))) await new Promise((resolve) => tcp.once('drain', resolve));
      const stream = await waitFor('the stream', () => streams[0]);
      await waitFor('every frame in its buffer', () => (stream.readableLength === FRAMES ? true : undefined), 30_000);
      // Read now: the chunks its buffer held, as they were.
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      await waitFor('its chunks', () => (chunks.length === FRAMES ? true : undefined));
      const reads = new Set(chunks.map((chunk) => chunk.buffer));
      let held = 0;
      for (const read of reads) held += read.byteLength;
      // A kilobyte of frames: what holds them may cost more than their bytes, but not a read's worth each.
      expect({ reset: tinyFramesReset(stream), heldUnder64KiB: held < 64 * 1024 }).toEqual({ reset: false, heldUnder64KiB: true });
    } finally {
      tcp.destroy();
    }
  }, 60_000);
});
