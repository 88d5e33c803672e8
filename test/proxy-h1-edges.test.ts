import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { closeSession, h2Connect, h2Request } from './helpers/h2.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab, jsonLineSink } from './helpers/proxy-lab.js';
import { startOriginWorker } from './helpers/origin-worker.js';
import { rawTls } from './helpers/raw-tls.js';
import { nextAnswer, splitAll } from './helpers/fuzz-h1-parse.js';
import { sleep } from './helpers/basics.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';
import { fillThenEnd } from './helpers/full-send-queue.js';

// HTTP/1.1 edge cases between a raw client and a raw origin, against an
// in-process worker: origins that send interim (1xx) answers before the final
// one (RFC 9110 §15.2), and an Upgrade pipelined behind requests whose answers
// are still being sent (RFC 9112 §9.3.2: answers go out in request order).
const HOST = 'e.lab.test';
const BIG = 8 * 1024 * 1024;
const SEND_TIMEOUT_MS = 3000;
const ONE_MIB = 1024 * 1024;

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const lines: Record<string, unknown>[] = [];
const sockets = new Set<net.Socket>();
/** The origin connection of the last '/ws-ignored' request. */
let refusing: net.Socket | undefined;
/** The origin connection of the last '/h2c-tail*' request: the test sends its answer's body (full-send-queue.ts). */
let tail: net.Socket | undefined;
/** The request line of each request the origin received. */
const originSaw: string[] = [];
/** The whole head of each request the origin received. */
const originHeads: string[] = [];

/** What the raw origin answers, by path: the bytes, or what to do with the socket. */
const ANSWERS: Record<string, string | ((socket: net.Socket) => void)> = {
  '/early-hints': 'HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello',
  '/processing': 'HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello',
  // A 100 nobody asked for (the proxy never sends Expect on): still an interim answer (RFC 9110 §15.2).
  '/continue': 'HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello',
  '/slow': (socket) => setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nslow-body'), 500),
  '/big': (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${BIG}\r\n\r\n`);
    socket.write(Buffer.alloc(BIG, 'a'));
  },
  '/early-cookies': 'HTTP/1.1 401 Unauthorized\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 4\r\n\r\nnope',
  // RFC 9110 §8.6: a 304 may carry the Content-Length its 200 would have had; a 204 has no content whatever it says.
  '/not-modified': 'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\ncontent-length: 1234\r\n\r\n',
  '/no-content': 'HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n',
  '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
  // More than a client that reads nothing takes into its receive buffer: the rest waits in the proxy's send buffer.
  '/close-1m': `HTTP/1.1 200 OK\r\ncontent-length: ${ONE_MIB}\r\n\r\n${'z'.repeat(ONE_MIB)}`,
  // Whole in a queued answer's own buffer (under Node's 16 KiB mark): ended before the connection is handed to it.
  '/16k': `HTTP/1.1 200 OK\r\ncontent-length: 16000\r\n\r\n${'k'.repeat(16_000)}`,
  // Chunked: relayed to an HTTP/1.0 client without a length, so its connection ends with the answer.
  '/slow-chunked': (socket) => setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'), 500),
  // An origin that ignores the Upgrade and serves a page: relayed as an ordinary answer.
  '/ws-ignored': (socket) => {
    refusing = socket;
    socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${BIG}\r\n\r\n`);
    socket.write(Buffer.alloc(BIG, 'p'));
  },
  '/ws-page': 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello',
  // The body is the test's to send, piece by piece (full-send-queue.ts).
  '/h2c-tail': (socket) => {
    tail = socket;
    socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n');
  },
  '/h2c-tail-stalled': (socket) => {
    tail = socket;
    socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n');
  },
  '/ws-page-cut': (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nabc');
    setTimeout(() => socket.end(), 100);
  },
  '/bytes-chunked': `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${(100_000).toString(16)}\r\n${'c'.repeat(100_000)}\r\n0\r\n\r\n`,
  '/bytes-cut': (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nabc');
    setTimeout(() => socket.end(), 100);
  },
  '/bytes-head': 'HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n',
  '/ws': 'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nFROM-ORIGIN',
};

const rawOrigin = (): net.Server => scriptedOrigin(ANSWERS, { sockets, saw: originSaw, heads: originHeads });

