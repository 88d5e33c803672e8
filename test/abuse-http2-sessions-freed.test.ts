import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { data, frame, getHeaders, h2Connect, h2Request, RawH2, rstStream } from './helpers/h2.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { jsonLineSink, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// HTTP/2 connections a client opens and drops (gone mid-answer, gone before
// any stream, closed gracefully): once they are closed, the worker must hold
// none of their sessions.
// Node 20 to 24 leave a closed session's timeout timer armed, and it held
// each session, its TLS socket and its streams for limits.http2IdleTimeoutMs
// (75 s): at a few thousand connections a second, hundreds of megabytes.
// Counted directly: each of the worker's sessions is watched with a WeakRef,
// and those still reachable after a full GC are counted.
// And connections the worker must close itself (a second worker with short
// limits): one nghttp2 ended, one idle after a slow stream, one whose client
// never reads what the worker still has to send; and (the first worker, its
// default limits) one whose client sent frames without the preface and left.
const PER_WAY = 60;
/** How long /slow keeps its stream waiting: three times the short worker's idle timeout, nothing sent meanwhile. */
const SLOW_ORIGIN_MS = 3_000;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Every session the worker's HTTP/2 server makes, weakly: its http2.createServer is watched before the worker makes it. */
const sessions: WeakRef<http2.ServerHttp2Session>[] = [];
const createServer = http2.createServer;
(http2 as { createServer: unknown }).createServer = (...args: Parameters<typeof http2.createServer>) => {
  const server = createServer(...args);
  server.on('session', (session: http2.ServerHttp2Session) => sessions.push(new WeakRef(session)));
  return server;
};

let lab: KeylessLab;
let proxy: RunningWorker;
/** The worker's configuration, for a routing change made by hand (`proxy.apply`). */
let config: ReturnType<KeylessLab['proxyConfig']>;
let originUrl: string;
let origin: http.Server;
let ca: string;
/** Every path the origin was asked for. */
const originSaw: string[] = [];

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  // 1 MiB answers: the client is still being sent one when it goes. /slow: a short answer after SLOW_ORIGIN_MS.
  origin = http.createServer((req, res) => {
    originSaw.push(req.url ?? '');
    if (req.url === '/slow') return void setTimeout(() => res.writeHead(200, { 'content-length': 3 }).end('ok\n'), SLOW_ORIGIN_MS);
    res.writeHead(200, { 'content-length': 1 << 20 }).end(Buffer.alloc(1 << 20));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  originUrl = `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`;
  config = lab.proxyConfig({
    certificates: [{ name: 'ec', chain: ec.file }],
    domains: [{ name: '*.lab.test', origin: originUrl }],
    limits: { maxConnectionsPerClient: null },
  });
  proxy = await startProxyWorker(config, { log: createLogger('h2-sessions-freed', 'silent') });
}, 60_000);

afterAll(async () => {
  (http2 as { createServer: unknown }).createServer = createServer;
  await proxy?.close();
  await new Promise((resolve) => (origin === undefined ? resolve(undefined) : origin.close(resolve)));
  await lab?.close();
});

/** The client goes (its socket destroyed) once the first bytes of its answer arrive. */
async function goneMidAnswer(): Promise<void> {
  const session = h2Connect(proxy.ports[0]!, ca, 'a.lab.test');
  const stream = session.request({ ':path': '/big', ':authority': 'a.lab.test' });
  stream.on('error', () => undefined);
  await new Promise<void>((resolve) => {
    stream.once('data', () => resolve());
    stream.once('close', () => resolve());
  });
  session.destroy();
}

/** The client sends its preface and goes before any stream (the session's header deadline was running). */
async function goneBeforeAnyStream(): Promise<void> {
  const raw = new RawH2(proxy.ports[0]!, ca, 'a.lab.test');
  await raw.secure;
  raw.preface();
  await sleep(20);
  raw.tls.destroy();
  await raw.closed;
}

/** A whole exchange, then GOAWAY from the client (RFC 9113 §6.8). */
async function graceful(): Promise<void> {
  const session = h2Connect(proxy.ports[0]!, ca, 'a.lab.test');
  await h2Request(session, { ':path': '/', ':method': 'HEAD', ':authority': 'a.lab.test' }).catch(() => undefined);
  await new Promise<void>((resolve) => {
    session.once('close', () => resolve());
    session.close();
  });
}

