/**
 * The abuse suite's parts (test/abuse-*.test.ts): a real origin that answers
 * every way origins do (Content-Length or chunked, 1 KiB or 8 MiB, slowly,
 * WebSocket) and cuts its connection at every phase; raw TLS clients that cut
 * theirs at every phase; a normal client that runs alongside and must get 200
 * every time; and what the proxy shows of its health: worker PIDs from its log
 * lines, `keyedge_proxy_uncaught_errors_total` from the admin /metrics.
 * `startAbuseSetup` starts all of it (lab, origin, `keyedge proxy` with two
 * workers); `expectUnharmed` is what every abuse run must leave. The origin
 * also lists the requests still open on it: a proxy that leaks origin
 * connections on clients gone shows there.
 *
 * A cut is one of: `end` (FIN, half-close: the peer may still answer),
 * `destroy` (FIN and close), `reset` (RST, socket.resetAndDestroy()).
 *
 * Origin paths, the first segment is free (a tag the test reads back from the
 * access log); the second names the behaviour, the query its parameters:
 *   /TAG/answer?framing=cl|chunked&size=BYTES&delayMs=N   an answer
 *   /TAG/upload                                           reads the body, answers its size
 *   /TAG/cut?phase=before|upload|head|body&how=CUT&framing=&size=   cuts at that phase
 *   /TAG/ws (Upgrade: websocket)                          101, then echoes; ?cut=CUT cuts after the 101
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { expect } from 'vitest';
import { type OriginProxy, startOriginProxy } from './origin-proxy.js';
import { sleep } from './basics.js';
import { type ClusterProxy, waitFor } from './proxy-cluster.js';

export type Cut = 'end' | 'destroy' | 'reset';
export const CUTS: readonly Cut[] = ['end', 'destroy', 'reset'];
export const KIB = 1024;
export const MIB = 1024 * 1024;

/** One 64 KiB block, written again and again for large bodies. */
const BLOCK = Buffer.alloc(64 * KIB, 'abcdefghijklmnopqrstuvwxyz0123456789\n');

export function cutSocket(socket: net.Socket, how: Cut): void {
  if (socket.destroyed) return;
  if (how === 'end') socket.end();
  else if (how === 'destroy') socket.destroy();
  else socket.resetAndDestroy();
}

/** Writes `size` bytes into `res`, honouring backpressure, and ends it; with `cut`, stops after `cut.at` bytes and cuts the socket instead. */
function answer(res: http.ServerResponse, framing: string, size: number, cut?: { at: number; how: Cut }): void {
  const socket = res.socket!;
  res.writeHead(200, { 'content-type': 'application/octet-stream', ...(framing === 'chunked' ? {} : { 'content-length': size }) });
  const stop = cut === undefined ? size : cut.at;
  let written = 0;
  const more = (): void => {
    while (written < stop) {
      const n = Math.min(BLOCK.length, stop - written);
      written += n;
      if (!res.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n))) {
        res.once('drain', more);
        return;
      }
    }
    // Cut once the bytes are on the wire, not while they wait in the socket's buffer.
    if (cut === undefined) res.end();
    else setTimeout(() => cutSocket(socket, cut.how), 5);
  };
  more();
}

export interface AbuseOrigin {
  readonly port: number;
  readonly url: string;
  /** Requests and upgrades seen. */
  readonly seen: () => number;
  /** The tags of answers whose connection closed before they were sent whole (the proxy gave up on them). */
  readonly abandoned: readonly string[];
  /** The tags of requests still open (neither answered whole nor closed): what a proxy that leaks origin connections leaves. */
  readonly open: () => string[];
  close(): Promise<void>;
}