/** Writes `text` on a new TLS connection; resolves with what came back once `done` says so, or when the connection closes. */
/** What `done` is shown of an exchange: its last bytes only, so an 8 MiB answer is not scanned again for each of its chunks. */
const DONE_WINDOW = 64 * 1024;

/** Sends `text` on a new connection; resolves with all it received once `done` (shown the last DONE_WINDOW bytes) is true, or at the close. */
function exchange(text: string, done: (received: string) => boolean): Promise<{ received: string; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: string[] = [];
    let tail = '';
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.ports[0], servername: HOST, ca, ALPNProtocols: ['http/1.1'] });
    const end = (closed: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ received: chunks.join(''), closed });
    };
    const timer = setTimeout(() => end(false), 20_000);
    socket.once('secureConnect', () => socket.write(text));
    socket.on('data', (chunk: Buffer) => {
      const text = chunk.toString('latin1');
      chunks.push(text);
      tail = (tail + text).slice(-DONE_WINDOW);
      if (done(tail)) end(false);
    });
    socket.on('error', () => undefined);
    socket.once('close', () => end(true));
  });
}

const accessLine = (path: string): Promise<Record<string, unknown>> =>
  waitFor(`the access line of ${path}`, () => lines.find((l) => l.access === true && l.path === path));

/** An h2c Upgrade (RFC 7540 §3.2), which the proxy does not ask of the origin: its answer is relayed as an ordinary one. */
const h2cHead = (path: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n`;

/** How long nginx's lingering_timeout, and the proxy's lingering close (upgrade.ts), lasts. */
const LINGER_MS = 5000;

/** When `socket` closed (now, if it has). */
const closedAt = (socket: net.Socket): Promise<number> =>
  new Promise((resolve) => (socket.destroyed ? resolve(Date.now()) : socket.once('close', () => resolve(Date.now()))));

/** A raw client of `port` that sent `head` and reads nothing yet. */
async function pausedClient(port: number, head: string): Promise<tls.TLSSocket> {
  const socket = tls.connect({ host: '127.0.0.1', port, servername: HOST, ca, ALPNProtocols: ['http/1.1'] });
  socket.on('error', () => undefined);
  await new Promise((resolve) => socket.once('secureConnect', resolve));
  socket.pause();
  socket.write(head);
  return socket;
}

const upgradeHead = (host: string): string =>
  `GET /ws HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('e', lab.keys.ec, [HOST]);
  origin = rawOrigin();
  proxy = await startOriginWorker(lab, {
    certificate: { name: 'e', chain: cert.file },
    host: HOST,
    origin,
    limits: { sendTimeoutMs: SEND_TIMEOUT_MS },
    logName: 'h1-edges-test',
    lines,
  });
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

describe('interim answers from the origin', () => {
  it.each([['/early-hints'], ['/processing'], ['/continue']])(
    '%s: the final answer reaches the client whole, on a connection that stays usable',
    async (path) => {
      const twice = `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\nGET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
      const { received, closed } = await exchange(twice, (r) => r.split('hello').length === 3);
      expect(closed).toBe(false);
      // Each answer's head is its final one, 200, and both bodies came whole.
      expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['200', '200']);
      const line = await accessLine(path);
      expect(line).toMatchObject({ status: 200, bytes: 5 });
      expect(line.code).toBeUndefined();
    },
  );
});

describe('interim answers from the origin, to an HTTP/2 client', () => {
  it('an unasked-for 100 (Continue): dropped, the final answer reaches the client whole', async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    try {
      const before = lines.filter((l) => l.access === true && l.path === '/continue' && l.protocol === 'h2').length;
      for (let i = 0; i < 2; i++) {
        const answer = await h2Request(session, { ':path': '/continue' });
        expect(answer.status).toBe(200);
        expect(answer.body.toString()).toBe('hello');
      }
      const mine = await waitFor('the HTTP/2 access lines of /continue', () => {
        const found = lines.filter((l) => l.access === true && l.path === '/continue' && l.protocol === 'h2');
        return found.length === before + 2 ? found.slice(before) : undefined;
      });
      for (const line of mine) expect(line).toMatchObject({ status: 200, bytes: 5 });
      for (const line of mine) expect(line.code).toBeUndefined();
    } finally {
      await closeSession(session);
    }
  });
});

describe('answers without content that carry a Content-Length', () => {
  it.each([
    ['/not-modified', '304'],
    ['/no-content', '204'],
  ])('%s: relayed whole (%s), the connection stays usable for the next answer', async (path, status) => {
    const text = `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\nGET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    const { received, closed } = await exchange(text, (r) => r.endsWith('\r\n\r\nok'));
    expect(closed).toBe(false);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual([status, '200']);
    const line = await accessLine(path);
    expect(line).toMatchObject({ status: Number(status) });
    expect(line.code).toBeUndefined();
    expect(line.aborted).toBeUndefined();
  });
});

describe('answers without content that carry a Content-Length, to an HTTP/2 client', () => {
  it.each([
    ['/not-modified', 304],
    ['/no-content', 204],
  ])('%s: relayed whole (%s), not reset as if cut', async (path, status) => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    try {
      const answer = await h2Request(session, { ':path': path });
      expect(answer.status).toBe(status);
      const line = await waitFor(`the HTTP/2 access line of ${path}`, () => lines.find((l) => l.access === true && l.path === path && l.protocol === 'h2'));
      expect(line).toMatchObject({ status });
      expect(line.code).toBeUndefined();
      expect(line.aborted).toBeUndefined();
    } finally {
      await closeSession(session);
    }
  });
});

