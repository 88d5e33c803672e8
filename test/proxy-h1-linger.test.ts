import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab, jsonLineSink } from './helpers/proxy-lab.js';
import { rawTls, type RawTls } from './helpers/raw-tls.js';
import { sleep } from './helpers/basics.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// The lingering close of an HTTP/1.1 connection whose last answer closes it while the client is still sending
// (RFC 9112 §9.6, linger.ts): after a request that said `close` with bytes pipelined behind it, and after an answer
// of ours that closes a connection whose client did not ask for it (a reload's or the stop's). The connection is
// half-closed, what arrives is read and dropped, and it is destroyed when the client closes or after LINGER_MS (5 s).
const HOST = 'l.lab.test';
const ONE_MIB = 1024 * 1024;
const LINGER_MS = 5_000;

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const lines: Record<string, unknown>[] = [];
const sockets = new Set<net.Socket>();
/** The request line of each request the origin received. */
const originSaw: string[] = [];

const bigAnswer = `HTTP/1.1 200 OK\r\ncontent-length: ${ONE_MIB}\r\n\r\n${'z'.repeat(ONE_MIB)}`;

/** What the raw origin answers, by path: the bytes, or what to do with the socket. */
const ANSWERS: Record<string, string | ((socket: net.Socket) => void)> = {
  // More than a client that reads nothing takes into its receive buffer: the rest waits in the proxy's send buffer.
  '/close-1m': bigAnswer,
  '/slow-1m': (socket) => setTimeout(() => socket.write(bigAnswer), 700),
  // Its origin breaks off after the head and part of the body.
  '/cut': (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${ONE_MIB}\r\n\r\n${'c'.repeat(1000)}`);
    setTimeout(() => socket.destroy(), 100);
  },
  '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
};

const rawOrigin = (): net.Server => scriptedOrigin(ANSWERS, { sockets, saw: originSaw });

/** Resolves once `path` has an access line more than it has now (call before the request). */
function nextAccessLine(path: string): () => Promise<unknown> {
  const count = (): number => lines.filter((l) => l.access === true && l.path === path).length;
  const seen = count();
  return () => waitFor(`another access line of ${path}`, () => (count() > seen ? true : undefined));
}

/** A worker of its own, for a test that stops it. */
async function ownWorker(name: string): Promise<RunningWorker> {
  const worker: RunningWorker = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'l', chain: (await lab.certificate(name, lab.keys.ec, [HOST])).file }],
      shutdownGraceMs: 10_000,
      domains: [{ name: HOST, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
    }),
    { log: createLogger(`${name}-test`, 'info', jsonLineSink(lines)), metrics: new ProxyMetrics(() => worker.keySource.stats(), new Registry()) },
  );
  return worker;
}

/** What came after the head of the first answer in `received`. */
const bodyOf = (received: string): string => received.slice(received.indexOf('\r\n\r\n') + 4);

/** Records the client's socket error, if any (a reset: its unread answer is gone). */
function resetOf(client: RawTls): () => string | undefined {
  let reset: string | undefined;
  client.socket.on('error', (err: NodeJS.ErrnoException) => (reset = err.code));
  return () => reset;
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  origin = rawOrigin();
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  proxy = await ownWorker('l');
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

describe('bytes pipelined behind a request that says Connection: close', () => {
  it('a client that sends without end: the answer reaches it whole, and the connection is closed after LINGER_MS', async () => {
    const before = originSaw.length;
    const answered = nextAccessLine('/close-1m');
    // Half-open allowed: it does not close its side when the proxy ends its own; only the linger's bound closes it.
    const options = { host: '127.0.0.1', port: proxy.ports[0], servername: HOST, ca, allowHalfOpen: true };
    const socket = tls.connect(options);
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('secureConnect', resolve));
    let received = '';
    let ended = false;
    socket.on('data', (chunk: Buffer) => void (received += chunk.toString('latin1')));
    socket.once('end', () => (ended = true));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(`GET /close-1m HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\nGET /ok HTTP/1.1\r\n`);
    await answered();
    const lingering = Date.now();
    // 64 KiB at a time, as fast as the proxy takes them, until it closes: read and dropped, never buffered.
    let sent = 0;
    const chunk = Buffer.alloc(64 * 1024, 'x');
    const send = (): void => {
      while (!socket.destroyed) {
        sent += chunk.length;
        if (!socket.write(chunk)) return;
      }
    };
    socket.on('drain', send);
    send();
    await Promise.race([closed, sleep(LINGER_MS + 10_000)]);
    const lingered = Date.now() - lingering;
    expect(socket.destroyed).toBe(true);
    expect(ended).toBe(true);
    expect(lingered).toBeGreaterThan(LINGER_MS - 1500);
    expect(lingered).toBeLessThan(LINGER_MS + 8000);
    expect(sent).toBeGreaterThan(ONE_MIB);
    expect(bodyOf(received).length).toBe(ONE_MIB);
    expect(originSaw.slice(before)).toEqual(['GET /close-1m HTTP/1.1']);
  }, 30_000);

  it('a client that ends its side (TLS close_notify) once it has the answer: the connection closes then, without waiting LINGER_MS', async () => {
    const options = { host: '127.0.0.1', port: proxy.ports[0], servername: HOST, ca, allowHalfOpen: true };
    const socket = tls.connect(options);
    let reset: string | undefined;
    socket.on('error', (err: NodeJS.ErrnoException) => (reset = err.code));
    await new Promise((resolve) => socket.once('secureConnect', resolve));
    let received = '';
    socket.on('data', (chunk: Buffer) => void (received += chunk.toString('latin1')));
    const ended = new Promise((resolve) => socket.once('end', resolve));
    const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())));
    socket.write(`GET /close-1m HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\nGET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await ended;
    await sleep(300);
    const endedAt = Date.now();
    socket.end();
    const closedAt = await Promise.race([closed, sleep(LINGER_MS + 5000).then(() => Number.POSITIVE_INFINITY)]);
    expect(closedAt - endedAt).toBeLessThan(2000);
    expect(bodyOf(received).length).toBe(ONE_MIB);
    expect(reset).toBeUndefined();
  }, 20_000);

  it('an answer its origin cuts after the head: the connection closes at once, it does not linger', async () => {
    const client = await rawTls(proxy.ports[0]!, HOST, ca);
    resetOf(client);
    client.socket.write(`GET /cut HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\nGET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    const closedAfter = await Promise.race([client.closed, sleep(LINGER_MS + 5000).then(() => Number.POSITIVE_INFINITY)]);
    expect(closedAfter).toBeLessThan(LINGER_MS - 1000);
    expect(client.text()).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(bodyOf(client.text()).length).toBeLessThan(ONE_MIB);
  }, 20_000);

  it.each([
    ['HTTP/1.0 without keep-alive', `GET /close-1m HTTP/1.0\r\nHost: ${HOST}\r\n\r\n`, '/close-1m', ONE_MIB],
    ['HEAD with Connection: close', `HEAD /close-1m HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`, '/close-1m', 0],
  ])(
    '%s: its answer reaches a client that sends on while not reading yet, then the connection closes',
    async (_name, request, path, length) => {
      const answered = nextAccessLine(path);
      const client = await rawTls(proxy.ports[0]!, HOST, ca, { read: false });
      const reset = resetOf(client);
      const next = `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
      client.socket.write(request + next);
      await answered();
      client.socket.write(next);
      client.resume();
      await Promise.race([client.closed, sleep(LINGER_MS + 5000)]);
      expect(client.socket.destroyed).toBe(true);
      expect(client.text()).toMatch(/^HTTP\/1\.[01] 200 OK\r\n/);
      expect(bodyOf(client.text()).length).toBe(length);
      expect(reset()).toBeUndefined();
    },
    20_000,
  );

  it('a client that never reads: the connection is gone within LINGER_MS of the answer', async () => {
    const worker = await ownWorker('l-unread');
    try {
      const sent = nextAccessLine('/close-1m');
      const client = await rawTls(worker.ports[0]!, HOST, ca, { read: false });
      resetOf(client);
      client.socket.write(`GET /close-1m HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\nGET /ok HTTP/1.1\r\n`);
      await waitFor('a connection', () => (worker.listeners[0]!.connections === 1 ? true : undefined));
      await sent();
      const answered = Date.now();
      await waitFor('no connection', () => (worker.listeners[0]!.connections === 0 ? true : undefined), LINGER_MS + 8000);
      expect(Date.now() - answered).toBeLessThan(LINGER_MS + 8000);
      client.socket.destroy();
    } finally {
      await worker.close();
    }
  }, 30_000);
});

