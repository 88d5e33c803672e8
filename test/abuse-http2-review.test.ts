import { readFileSync } from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import type http2 from 'node:http2';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { type RunningWorker, startProxyWorker } from '../proxy/worker.js';
import { closeSession, data, frame, h2Connect, headerFrames, hpackLiteral, RawH2, rstStream } from './helpers/h2.js';
import { sleep } from './helpers/basics.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { jsonLineSink, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { startOriginWorker } from './helpers/origin-worker.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// HTTP/2 streams whose end is the proxy's own doing, for reasons the origin
// gave (an answer it cannot relay whole): through an in-process worker with a
// low limits.http2MaxResetStreams, from a raw origin. Such resets are not the
// client's: they must not count as its Rapid Reset, end its connection and
// every other stream on it, or be logged as its abort.
const HOST = 'review.lab.test';
/** limits.http2MaxResetStreams: its floor, so that a few dozen streams would cross it. */
const MAX_RESETS = 10;

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const lines: Record<string, unknown>[] = [];
const sockets = new Set<net.Socket>();
/** Each request head the origin read. */
const heads: string[] = [];

/** A trailer section Node cannot send in one block (more than nghttp2's 64 KiB as it counts): the answer is cut. */
const MANY_TRAILERS = `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: a\r\n\r\n2\r\nok\r\n0\r\n${'a: 1\r\n'.repeat(6000)}\r\n`;

/** 4 MiB written as the proxy takes it: keeps the client connection's socket writing while other answers end. */
function download(socket: net.Socket): void {
  socket.write(`HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: ${4 * 1024 * 1024}\r\n\r\n`);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let sent = 0;
  const more = (): void => {
    while (sent < 64) {
      sent++;
      if (!socket.write(chunk)) return void socket.once('drain', more);
    }
    socket.end();
  };
  more();
}

const ANSWERS: Record<string, string | ((socket: net.Socket) => void)> = {
  '/download': download,
  '/upload': 'HTTP/1.1 202 Accepted\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok',
  '/upload-left': 'HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok',
  '/many-trailers': MANY_TRAILERS,
  '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
  '/spoofed-h2': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
  '/spoofed-h1': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
};

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('review', lab.keys.ec, [HOST]);
  origin = scriptedOrigin(ANSWERS, { sockets, heads });
  proxy = await startOriginWorker(lab, {
    certificate: { name: 'review', chain: cert.file },
    host: HOST,
    origin,
    limits: { http2MaxResetStreams: MAX_RESETS },
    logName: 'http2-review-test',
    lines,
  });
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

/** One GET on `session`: its status (if a head came) and the stream's close code; never rejects. */
function get(session: http2.ClientHttp2Session, path: string): Promise<{ status: number | undefined; code: number | string | undefined }> {
  return new Promise((resolve) => {
    let status: number | undefined;
    // The connection was ended under the client: no stream can be opened on it.
    if (session.destroyed || session.closed) return resolve({ status, code: 'connection ended' });
    const stream = session.request({ ':path': path });
    stream.on('response', (head) => (status = Number(head[':status'])));
    stream.on('data', () => undefined);
    stream.on('error', () => undefined);
    stream.on('close', () => resolve({ status, code: stream.rstCode }));
  });
}

describe('resets of our own making on HTTP/2', () => {
  it("an origin's trailers too large to send cut their stream, and no number of them ends the client's connection or is logged as its abort", async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    const goaways: number[] = [];
    session.on('goaway', (code) => goaways.push(code));
    try {
      const rounds = 3 * MAX_RESETS;
      const outcomes: string[] = [];
      // One after another: a burst of three times the bound, far faster than it refills.
      for (let i = 0; i < rounds; i++) {
        const { status, code } = await get(session, '/many-trailers');
        outcomes.push(`${status} ${code}`);
      }
      // Each: the head and body went out, then INTERNAL_ERROR (RFC 9113 §8.1: only a reset says an answer is not whole).
      expect(outcomes).toEqual(outcomes.map(() => '200 2'));
      expect(goaways).toEqual([]);
      expect(await get(session, '/ok')).toEqual({ status: 200, code: 0 });
      const logged = await waitFor('every access line', () => {
        const found = lines.filter((l) => l.access === true && l.path === '/many-trailers');
        return found.length === rounds ? found : undefined;
      });
      // The origin's failure, not the client's leaving.
      expect(new Set(logged.map((l) => `${l.status} ${l.code}`))).toEqual(new Set(['200 KEYEDGE_HTTP_ORIGIN_ABORTED']));
      expect(lines.filter((l) => l.msg === 'HTTP/2 connection reset too many streams: GOAWAY ENHANCE_YOUR_CALM')).toEqual([]);
    } finally {
      await closeSession(session);
    }
  });
});