describe('the access line of an HTTP/2 answer', () => {
  // `bytes` is what was handed to the client, as HTTP/1.1's: it was the Content-Length the origin declared, so a
  // chunked answer had none, a cut one its whole declared length, and a HEAD the length of a body never sent.
  it('counts the body bytes handed over: a chunked answer, an answer cut by its origin, a HEAD, our own refusal', async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    const got: Record<string, number | string> = {};
    try {
      for (const [method, path] of [
        ['GET', '/bytes-chunked'],
        ['GET', '/bytes-cut'],
        ['HEAD', '/bytes-head'],
        ['GET', '/bytes-refused#'],
      ] as const) {
        got[path] = await h2Request(session, { ':method': method, ':path': path }).then(
          (a) => a.body.length,
          (err: Error) => err.message,
        );
      }
    } finally {
      await closeSession(session);
    }
    expect(got).toMatchObject({ '/bytes-chunked': 100_000, '/bytes-cut': 'Stream closed with error code NGHTTP2_INTERNAL_ERROR', '/bytes-head': 0 });
    // Our 400 (a fragment in :path, own-answers.ts): its short body.
    expect(got['/bytes-refused#']).toBeGreaterThan(0);
    const logged = await waitFor('the four access lines', () => {
      const found = ['/bytes-chunked', '/bytes-cut', '/bytes-head', '/bytes-refused#'].map((p) =>
        lines.find((l) => l.access === true && l.protocol === 'h2' && l.path === p),
      );
      return found.every((l) => l !== undefined) ? Object.fromEntries(found.map((l) => [l!.path, l!.bytes ?? null])) : undefined;
    });
    expect(logged).toEqual({ '/bytes-chunked': 100_000, '/bytes-cut': 3, '/bytes-head': 0, '/bytes-refused#': got['/bytes-refused#'] });
  });
});

describe('an origin that answers before it has read the body', () => {
  it('has its answer relayed with every field it sent (two Set-Cookie stay two), and Connection: close', async () => {
    const head = `POST /early-cookies HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 1000000\r\n\r\n`;
    // More than the body buffer, so the body streams and the origin answers while it is still coming.
    const { received } = await exchange(head + 'x'.repeat(200_000), (r) => r.includes('\r\n\r\nnope'));
    const answerHead = received.slice(0, received.indexOf('\r\n\r\n')).toLowerCase();
    expect(answerHead.startsWith('http/1.1 401 ')).toBe(true);
    expect(answerHead.match(/^set-cookie: .*$/gm)).toEqual(['set-cookie: a=1', 'set-cookie: b=2']);
    expect(answerHead.match(/^connection: .*$/gm)).toEqual(['connection: close']);
  });
});