export async function startAbuseOrigin(): Promise<AbuseOrigin> {
  let seen = 0;
  const abandoned: string[] = [];
  const open = new Map<http.ServerResponse, string>();
  const server = http.createServer((req, res) => {
    seen++;
    res.on('error', () => undefined);
    const url = new URL(req.url ?? '/', 'http://origin');
    const [, tag = '', kind] = url.pathname.split('/');
    open.set(res, tag);
    res.once('close', () => open.delete(res));
    const q = (name: string, fallback: string): string => url.searchParams.get(name) ?? fallback;
    const size = Number(q('size', String(KIB)));
    const framing = q('framing', 'cl');
    const how = q('how', 'destroy') as Cut;
    if (kind === 'answer') {
      const delay = Number(q('delayMs', '0'));
      res.once('close', () => !res.writableFinished && abandoned.push(tag));
      const go = (): void => {
        req.resume();
        answer(res, framing, size);
      };
      if (delay > 0) setTimeout(go, delay);
      else go();
    } else if (kind === 'upload') {
      let bytes = 0;
      const hash = createHash('sha256');
      req.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      req.on('end', () => res.writeHead(200, { 'content-type': 'text/plain', 'x-sha256': hash.digest('hex') }).end(`${bytes}\n`));
    } else if (kind === 'echo') {
      // The request as the origin saw it: version, method, target and headers (the HTTP/2 tests read what the proxy made of a stream).
      req.resume();
      const body = JSON.stringify({ httpVersion: req.httpVersion, method: req.method, url: req.url, headers: req.headers });
      const trailer = url.searchParams.has('trailer');
      res.writeHead(200, { 'content-type': 'application/json', ...(trailer ? { trailer: 'x-checksum' } : {}) });
      if (trailer) res.addTrailers({ 'x-checksum': 'abc123' });
      res.end(body);
    } else if (kind === 'cut') {
      const phase = q('phase', 'before');
      const socket = req.socket;
      if (phase === 'before') {
        // After a pause, so the proxy is waiting for the answer when the connection goes.
        setTimeout(() => cutSocket(socket, how), Number(q('delayMs', '0')));
      } else if (phase === 'upload') {
        // A part of the request body read, then gone.
        req.once('data', () => cutSocket(socket, how));
        req.once('end', () => cutSocket(socket, how));
      } else if (phase === 'head') {
        req.resume();
        socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-len');
        setTimeout(() => cutSocket(socket, how), 5);
      } else {
        req.resume();
        answer(res, framing, size, { at: Math.min(size / 2, 256 * KIB), how });
      }
    } else {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 3 }).end('ok\n');
    }
  });
  // Once per connection: the proxy's pool sends many requests on each.
  server.on('connection', (socket: net.Socket) => socket.on('error', () => undefined));
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    seen++;
    const raw = socket as net.Socket;
    const key = String(req.headers['sec-websocket-key'] ?? '');
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    raw.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
    const cut = new URL(req.url ?? '/', 'http://origin').searchParams.get('cut') as Cut | null;
    if (cut !== null) setTimeout(() => cutSocket(raw, cut), 20);
    // Echo: bytes back unchanged (a client's masked frame is not a valid server frame, but the proxy does not parse frames).
    else raw.pipe(raw);
  });
  // Keep-alive connections from the proxy's pools must not outlive the test.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    seen: () => seen,
    abandoned,
    open: () => [...open.values()],
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A raw TLS connection to the proxy, over a TCP socket the test can reset. Sessions are resumed: each event needs no key-server signature. */
export class RawClient {
  readonly tcp: net.Socket;
  readonly tls: tls.TLSSocket;
  /** Bytes received so far. */
  received = 0;
  /** The text of the first bytes received (up to 4 KiB): the answer head. */
  head = '';
  readonly secure: Promise<void>;
  readonly closed: Promise<void>;

  static #sessions = new Map<string, Buffer>();

  constructor(port: number, ca: string, servername: string) {
    this.tcp = net.connect({ host: '127.0.0.1', port });
    this.tcp.on('error', () => undefined);
    const session = RawClient.#sessions.get(`${port} ${servername}`);
    this.tls = tls.connect({ socket: this.tcp, ca, servername, ...(session === undefined ? {} : { session }) });
    this.tls.on('error', () => undefined);
    this.tls.on('session', (s: Buffer) => RawClient.#sessions.set(`${port} ${servername}`, s));
    this.tls.on('data', (chunk: Buffer) => {
      if (this.head.length < 4096) this.head += chunk.subarray(0, 4096).toString('latin1');
      this.received += chunk.length;
    });
    this.secure = new Promise((resolve) => {
      this.tls.once('secureConnect', () => resolve());
      this.tls.once('close', () => resolve());
    });
    this.closed = new Promise((resolve) => this.tls.once('close', () => resolve()));
  }

  write(data: string | Buffer): void {
    if (!this.tls.destroyed) this.tls.write(data);
  }

  cut(how: Cut): void {
    if (how === 'reset') cutSocket(this.tcp, 'reset');
    else cutSocket(this.tls, how);
  }

  /** Resolves once `count` bytes have arrived (or the connection closed). */
  async receivedAtLeast(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.received < count && !this.tls.destroyed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.tls.off('data', done);
          this.tls.off('close', done);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(done, 100);
        this.tls.on('data', done);
        this.tls.once('close', done);
      });
    }
  }

  /** Waits for the close (an `end` cut leaves the proxy free to answer), then makes sure the connection is gone. */
  async finish(timeoutMs = 5_000): Promise<void> {
    await Promise.race([this.closed, sleep(timeoutMs)]);
    this.tls.destroy();
    this.tcp.destroy();
  }
}