describe('an answer of ours that closes the connection, with requests pipelined behind it', () => {
  // The worker's stop (as a reload retiring a connection, retire.ts `closeAfter`) gives the answer in progress
  // `Connection: close`. Node destroyed the socket as soon as that answer was with the kernel: the client's next bytes
  // met a closed socket, and its reset threw away the part of the answer the client had not read yet.
  it("the stop's: the answer reaches a client that sends on while not reading yet, whole, and no reset", async () => {
    const worker = await ownWorker('l-stop');
    const before = originSaw.length;
    const answered = nextAccessLine('/slow-1m');
    const client = await rawTls(worker.ports[0]!, HOST, ca, { read: false });
    const reset = resetOf(client);
    const next = `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    client.socket.write(`GET /slow-1m HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await waitFor('the request at its origin', () => (originSaw.length > before ? true : undefined));
    const stopped = worker.close();
    await answered();
    client.socket.write(next);
    client.resume();
    await Promise.race([client.closed, sleep(LINGER_MS + 5000)]);
    await stopped;
    const received = client.text();
    expect(received).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(received.toLowerCase()).toContain('\r\nconnection: close\r\n');
    expect(bodyOf(received).length).toBe(ONE_MIB);
    expect(reset()).toBeUndefined();
    expect(originSaw.slice(before)).toEqual(['GET /slow-1m HTTP/1.1']);
  }, 30_000);
});