describe('an Upgrade pipelined behind another request', () => {
  it('waits for the earlier answer: it arrives first and whole, then the 101 and the switched bytes', async () => {
    const { received, closed } = await exchange(`GET /slow HTTP/1.1\r\nHost: ${HOST}\r\n\r\n${upgradeHead(HOST)}`, (r) => r.includes('FROM-ORIGIN'));
    expect(closed).toBe(false);
    expect(received.startsWith('HTTP/1.1 200 ')).toBe(true);
    expect(received.indexOf('slow-body')).toBeLessThan(received.indexOf('HTTP/1.1 101 '));
    expect(received.endsWith('\r\n\r\nFROM-ORIGIN')).toBe(true);
    expect(await accessLine('/slow')).toMatchObject({ status: 200, bytes: 9 });
    expect(await accessLine('/ws')).toMatchObject({ status: 101 });
  });

  it('behind an answer larger than the socket buffers: that answer is not stalled, and the 101 follows it', async () => {
    const { received } = await exchange(`GET /big HTTP/1.1\r\nHost: ${HOST}\r\n\r\n${upgradeHead(HOST)}`, (r) => r.includes('FROM-ORIGIN'));
    const body = received.indexOf('\r\n\r\n') + 4;
    expect(received.indexOf('HTTP/1.1 101 ')).toBe(body + BIG);
    expect(await accessLine('/big')).toMatchObject({ status: 200, bytes: BIG });
  }, 30_000);

  it('refused (421) only after the earlier answer went out whole', async () => {
    const { received, closed } = await exchange(`GET /slow HTTP/1.1\r\nHost: ${HOST}\r\n\r\n${upgradeHead('other.lab.test')}`, () => false);
    expect(closed).toBe(true);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['200', '421']);
    expect(received).toContain('slow-body');
  });
});

describe('an Upgrade the origin answers with an ordinary answer', () => {
  it('is cut, with its origin connection, when the client takes nothing of it for limits.sendTimeoutMs', async () => {
    refusing = undefined;
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.ports[0], servername: HOST, ca, ALPNProtocols: ['http/1.1'] });
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('secureConnect', resolve));
    // Reads nothing: the answer fills the socket buffers, then waits.
    socket.pause();
    socket.write(upgradeHead(HOST).replace('GET /ws ', 'GET /ws-ignored '));
    const origin = await waitFor('the origin connection', () => refusing);
    const started = Date.now();
    const closed = (s: net.Socket): Promise<void> => new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));
    await Promise.race([closed(origin), new Promise((resolve) => setTimeout(resolve, SEND_TIMEOUT_MS + 12_000))]);
    expect(origin.destroyed).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(SEND_TIMEOUT_MS - 500);
    socket.resume();
    await closed(socket);
    // Its access line comes at the cut, saying so: not a whole 200 written when its head went out.
    const line = await accessLine('/ws-ignored');
    expect(line).toMatchObject({ status: 200, code: 'KEYEDGE_HTTP_SEND_TIMEOUT', aborted: true });
    expect(line.durationMs).toBeGreaterThanOrEqual(SEND_TIMEOUT_MS - 500);
  }, 30_000);

  it('whole: logged at its end with its bytes; cut by the origin: logged as the origin cut', async () => {
    const page = await exchange(upgradeHead(HOST).replace('GET /ws ', 'GET /ws-page '), () => false);
    expect(page.received.endsWith('\r\n\r\nhello')).toBe(true);
    const whole = await accessLine('/ws-page');
    expect(whole).toMatchObject({ protocol: 'http/1.1', status: 200, bytes: 5, resumed: false });
    expect([whole.code, whole.aborted]).toEqual([undefined, undefined]);
    const cut = await exchange(upgradeHead(HOST).replace('GET /ws ', 'GET /ws-page-cut '), () => false);
    expect(cut.closed).toBe(true);
    expect(await accessLine('/ws-page-cut')).toMatchObject({ status: 200, bytes: 3, code: 'KEYEDGE_HTTP_ORIGIN_ABORTED', aborted: true });
  });
});