export const wsUpgradeHead = (host: string, path: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;

/**
 * A normal client that runs until stopped: GETs on new connections (resumed
 * sessions) and on one keep-alive connection, each answer checked for 200 and
 * its whole body. `failures` lists every request that did not get exactly that.
 */
export class SteadyClient {
  requests = 0;
  readonly failures: string[] = [];
  #running = true;
  readonly #loops: Promise<void>[];

  constructor(port: number, ca: string, host: string, path: string, expectedBody: string) {
    const once = async (client: RawClient, keepAlive: boolean): Promise<string | undefined> => {
      await client.secure;
      const before = client.received;
      const start = client.head.length;
      client.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${keepAlive ? '' : 'Connection: close\r\n'}\r\n`);
      const whole = `\r\n\r\n${expectedBody}`;
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && !client.tls.destroyed) {
        const text = client.head.slice(start);
        if (text.includes(whole)) return text.startsWith('HTTP/1.1 200 ') ? undefined : text.slice(0, 80);
        await client.receivedAtLeast(client.received + 1, 200);
      }
      const text = client.head.slice(start);
      if (text.includes(whole) && text.startsWith('HTTP/1.1 200 ')) return undefined;
      return `no whole 200 within 10 s (${client.received - before} bytes, closed: ${client.tls.destroyed}): ${JSON.stringify(text.slice(0, 80))}`;
    };
    const fresh = async (): Promise<void> => {
      while (this.#running) {
        const client = new RawClient(port, ca, host);
        const failure = await once(client, false);
        this.requests++;
        if (failure !== undefined) this.failures.push(`new connection: ${failure}`);
        client.tls.destroy();
        await sleep(20);
      }
    };
    const kept = async (): Promise<void> => {
      let client = new RawClient(port, ca, host);
      while (this.#running) {
        // The head buffer keeps 4 KiB: start a new connection before it fills.
        if (client.head.length > 3000 || client.tls.destroyed) {
          client.tls.destroy();
          client = new RawClient(port, ca, host);
        }
        const failure = await once(client, true);
        this.requests++;
        if (failure !== undefined) this.failures.push(`keep-alive: ${failure}`);
        await sleep(20);
      }
      client.tls.destroy();
    };
    this.#loops = [fresh(), kept()];
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
  }
}

/** Runs `events` in batches of `concurrency`; returns how many ran. */
export async function inBatches<T>(events: readonly T[], concurrency: number, run: (event: T, index: number) => Promise<void>): Promise<number> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < events.length) {
      const index = next++;
      await run(events[index]!, index);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  return events.length;
}

/** The PIDs of the workers that logged "proxy worker listening", and of those the primary reported dead. */
export function workerPids(proxy: ClusterProxy): { listening: number[]; died: number[] } {
  const listening = proxy.lines.filter((l) => l.msg === 'proxy worker listening').map((l) => l.pid as number);
  const died = proxy.lines.filter((l) => l.msg === 'proxy worker died; starting a replacement').map((l) => l.pid as number);
  return { listening, died };
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Sums a metric's samples (all label sets) from the admin /metrics; undefined when it is absent. */
export async function metricSum(proxy: ClusterProxy, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum = (sum ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

export type AbuseSetup = OriginProxy<AbuseOrigin>;

/** A keyless lab, an abuse origin, and `keyedge proxy` (two workers, `env` added to theirs) serving `host` from its store and routing it to the origin. */
export async function startAbuseSetup(name: string, host: string, env: Record<string, string> = {}): Promise<AbuseSetup> {
  const setup = await startOriginProxy(name, host, startAbuseOrigin, { env });
  await waitFor('two workers listening', () => (workerPids(setup.proxy).listening.length === 2 ? true : undefined));
  return setup;
}

/** What every abuse run must leave: the same two workers, alive, with nothing uncaught, and a normal client that never missed an answer. */
export async function expectUnharmed(proxy: ClusterProxy, before: readonly number[], steady: SteadyClient): Promise<void> {
  expect(steady.failures).toEqual([]);
  expect(steady.requests).toBeGreaterThan(20);
  const after = workerPids(proxy);
  expect(after.died).toEqual([]);
  expect(after.listening).toEqual(before);
  for (const pid of after.listening) expect(alive(pid), `worker ${pid} alive`).toBe(true);
  // Present (so the zero means something) and zero.
  expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total')).toBe(0);
}