describe('an answer to a request with a body, whole while other streams keep its connection busy', () => {
  // Node destroys such a stream (its body read) as our END_STREAM goes out, before the writes that carried its last
  // bytes are called back (they wait on the connection's socket write, which a download on the same connection keeps
  // busy): about half of these answers, whole at the client, were logged as its abort (KEYEDGE_HTTP_CLIENT_CLOSED).
  it('is logged whole; one whose end the client resets (RST_STREAM NO_ERROR) before it went out is still logged cut', async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    const rounds = 12;
    try {
      const seen: string[] = [];
      for (let i = 0; i < rounds; i++) {
        const downloaded = session.request({ ':path': '/download' });
        downloaded.on('error', () => undefined);
        downloaded.resume();
        await new Promise((resolve) => setTimeout(resolve, 20));
        const upload = session.request({ ':method': 'POST', ':path': '/upload', 'content-length': '1000' }, { endStream: false });
        let status: unknown;
        upload.on('response', (head) => (status = head[':status']));
        upload.on('error', () => undefined);
        upload.resume();
        upload.end(Buffer.alloc(1000, 0x62));
        await Promise.all([new Promise((resolve) => upload.once('close', resolve)), new Promise((resolve) => downloaded.once('close', resolve))]);
        seen.push(`${status} ${upload.rstCode}`);
      }
      // Each went out whole: the client got its status and a clean end.
      expect(seen).toEqual(seen.map(() => '202 0'));
    } finally {
      await closeSession(session);
    }
    const logged = await waitFor('every upload logged', () => {
      const found = lines.filter((l) => l.access === true && l.path === '/upload');
      return found.length === rounds ? found : undefined;
    });
    expect(logged.map((l) => `${l.status} ${l.code} ${l.aborted}`)).toEqual(logged.map(() => '202 undefined undefined'));

    // The other way: the answer's last bytes wait on a window the client never opens, and it resets the stream with
    // NO_ERROR: they never went out, and the line says so.
    const client = new RawH2(proxy.ports[0]!, ca, HOST);
    await client.secure;
    const zeroWindow = frame(0x4, 0, 0, Buffer.from([0, 4, 0, 0, 0, 0]));
    client.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), zeroWindow]));
    const block = Buffer.concat([
      Buffer.from([0x83, 0x87]),
      hpackLiteral(':path', '/upload-left'),
      hpackLiteral(':authority', HOST),
      hpackLiteral('content-length', '3'),
    ]);
    client.write(Buffer.concat([headerFrames(1, block, false), data(1, Buffer.from('abc'), true)]));
    await waitFor('the answer head', () => (client.answered.has(1) ? true : undefined));
    await new Promise((resolve) => setTimeout(resolve, 200));
    client.write(rstStream(1, 0));
    const cut = await waitFor('the access line', () => lines.find((l) => l.access === true && l.path === '/upload-left'));
    client.tls.destroy();
    expect(`${cut.status} ${cut.code} ${cut.aborted}`).toBe('200 KEYEDGE_HTTP_CLIENT_CLOSED true');
  }, 30_000);
});