describe('an Upgrade the origin answers with an ordinary answer, the end of which the kernel does not take at once', () => {
  // The lingering close (what the client still sends read and dropped for 5 s, then the connection destroyed) began
  // when the origin's answer was read: what the proxy still held of it, the kernel's buffers to the client being full,
  // was destroyed with the connection under a client still reading, which got the answer cut (and, without a length,
  // could not tell). It begins once the whole answer is with the kernel, as nginx's begins once its answer is sent.
  it('reaches a client reading it slowly whole, its last bytes more than 5 s after the origin ended it', async () => {
    const slowLines: Record<string, unknown>[] = [];
    const slow = await startProxyWorker(
      lab.proxyConfig({
        certificates: [{ name: 'e', chain: (await lab.certificate('e-slow', lab.keys.ec, [HOST])).file }],
        // Over the slow reading below, during which the kernel takes nothing more from the proxy.
        limits: { sendTimeoutMs: 20_000 },
        domains: [{ name: HOST, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      }),
      {
        log: createLogger('h1-edges-slow-test', 'info', jsonLineSink(slowLines)),
        metrics: new ProxyMetrics(() => slow.keySource.stats(), new Registry()),
      },
    );
    try {
      tail = undefined;
      const client = await pausedClient(slow.ports[0]!, h2cHead('/h2c-tail'));
      const filled = await fillThenEnd(await waitFor('the origin connection', () => tail), slow.ports[0]!, client.localPort!);
      // The state under test was reached: a piece of the answer left in the proxy, the kernel's buffers full.
      expect(filled.stuck).toBe(true);
      // The proxy read the origin's end: it closes the origin connection then.
      const ended = await closedAt(tail!);
      const chunks: Buffer[] = [];
      let lastByte = 0;
      const take = (chunk: Buffer): void => {
        chunks.push(chunk);
        lastByte = Date.now();
      };
      // Slowly and steadily, a fortieth of what the kernel holds for it each second: in 6.5 s, less than the third of
      // the proxy's send buffer that the kernel must free before it takes more from the proxy. Then all the rest.
      const perTick = Math.ceil(filled.queued / 400);
      const slowly = setInterval(() => {
        const chunk: Buffer | null = client.readableLength > 0 ? client.read(Math.min(perTick, client.readableLength)) : null;
        if (chunk !== null) take(chunk);
      }, 100);
      const closed = closedAt(client);
      await Promise.race([closed, sleep(ended + 6500 - Date.now())]);
      clearInterval(slowly);
      client.on('data', take);
      client.resume();
      await Promise.race([closed, sleep(15_000)]);
      const received = Buffer.concat(chunks).toString('latin1');
      const body = received.slice(received.indexOf('\r\n\r\n') + 4);
      expect(received.startsWith('HTTP/1.1 200 OK\r\n')).toBe(true);
      expect(body.length).toBe(filled.body);
      expect(lastByte - ended).toBeGreaterThan(LINGER_MS);
      const line = await waitFor('the access line', () => slowLines.find((l) => l.access === true && l.path === '/h2c-tail'));
      expect(line).toMatchObject({ status: 200, bytes: filled.body });
      expect([line.code, line.aborted]).toEqual([undefined, undefined]);
    } finally {
      await slow.close();
    }
  }, 40_000);

  it('is cut, logged as a send timeout, once the client took nothing more of it for limits.sendTimeoutMs', async () => {
    const path = '/h2c-tail-stalled';
    const lineFrom = (from: number): Promise<Record<string, unknown>> =>
      waitFor(`the access line of ${path}`, () => lines.slice(from).find((l) => l.access === true && l.path === path));
    let from = 0;
    let line: Record<string, unknown> | undefined;
    let cutAfter = 0;
    // The state this case needs can be out of reach on a loaded machine (full-send-queue.ts says so rather than wait),
    // or seem reached while the proxy was only starved of CPU (the kernel then takes the rest, and the answer ends
    // whole: a CI run's line said status 200, no code): a fresh connection tries again, once the one given up is
    // logged, so that its line is not taken for this one's.
    for (let attempt = 0; attempt < 3 && line === undefined; attempt++) {
      tail = undefined;
      from = lines.length;
      const client = await pausedClient(proxy.ports[0]!, h2cHead(path));
      const origin = await waitFor('the origin connection', () => tail);
      const filled = await fillThenEnd(origin, proxy.ports[0]!, client.localPort!);
      if (filled.stuck) {
        const ended = await closedAt(origin);
        const logged = await lineFrom(from);
        cutAfter = Date.now() - ended;
        // Not cut, and the kernel took more: the proxy had only been slow to write the rest, which then went whole.
        const slowNotStuck = logged.code !== 'KEYEDGE_HTTP_SEND_TIMEOUT' && filled.grewSince();
        if (!slowNotStuck) line = logged;
        client.destroy();
        continue;
      }
      client.destroy();
      origin.destroy();
      await lineFrom(from);
    }
    expect(line, 'the state reached in 3 tries').toBeDefined();
    // Not a client that left (its close after the lingering, which began before it took the answer's end).
    expect(line).toMatchObject({ status: 200, code: 'KEYEDGE_HTTP_SEND_TIMEOUT', aborted: true });
    expect(cutAfter).toBeGreaterThanOrEqual(SEND_TIMEOUT_MS - 500);
  }, 60_000);
});

describe('CONNECT', () => {
  it.each([['e.lab.test:443'], ['http://e.lab.test/x']])('%s: our 400 after the answer pipelined before it, logged; no origin is asked', async (target) => {
    const text = `GET /slow HTTP/1.1\r\nHost: ${HOST}\r\n\r\nCONNECT ${target} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    const { received, closed } = await exchange(text, () => false);
    expect(closed).toBe(true);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['200', '400']);
    expect(received).toContain('slow-body');
    expect(received).toContain('x-keyedge-error: KEYEDGE_HTTP_BAD_TARGET');
    expect(originSaw.filter((line) => line.startsWith('CONNECT'))).toEqual([]);
    await waitFor('the CONNECT access line', () => lines.find((l) => l.access === true && l.method === 'CONNECT' && l.status === 400));
  });
});

describe('a request the parser refuses, pipelined behind another', () => {
  it.each([
    ['obs-fold', `GET / HTTP/1.1\r\nHost: ${HOST}\r\nX-A: 1\r\n folded\r\n\r\n`, '400'],
    ['a head over the limit', `GET / HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${'b'.repeat(40_000)}\r\n\r\n`, '431'],
  ])('%s: its error follows the earlier answer, whole, then the connection closes', async (_name, bad, status) => {
    const { received, closed } = await exchange(`GET /slow HTTP/1.1\r\nHost: ${HOST}\r\n\r\n${bad}`, () => false);
    expect(closed).toBe(true);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['200', status]);
    expect(received).toContain('\r\n\r\nslow-body');
  });
});

describe('requests pipelined behind one that says Connection: close', () => {
  // RFC 9112 §9.6: nothing after it is processed, and its answer closes the connection. Node's server destroyed the
  // socket as soon as that answer was handed to the kernel: the client's next bytes met a closed socket, whose reset
  // threw away what the kernel had not sent yet (the answer cut, its access line saying it went whole), or made the
  // client's next write fail before it had read the answer at all (seed 124 case 98 of the HTTP/1.1 fuzz).
  it('the answer reaches the client whole while it is still sending; no origin sees what followed', async () => {
    const before = originSaw.length;
    const client = await rawTls(proxy.ports[0]!, HOST, ca, { read: false });
    let reset: string | undefined;
    client.socket.on('error', (err: NodeJS.ErrnoException) => (reset = err.code));
    const next = `GET /after-close HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    client.socket.write(`GET /close-1m HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n${next}`);
    // The whole answer is with the kernel (its 'finish'), most of it unsent: the client reads nothing yet.
    await accessLine('/close-1m');
    client.socket.write(next);
    client.resume();
    await client.closed;
    const received = client.text();
    expect(received.slice(received.indexOf('\r\n\r\n') + 4).length).toBe(ONE_MIB);
    expect(received).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(received.toLowerCase()).toContain('\r\nconnection: close\r\n');
    expect(reset).toBeUndefined();
    expect(originSaw.slice(before)).toEqual(['GET /close-1m HTTP/1.1']);
  });
});

describe('Expect: 100-continue on a request without content, with another pipelined behind it', () => {
  // RFC 9110 §10.1.1: the framing says there is no content to wait for. Left unmet (no 100), Node's server closes the
  // connection after the answer (the client might still send a body); the request behind it had reached its origin
  // by then, and its answer was never sent.
  it.each([
    ['POST with Content-Length: 0', `POST /ok HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n`],
    ['GET without a body', `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\nExpect: 100-continue\r\n\r\n`],
  ])('%s: both are answered, in order, and the connection stays open', async (_name, first) => {
    const before = originSaw.length;
    const text = `${first}POST /slow HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 0\r\n\r\n`;
    const { received, closed } = await exchange(text, (r) => r.includes('slow-body'));
    expect(closed).toBe(false);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]).filter((status) => status !== '100')).toEqual(['200', '200']);
    expect(received).not.toMatch(/connection: close/i);
    expect(received.indexOf('\r\n\r\nok')).toBeLessThan(received.indexOf('slow-body'));
    expect(originSaw.length - before).toBe(2);
  });
});