async function reachable(): Promise<number> {
  for (let i = 0; i < 5; i++) {
    gc();
    await sleep(50);
  }
  return sessions.filter((ref) => ref.deref() !== undefined).length;
}

it(`${3 * PER_WAY} HTTP/2 connections opened and dropped: the worker holds none of their sessions once they close`, async () => {
  for (const way of [goneMidAnswer, goneBeforeAnyStream, graceful]) {
    for (let i = 0; i < PER_WAY; i += 6) await Promise.all(Array.from({ length: 6 }, () => way()));
  }
  expect(sessions.length).toBe(3 * PER_WAY);
  await waitFor('every connection closed', () => proxy.listeners[0]!.connections === 0 || undefined, 20_000);
  // A few may still be on their way out (a linger, a timer of the socket's); before the fix every one was held, for 75 s.
  expect(await reachable()).toBeLessThan(PER_WAY / 4);
}, 60_000);

/** What a short worker logged (its access lines among them) and counted. */
interface ShortWorkerSeen {
  readonly lines: Record<string, unknown>[];
  readonly registry: Registry;
}

/** A second worker in this process, with `limits` (its metrics in a registry of their own, its lines collected), for `use`; closed after. */
async function withShortWorker(
  label: string,
  limits: Record<string, number>,
  use: (short: RunningWorker, seen: ShortWorkerSeen) => Promise<void>,
): Promise<void> {
  const ec = await lab.certificate(label, lab.keys.ec, ['lab.test', '*.lab.test']);
  const seen: ShortWorkerSeen = { lines: [], registry: new Registry() };
  const short = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [{ name: '*.lab.test', origin: originUrl }],
      limits: { maxConnectionsPerClient: null, ...limits },
    }),
    { log: createLogger('h2-sessions-freed', 'info', jsonLineSink(seen.lines)), metrics: new ProxyMetrics(() => proxy.keySource.stats(), seen.registry) },
  );
  try {
    await use(short, seen);
  } finally {
    await short.close();
  }
}

it('a connection nghttp2 ended with GOAWAY (a connection error) while a stream was open is closed once nothing moves on it for the idle timeout', async () => {
  await withShortWorker('ec-idle', { http2IdleTimeoutMs: 1000 }, async (short) => {
    const clients = await Promise.all(
      Array.from({ length: 3 }, async () => {
        const raw = new RawH2(short.ports[0]!, ca, 'a.lab.test');
        await raw.secure;
        raw.preface();
        // A stream, then DATA on stream 0: a connection error (RFC 9113 §6.1); nghttp2 answers GOAWAY PROTOCOL_ERROR.
        raw.write(getHeaders(1, 'a.lab.test', '/'));
        raw.write(data(0, Buffer.from('x'), false));
        await waitFor('GOAWAY', () => raw.goaways[0]);
        return raw;
      }),
    );
    for (const raw of clients) raw.tls.destroy();
    // Node no longer reads these sockets, so the clients' close is never seen: before the fix they stayed open for ever.
    await waitFor('the abandoned connections closed', () => short.listeners[0]!.connections === 0 || undefined, 15_000);
  });
}, 30_000);

it('a connection whose stream waited on a slow origin past the idle timeout still gets its GOAWAY once idle', async () => {
  // Node's setTimeout callback is a once('timeout') listener: spent on the quiet spell while /slow waited, it left
  // the connection without an idle deadline for ever after.
  await withShortWorker('ec-slow', { http2IdleTimeoutMs: 1000 }, async (short) => {
    const session = h2Connect(short.ports[0]!, ca, 'a.lab.test');
    const goaway = new Promise<number>((resolve) => session.once('goaway', resolve));
    try {
      expect((await h2Request(session, { ':path': '/slow', ':authority': 'a.lab.test' })).status).toBe(200);
      const answered = Date.now();
      const code = await Promise.race([goaway, sleep(10_000).then(() => 'none')]);
      expect(code, 'GOAWAY within 10 s of the last answer').toBe(http2.constants.NGHTTP2_NO_ERROR);
      expect(Date.now() - answered).toBeGreaterThan(500);
    } finally {
      session.destroy();
    }
  });
}, 30_000);