describe('the forwarding fields a client sends under another spelling', () => {
  // Servers that hand fields to applications as CGI variables (PHP-FPM, WSGI, Rack: HTTP_X_FORWARDED_FOR) spell `-`
  // as `_`, so `x_forwarded_for` becomes the same variable as the X-Forwarded-For the edge sets: the one the application
  // reads is the client's, or both joined with the client's first (Puma's CVE-2024-45614; nginx drops such names by
  // default). HTTP/2 and HTTP/1.1 alike.
  const SPOOFED: readonly (readonly [string, string])[] = [
    ['x_forwarded_for', '6.6.6.6'],
    ['x_forwarded_proto', 'http'],
    ['x_forwarded_host', 'evil.test'],
    ['x-forwarded_for', '6.6.6.7'],
    ['x_forwarded-host', 'evil2.test'],
  ];
  const at = (path: string): string =>
    heads
      .find((h) => h.startsWith(`GET ${path} `))!
      .split('\r\n')
      .slice(1)
      .filter((line) => /^x.forwarded|^forwarded/i.test(line))
      .join('\n');

  it('never reach the origin, from an HTTP/2 or an HTTP/1.1 client; a field merely containing an underscore does', async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    try {
      const stream = session.request({ ':path': '/spoofed-h2', ...Object.fromEntries(SPOOFED), x_app_field: 'kept' });
      stream.resume();
      await new Promise((resolve) => stream.once('close', resolve));
    } finally {
      await closeSession(session);
    }
    await new Promise<void>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: proxy.ports[0]!, servername: HOST, ca, ALPNProtocols: ['http/1.1'] }, () =>
        socket.write(
          `GET /spoofed-h1 HTTP/1.1\r\nhost: ${HOST}\r\n${SPOOFED.map(([n, v]) => `${n.toUpperCase()}: ${v}\r\n`).join('')}x_app_field: kept\r\nconnection: close\r\n\r\n`,
        ),
      );
      socket.on('data', () => undefined);
      socket.on('error', reject);
      socket.on('close', () => resolve());
    });
    // node:http2 names the port in :authority; the HTTP/1.1 request above does not in Host.
    const ours = (host: string): string =>
      `x-forwarded-for: 127.0.0.1\nx-forwarded-proto: https\nx-forwarded-host: ${host}\nforwarded: for=127.0.0.1;proto=https;host="${host}"`;
    expect({ h2: at('/spoofed-h2'), h1: at('/spoofed-h1') }).toEqual({ h2: ours(`${HOST}:${proxy.ports[0]}`), h1: ours(HOST) });
    for (const path of ['/spoofed-h2', '/spoofed-h1']) expect(heads.find((h) => h.startsWith(`GET ${path} `))).toMatch(/\r\nx_app_field: kept(\r\n|$)/);
  });
});

/** A full garbage collection, then the heap in use (MB): the worker runs in this process. */
function heapAfterGc(): number {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
  return process.memoryUsage().heapUsed / 1024 / 1024;
}

describe('request bodies sent as many tiny DATA frames', () => {
  // Node keeps each DATA frame's payload as a Buffer object of its own (about a hundred bytes of heap): 64 KiB, the
  // stream window, sent one byte a frame, is 65,000 objects, some 6 MB, where the bounds count 64 KiB. Unread (our
  // answer waiting on a client that grants no window) or read whole before forwarding (body.ts), a few dozen such
  // streams on one connection held hundreds of MB for as long as the client liked (limits.sendTimeoutMs,
  // limits.bodyIdleTimeoutMs): a handful of connections, and the worker's heap was gone.
  const FRAMES = 65_000;

  /** `streams` streams of `path`, each sent FRAMES DATA frames of one byte: how far the heap grew (MB) while the proxy read them all. */
  async function tinyFrames(path: string, streams: number, grantWindow: boolean): Promise<{ grownMb: number; read: boolean }> {
    const before = heapAfterGc();
    const client = new RawH2(proxy.ports[0]!, ca, HOST);
    await client.secure;
    client.preface();
    // SETTINGS_INITIAL_WINDOW_SIZE 0: our answers' bodies never go out, so their streams stay open.
    if (!grantWindow) client.write(frame(0x4, 0, 0, Buffer.from([0, 4, 0, 0, 0, 0])));
    const block = Buffer.concat([Buffer.from([0x83, 0x87]), hpackLiteral(':path', path), hpackLiteral(':authority', HOST)]);
    for (let i = 0; i < streams; i++) {
      const id = 1 + 2 * i;
      client.write(headerFrames(id, block, false));
      const one = data(id, Buffer.from('a'), false);
      client.write(Buffer.concat(Array.from({ length: FRAMES }, () => one)));
    }
    let grownMb = 0;
    // Until the proxy has read every frame (the client's buffers empty: the windows let all of it through) and a
    // second more, or the connection is gone. One byte a frame is slow to read: a loaded machine is given long.
    const deadline = Date.now() + 120_000;
    let drainedAt: number | undefined;
    while (Date.now() < deadline && !client.tls.destroyed) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      grownMb = Math.max(grownMb, heapAfterGc() - before);
      const drained = client.tls.writableLength === 0 && client.tcp.writableLength === 0;
      drainedAt = drained ? (drainedAt ?? Date.now()) : undefined;
      if (drainedAt !== undefined && Date.now() - drainedAt > 1000) break;
    }
    const read = client.tls.destroyed || drainedAt !== undefined;
    client.tls.destroy();
    // What the connection held is let go once it closes: the next case starts from there.
    await waitFor('the connection let go', () => (heapAfterGc() - before < 16 ? true : undefined), 30_000);
    return { grownMb: Math.round(grownMb), read };
  }

  it('never hold the heap for their frames: unread behind our answer, or read whole before forwarding', async () => {
    // 1.5 MB and 0.8 MB of payload: 32 MB is far past what those bytes may cost, far below what their objects did.
    const unread = await tinyFrames('/unread#fragment', 24, false);
    const readWhole = await tinyFrames('/held', 12, true);
    const shown = JSON.stringify({ unread, readWhole });
    expect({ unread: unread.read, readWhole: readWhole.read }, shown).toEqual({ unread: true, readWhole: true });
    expect({ unread: unread.grownMb < 32, readWhole: readWhole.grownMb < 32 }, shown).toEqual({ unread: true, readWhole: true });
  }, 300_000);
});