describe('Expect: 100-continue on a GET that declares a body, with a request pipelined behind it', () => {
  // A GET's body is not forwarded, so no 100 goes (none is asked for by an origin): Node's server closes the
  // connection after the answer, the client may or may not have sent the body. What follows is not processed
  // (RFC 9112 §9.6): before, the request behind it reached its origin and its answer was never sent.
  it('gets its answer, with Connection: close; the request behind it reaches no origin', async () => {
    const before = originSaw.length;
    const text = `GET /slow HTTP/1.1\r\nHost: ${HOST}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabcPOST /ok HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: 0\r\n\r\n`;
    const { received, closed } = await exchange(text, () => false);
    expect(closed).toBe(true);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['200']);
    expect(received).toMatch(/connection: close/i);
    expect(received).toContain('slow-body');
    // The origin had the time to take it: the answer before it took 500 ms.
    expect(originSaw.slice(before)).toEqual(['GET /slow HTTP/1.1']);
  });
});

describe('HTTP/1.0 keep-alive requests pipelined behind an answer of unknown length', () => {
  // HTTP/1.0 has no chunked framing: the answer ends the connection (RFC 9112 §6.3). Before, the request behind it
  // had already been sent to its origin, which acted on it (a POST), and its answer was never sent.
  it('the first is answered and the connection closes; the one behind it reaches no origin', async () => {
    const before = originSaw.length;
    const keepAlive = `Host: ${HOST}\r\nConnection: keep-alive\r\n`;
    const text = `GET /slow-chunked HTTP/1.0\r\n${keepAlive}\r\nPOST /ok HTTP/1.0\r\n${keepAlive}Content-Length: 0\r\n\r\n`;
    const { received, closed } = await exchange(text, () => false);
    expect(closed).toBe(true);
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['200']);
    expect(received).toMatch(/\r\n\r\nhello$/);
    // The origin had the time to take it: the answer before it took 500 ms.
    expect(originSaw.slice(before)).toEqual(['GET /slow-chunked HTTP/1.1']);
  });

  it('with answers of known length, both are answered, in order, on one connection', async () => {
    const before = originSaw.length;
    const keepAlive = `Host: ${HOST}\r\nConnection: keep-alive\r\n`;
    const text = `GET /slow HTTP/1.0\r\n${keepAlive}\r\nGET /ok HTTP/1.0\r\n${keepAlive}\r\n`;
    const { received, closed } = await exchange(text, (r) => r.endsWith('\r\n\r\nok'));
    expect(closed).toBe(false);
    expect(received.indexOf('slow-body')).toBeLessThan(received.indexOf('\r\n\r\nok'));
    expect(originSaw.slice(before)).toEqual(['GET /slow HTTP/1.1', 'GET /ok HTTP/1.1']);
  });
});