it('a connection whose stream the client reset, unanswered, after the idle timeout passed still gets its GOAWAY once idle', async () => {
  // The idle deadline fired while the stream was open (nothing to do), and Node re-arms its timer only on a stream's
  // read or write: a stream the client reset before any answer ended with neither, and left the connection without an
  // idle deadline for ever (PINGs, RST_STREAM and SETTINGS do not re-arm it), held until the client closed it.
  await withShortWorker('ec-reset-idle', { http2IdleTimeoutMs: 1000 }, async (short) => {
    const session = h2Connect(short.ports[0]!, ca, 'a.lab.test');
    const goaway = new Promise<number>((resolve) => session.once('goaway', resolve));
    try {
      // /slow answers after SLOW_ORIGIN_MS: the client resets its stream before, with nothing sent on it.
      const stream = session.request({ ':path': '/slow', ':authority': 'a.lab.test' });
      stream.on('error', () => undefined);
      await sleep(SLOW_ORIGIN_MS - 1_000);
      stream.close(http2.constants.NGHTTP2_CANCEL);
      const reset = Date.now();
      const code = await Promise.race([goaway, sleep(10_000).then(() => 'none')]);
      expect(code, 'GOAWAY within 10 s of the reset').toBe(http2.constants.NGHTTP2_NO_ERROR);
      expect(Date.now() - reset).toBeGreaterThan(500);
    } finally {
      session.destroy();
    }
  });
}, 30_000);

/** The h2 requests counted with `statusClass` and `code`. */
async function h2Counted(registry: Registry, statusClass: string, code: string): Promise<number> {
  const values = (await registry.getSingleMetric('keyedge_proxy_http_requests_total')?.get())?.values ?? [];
  return values.find((v) => v.labels.protocol === 'h2' && v.labels.status_class === statusClass && v.labels.code === code)?.value ?? 0;
}

// Node 20 destroys a stream nghttp2 closed with NO_ERROR only once its writes are called back, and writes nghttp2 still
// held for it when the client's RST_STREAM NO_ERROR closed it are never called back: such a stream stayed closed and
// undestroyed for the connection's life, with no access line, no count, one of its concurrent streams taken, and the
// connection never idle (no GOAWAY: held until the client closed it).
it('streams the client resets with RST_STREAM NO_ERROR in the write that opened them, our 421 still queued, are logged and counted, and the connection still gets its idle GOAWAY', async () => {
  await withShortWorker('ec-own-reset', { http2IdleTimeoutMs: 1000, http2MaxResetStreams: 10 }, async (short, { lines, registry }) => {
    const raw = new RawH2(short.ports[0]!, ca, 'a.lab.test');
    await raw.secure;
    raw.preface();
    // A name the certificate does not cover (421), each HEADERS followed by its RST_STREAM NO_ERROR in one write.
    const ids = [1, 3, 5];
    raw.write(Buffer.concat(ids.flatMap((id) => [getHeaders(id, 'other.example', `/own-reset-${id}`), rstStream(id, 0)])));
    const sent = Date.now();
    await Promise.race([raw.closed, sleep(10_000)]);
    const closedAfter = Date.now() - sent;
    raw.tls.destroy();
    expect(raw.goaways, 'the idle GOAWAY').toEqual([http2.constants.NGHTTP2_NO_ERROR]);
    expect(closedAfter, 'closed within 10 s').toBeLessThan(10_000);
    // nghttp2 dropped our answer unsent: the line says what the client got, its leaving before any answer.
    const logged = lines.filter((l) => l.access === true && String(l.path).startsWith('/own-reset-'));
    expect(logged.map((l) => `${l.path} ${l.status} ${l.code} ${l.aborted} ${l.bytes}`).sort()).toEqual(
      ids.map((id) => `/own-reset-${id} 499 KEYEDGE_HTTP_CLIENT_CLOSED true 0`),
    );
    expect(await h2Counted(registry, '4xx', 'KEYEDGE_HTTP_CLIENT_CLOSED')).toBe(ids.length);

    // And as resets under an answer, they count against the connection: past limits.http2MaxResetStreams, GOAWAY
    // ENHANCE_YOUR_CALM (before the fix: none, and at 128 of them Node ended the connection with INTERNAL_ERROR).
    const flood = new RawH2(short.ports[0]!, ca, 'a.lab.test');
    await flood.secure;
    flood.preface();
    flood.write(Buffer.concat(Array.from({ length: 20 }, (_, i) => [getHeaders(2 * i + 1, 'other.example', '/flood'), rstStream(2 * i + 1, 0)]).flat()));
    await Promise.race([flood.closed, sleep(10_000)]);
    flood.tls.destroy();
    expect(flood.goaways[0], 'GOAWAY ENHANCE_YOUR_CALM').toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
  });
}, 40_000);