describe('requests pipelined while the connection lingers', () => {
  // Dropped unanswered (RFC 9112 §9.6), they were still parsed: each kept its request and answer objects till the
  // connection ended, and a flood of small ones grew the worker's heap by hundreds of MiB within LINGER_MS, its event
  // loop too busy parsing them to end the connection or the stop.
  it("after the stop's last answer: read and dropped unparsed, the heap does not grow, the connection ends within LINGER_MS", async () => {
    const worker = await ownWorker('l-flood');
    const before = originSaw.length;
    const answered = nextAccessLine('/slow-1m');
    const options = { host: '127.0.0.1', port: worker.ports[0], servername: HOST, ca, allowHalfOpen: true };
    const socket = tls.connect(options);
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('secureConnect', resolve));
    socket.on('data', () => undefined);
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.write(`GET /slow-1m HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await waitFor('the request at its origin', () => (originSaw.length > before ? true : undefined));
    const stopped = worker.close();
    await answered();
    const lingering = Date.now();
    const heapBefore = process.memoryUsage().heapUsed;
    const chunk = Buffer.from(`GET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`.repeat(2000));
    const send = (): void => {
      while (!socket.destroyed) if (!socket.write(chunk)) return;
    };
    socket.on('drain', send);
    send();
    await sleep(3000);
    const grown = process.memoryUsage().heapUsed - heapBefore;
    await Promise.race([closed, sleep(LINGER_MS + 8000)]);
    expect(socket.destroyed).toBe(true);
    expect(Date.now() - lingering).toBeLessThan(LINGER_MS + 8000);
    expect(grown).toBeLessThan(100 * ONE_MIB);
    await stopped;
    expect(originSaw.slice(before)).toEqual(['GET /slow-1m HTTP/1.1']);
  }, 60_000);
});