describe('a request of more field lines than Node keeps by default (2,000), under limits.maxHeaderBytes', () => {
  // Node dropped the lines past its 2,000th without a word, while its parser still framed the body by a
  // Content-Length among them: the POST reached the origin without it and its body was dumped (server.ts).
  it('is forwarded with every line and its Content-Length', async () => {
    const before = originHeads.length;
    const text = `POST /ok HTTP/1.1\r\nHost: ${HOST}\r\n${'a:\r\n'.repeat(2500)}Content-Length: 5\r\nConnection: close\r\n\r\nhello`;
    const { received } = await exchange(text, () => false);
    expect(received).toMatch(/^HTTP\/1\.1 200 /);
    const head = originHeads.slice(before).join('');
    expect(head).toMatch(/\r\ncontent-length: 5(\r\n|$)/i);
    // The 2,500 empty `a` lines, as one field (RFC 9110 §5.3): 2,499 commas.
    expect(head.match(/\r\na: [, ]*(\r\n|$)/)?.[0].split(',').length).toBe(2500);
  });
});

describe('a Host that is not host[:port]', () => {
  // RFC 9112 §3.2: a Host with an invalid value is answered 400. Routing reads the name before the first ':', so
  // `e.lab.test:1@evil.test` was routed to e.lab.test and reached its origin as Host and X-Forwarded-Host, which an
  // application building links from them reads as evil.test (Host header poisoning).
  // And characters no host name has: under a wildcard domain, `3627734734,a.example` routed on its leftmost label and
  // reached the origin as X-Forwarded-Host, whose first element an application takes for the host (an IP address).
  it.each([[`${HOST}:1@evil.test`], [`${HOST}:x`], [`evil.test@${HOST}`], [`3627734734,${HOST}`], [`evil;${HOST}`], [`*.${HOST}`]])(
    '%s: 400 KEYEDGE_HTTP_BAD_TARGET, never forwarded',
    async (host) => {
      const before = originHeads.length;
      const { received } = await exchange(`GET /host-probe HTTP/1.1\r\nHost: ${host}\r\n\r\n`, (r) => r.includes('\r\n\r\n'));
      expect(received).toMatch(/^HTTP\/1\.1 400 /);
      expect(originHeads.slice(before).join('\n')).not.toContain('evil');
      expect(await accessLine('/host-probe')).toMatchObject({ status: 400, code: 'KEYEDGE_HTTP_BAD_TARGET' });
      lines.length = 0;
    },
  );

  it("an absolute-form target's authority, which replaces Host, is held to the same rule", async () => {
    const before = originHeads.length;
    const text = `GET https://3627734734,${HOST}/host-probe HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    const { received } = await exchange(text, (r) => r.includes('\r\n\r\n'));
    expect(received).toMatch(/^HTTP\/1\.1 400 /);
    expect(originHeads.slice(before)).toEqual([]);
    expect(await accessLine('/host-probe')).toMatchObject({ status: 400, code: 'KEYEDGE_HTTP_BAD_TARGET' });
    lines.length = 0;
  });
});

describe("the worker's graceful stop, with a client reading its pipelined answers slowly", () => {
  // Node's server.close() destroyed each connection whose answer in progress was ended but not yet flushed (it takes a
  // finished answer for a sent one): the answers still queued behind it, to requests their origin had already
  // processed, were lost, though the client would have read them all within the grace period.
  it('gets every answer to what it forwarded, the last with `Connection: close`, then the connection closes', async () => {
    const stopping = await startProxyWorker(
      lab.proxyConfig({
        certificates: [{ name: 'e', chain: (await lab.certificate('e-stop', lab.keys.ec, [HOST])).file }],
        limits: { originMaxQueue: 1000 },
        shutdownGraceMs: 10_000,
        domains: [{ name: HOST, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      }),
      {
        log: createLogger('h1-edges-stop-test', 'warn', jsonLineSink([])),
        metrics: new ProxyMetrics(() => stopping.keySource.stats(), new Registry()),
      },
    );
    const before = originSaw.length;
    // 600 answers of 16 kB: more than the kernel's buffers take from a client that reads nothing.
    const client = await rawTls(stopping.ports[0]!, HOST, ca, { read: false });
    client.socket.write(`GET /16k HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`.repeat(600));
    await sleep(1500);
    const stopped = stopping.close();
    await sleep(300);
    client.resume();
    await Promise.race([client.closed, sleep(8000)]);
    const forwarded = originSaw.length - before;
    const { messages, rest } = splitAll(client.text(), (text) => nextAnswer(text, () => false, false));
    await stopped;
    expect(forwarded).toBeGreaterThan(0);
    expect([messages.length, rest]).toEqual([forwarded, '']);
    expect(messages.every((m) => m.start === 'HTTP/1.1 200 OK' && m.body.length === 16_000)).toBe(true);
    expect(messages.at(-1)?.headers.get('connection')).toEqual(['close']);
    expect(client.socket.destroyed).toBe(true);
  }, 30_000);
});