describe('a request whose client reset it while its body was read', () => {
  // The client's RST_STREAM NO_ERROR ends the stream's readable side as if the body were whole: the read resolved with
  // what had come, and the request, its client gone, still joined the origin's wait queue. With the origin's one place
  // taken, eight such streams filled its queue for limits.originQueueTimeoutMs, and every other request got 503.
  it('never waits for an origin place: the queue stays for requests whose client is there', async () => {
    const held = new Set<net.Socket>();
    const gateSockets = new Set<net.Socket>();
    const gateHeads: string[] = [];
    const gateLines: Record<string, unknown>[] = [];
    const gateOrigin = scriptedOrigin(
      { '/hold': (socket) => void held.add(socket), '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok' },
      { sockets: gateSockets, heads: gateHeads },
    );
    const cert = await lab.certificate('review-gate', lab.keys.ec, [HOST]);
    await new Promise<void>((resolve) => gateOrigin.listen(0, '127.0.0.1', resolve));
    // A second worker in this process: its metrics in a registry of their own. No per-client share (one client here).
    const gated = await startProxyWorker(
      lab.proxyConfig({
        certificates: [{ name: 'review-gate', chain: cert.file }],
        limits: { originMaxConnections: 1, originMaxQueue: 8, originQueueTimeoutMs: 30_000, maxConnectionsPerClient: null },
        domains: [{ name: HOST, origin: `http://127.0.0.1:${(gateOrigin.address() as net.AddressInfo).port}` }],
      }),
      {
        log: createLogger('http2-review-gate-test', 'info', jsonLineSink(gateLines)),
        metrics: new ProxyMetrics(() => proxy.keySource.stats(), new Registry()),
      },
    );
    const session = h2Connect(gated.ports[0]!, ca, HOST);
    let client: RawH2 | undefined;
    try {
      // The origin's one place, held until its socket is destroyed below.
      const holder = session.request({ ':path': '/hold' });
      holder.on('error', () => undefined);
      await waitFor('the held request at the origin', () => (held.size === 1 ? true : undefined));
      // Its preface at once: a client that acknowledges the server's SETTINGS first has sent no preface (RFC 9113 §3.4).
      client = new RawH2(gated.ports[0]!, ca, HOST);
      await client.secure;
      client.preface();
      const block = Buffer.concat([Buffer.from([0x83, 0x87]), hpackLiteral(':path', '/dead'), hpackLiteral(':authority', HOST)]);
      for (let i = 0; i < 8; i++) {
        const id = 2 * i + 1;
        client.write(Buffer.concat([headerFrames(id, block, false), data(id, Buffer.alloc(10, 0x61), false)]));
        await sleep(50);
        client.write(rstStream(id, 0));
        await sleep(20);
      }
      await waitFor('the eight access lines', () => (gateLines.filter((l) => l.access === true && l.path === '/dead').length === 8 ? true : undefined));
      // An honest request now waits for the place (before the fix: 503 at once, the queue full of dead waiters).
      const honest = new Promise<{ status: number | undefined; code: number | string | undefined }>((resolve) => {
        let status: number | undefined;
        const stream = session.request({ ':path': '/ok' });
        stream.on('response', (head) => (status = Number(head[':status'])));
        stream.on('data', () => undefined);
        stream.on('error', () => undefined);
        stream.on('close', () => resolve({ status, code: stream.rstCode }));
      });
      const early = await Promise.race([honest, sleep(500).then(() => 'waiting')]);
      expect(early, 'the honest request waits for the place').toBe('waiting');
      for (const socket of held) socket.destroy();
      expect((await honest).status).toBe(200);
      expect(gateHeads.filter((h) => h.includes('/dead'))).toEqual([]);
      const dead = gateLines.filter((l) => l.access === true && l.path === '/dead');
      expect(dead.map((l) => `${l.status} ${l.code}`)).toEqual(Array.from({ length: 8 }, () => '499 KEYEDGE_HTTP_CLIENT_CLOSED'));
    } finally {
      client?.tls.destroy();
      session.destroy();
      await gated.close();
      await closeScriptedOrigin(gateOrigin, gateSockets);
    }
  }, 30_000);
});