it('a forwarded GET whose answer waits on the client window, reset by the client with RST_STREAM NO_ERROR after its head, is logged cut and leaves the connection to its idle GOAWAY', async () => {
  await withShortWorker('ec-fwd-reset', { http2IdleTimeoutMs: 1000 }, async (short, { lines }) => {
    // A window of 100 bytes: the 1 MiB answer's body waits in the worker when the client resets the stream.
    const session = h2Connect(short.ports[0]!, ca, 'a.lab.test', { settings: { initialWindowSize: 100 } });
    const goaway = new Promise<number>((resolve) => session.once('goaway', resolve));
    try {
      const stream = session.request({ ':path': '/fwd-reset', ':authority': 'a.lab.test' });
      stream.on('error', () => undefined);
      const head = await new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once('response', resolve));
      expect(head[':status']).toBe(200);
      await sleep(100);
      stream.close(http2.constants.NGHTTP2_NO_ERROR);
      const code = await Promise.race([goaway, sleep(10_000).then(() => 'none')]);
      expect(code, 'the idle GOAWAY within 10 s of the reset').toBe(http2.constants.NGHTTP2_NO_ERROR);
    } finally {
      session.destroy();
    }
    const logged = lines.filter((l) => l.access === true && l.path === '/fwd-reset');
    expect(logged.map((l) => `${l.status} ${l.code} ${l.aborted}`)).toEqual(['200 KEYEDGE_HTTP_CLIENT_CLOSED true']);
  });
}, 30_000);

it('an upload refused 413 mid-body, its rest left unread behind our RST_STREAM NO_ERROR, is logged and leaves the connection to its idle GOAWAY', async () => {
  // Node 20 destroys such a stream only once its unread body is read to its end, which nothing does (body.ts paused
  // it): no access line, and the connection never idle.
  await withShortWorker('ec-413-unread', { http2IdleTimeoutMs: 1000, maxBodyBytes: 200 * 1024 }, async (short, { lines }) => {
    const session = h2Connect(short.ports[0]!, ca, 'a.lab.test');
    const goaway = new Promise<number>((resolve) => session.once('goaway', resolve));
    try {
      // No Content-Length: refused only once 200 KiB have streamed (to /slow, which answers nothing for 3 s).
      const stream = session.request({ ':method': 'POST', ':path': '/slow', ':authority': 'a.lab.test' }, { endStream: false });
      stream.on('error', () => undefined);
      const status = new Promise<unknown>((resolve) => stream.once('response', (head) => resolve(head[':status'])));
      stream.resume();
      const chunk = Buffer.alloc(16 * 1024, 0x61);
      for (let i = 0; i < 64 && !stream.closed; i++) {
        stream.write(chunk);
        await sleep(2);
      }
      expect(await status).toBe(413);
      const code = await Promise.race([goaway, sleep(10_000).then(() => 'none')]);
      expect(code, 'the idle GOAWAY within 10 s').toBe(http2.constants.NGHTTP2_NO_ERROR);
    } finally {
      session.destroy();
    }
    const logged = lines.filter((l) => l.access === true && l.path === '/slow');
    expect(logged.map((l) => `${l.status} ${l.code}`)).toEqual(['413 KEYEDGE_HTTP_BODY_TOO_LARGE']);
  });
}, 30_000);

it('a client that floods PINGs and never reads their acknowledgements has its connection closed, not held open for ever', async () => {
  // Node destroys such a session (its idle deadline passed with nothing moving) but closes the socket only once the
  // write in flight completes, which a client that never reads never lets happen: no stream, no timer was left.
  await withShortWorker('ec-unread', { headerTimeoutMs: 1000, sendTimeoutMs: 1000 }, async (short) => {
    const raw = new RawH2(short.ports[0]!, ca, 'a.lab.test');
    try {
      await raw.secure;
      raw.preface();
      raw.tls.pause();
      // Until the proxy stops reading (its acknowledgements fill the buffers between it and this client), at most 1M.
      const ping = frame(0x6, 0, 0, Buffer.alloc(8));
      const batch = Buffer.concat(Array.from({ length: 1000 }, () => ping));
      for (let sent = 0; sent < 1_000_000; sent += 1000) {
        if (raw.write(batch)) continue;
        const drained = await Promise.race([new Promise((resolve) => raw.tls.once('drain', () => resolve(true))), sleep(1_000).then(() => false)]);
        if (!drained) break;
      }
      await waitFor('the unread connection closed', () => short.listeners[0]!.connections === 0 || undefined, 20_000);
    } finally {
      raw.tls.destroy();
    }
  });
}, 60_000);

it('a connection whose client sent frames without the preface and left is closed within seconds, not after limits.sendTimeoutMs', async () => {
  // nghttp2 ends the session (a connection error, RFC 9113 §3.4) and Node destroys it, stops reading the socket and
  // waits for its last write, which the TLS layer held until a read that never came: the client's close went unseen
  // and each such connection stayed open for the send timeout (60 s here), on Node 20 and 22.
  await Promise.all(
    Array.from({ length: 3 }, async () => {
      const raw = new RawH2(proxy.ports[0]!, ca, 'a.lab.test', { ackSettings: false });
      await raw.secure;
      raw.write(Buffer.concat([frame(0x4, 0, 0, Buffer.alloc(0)), frame(0x4, 0x1, 0, Buffer.alloc(0)), getHeaders(1, 'a.lab.test', '/')]));
      raw.tls.destroy();
      await raw.closed;
    }),
  );
  await waitFor('the abandoned connections closed', () => proxy.listeners[0]!.connections === 0 || undefined, 10_000);
}, 30_000);

it('a connection whose handshake completes after shutdown began gets GOAWAY at once: its streams are refused, never sent to the origin', async () => {
  // The listener stops accepting but lets handshakes under way finish; such a connection was served as usual, its
  // requests forwarded, until the grace period cut it.
  await withShortWorker('ec-late', {}, async (short) => {
    const tcp = net.connect({ host: '127.0.0.1', port: short.ports[0]! });
    await new Promise((resolve) => tcp.once('connect', resolve));
    await waitFor('the connection accepted', () => short.listeners[0]!.connections > 0 || undefined);
    const closing = short.close();
    const socket = tls.connect({ socket: tcp, ca, servername: 'a.lab.test', ALPNProtocols: ['h2'] });
    const session = http2.connect('https://a.lab.test', { createConnection: () => socket });
    session.on('error', () => undefined);
    const goaway = new Promise<number>((resolve) => session.once('goaway', resolve));
    const stream = session.request({ ':path': '/late-handshake', ':authority': 'a.lab.test' });
    stream.on('error', () => undefined);
    const status = await new Promise<number | undefined>((resolve) => {
      stream.once('response', (headers) => resolve(Number(headers[':status'])));
      stream.once('close', () => resolve(undefined));
    });
    session.destroy();
    expect(status, 'the request was answered').toBeUndefined();
    expect(await Promise.race([goaway, sleep(1000).then(() => 'none')])).toBe(http2.constants.NGHTTP2_NO_ERROR);
    expect(originSaw).not.toContain('/late-handshake');
    await closing;
  });
}, 30_000);

it("an idle connection does not keep a replaced configuration's domain index reachable until its next stream", async () => {
  const session = h2Connect(proxy.ports[0]!, ca, 'a.lab.test');
  expect((await h2Request(session, { ':path': '/', ':method': 'HEAD', ':authority': 'a.lab.test' })).status).toBe(200);
  // The index the connection's route memo was made under, then a reload's new one (the same routes, new objects).
  const replaced = new WeakRef(proxy.state.domains);
  const { generation } = proxy.state;
  proxy.apply({ generation: generation + 1, routing: { domains: config.domains.map((d) => ({ ...d })), sni: config.sni }, upsert: [], remove: [] });
  expect(proxy.state.domains).not.toBe(replaced.deref());
  for (let i = 0; i < 5; i++) {
    gc();
    await sleep(50);
  }
  expect(replaced.deref(), 'the old index still reachable').toBeUndefined();
  // The memo misses under the new index: the next stream is routed by it.
  expect((await h2Request(session, { ':path': '/', ':method': 'HEAD', ':authority': 'a.lab.test' })).status).toBe(200);
  await new Promise<void>((resolve) => session.close(resolve));
});
