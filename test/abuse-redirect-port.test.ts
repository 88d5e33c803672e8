/**
 * The plain-HTTP port (the redirect and ACME HTTP-01 listener) under the
 * worker's connection caps and header deadline, as its TLS listeners are:
 * a flood of connections there from one address, or from many, is closed at
 * accept past limits.maxConnectionsPerClient / maxConnectionsPerWorker
 * (shared with the TLS port, counted as keyedge_proxy_connections_rejected_total),
 * and a client that sends nothing, or its headers too slowly, is closed
 * after limits.headerTimeoutMs, not Node's 60 s.
 *
 * Real workers on port 0, real sockets from distinct loopback addresses (each
 * test its own, so a close still in flight elsewhere cannot count against it).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

/** How long a refused connection may take to be seen closed, and an admitted one must stay open: generous under load. */
const SETTLE_MS = 1500;
/** Part of a request: an admitted connection waits for the rest (the caps' workers give it 60 s). */
const PARTIAL = 'GET / HTTP/1.1\r\nHost: a.lab.test\r\n';

let lab: KeylessLab;
let ca: string;
let chain: string;
const started: { worker: RunningWorker; metrics: ProxyMetrics }[] = [];

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  chain = (await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test'])).file;
});
afterAll(async () => {
  for (const { worker, metrics } of started) {
    await worker.close();
    metrics.stop();
  }
  await lab?.close();
});

async function startWorker(limits: Record<string, unknown>): Promise<{ worker: RunningWorker; metrics: ProxyMetrics }> {
  let worker: RunningWorker | undefined;
  // A worker of its own per test: its metrics go to a registry of their own.
  const metrics = new ProxyMetrics(() => worker!.keySource.stats(), new Registry());
  worker = await startProxyWorker(lab.proxyConfig({ certificates: [{ name: 'ec', chain }], httpRedirect: { host: '127.0.0.1', port: 0 }, limits }), {
    log: createLogger('redirect-port-abuse', 'silent'),
    metrics,
  });
  started.push({ worker, metrics });
  return { worker, metrics };
}

/** A connection to `port` from `localAddress` that sent `first`; open once connected (or already closed, refused). */
async function openFrom(localAddress: string, port: number, first = PARTIAL): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  socket.on('error', () => {});
  socket.resume();
  await new Promise((resolve) => socket.once('connect', resolve).once('close', resolve));
  if (!socket.destroyed) socket.write(first);
  return socket;
}

/** Whether the proxy still holds `socket` open after `ms`. */
async function heldAfter(socket: net.Socket, ms: number): Promise<boolean> {
  if (socket.closed) return false;
  // Not events.once: a refused connection may see a reset ('error') before its 'close'.
  const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(false)));
  return Promise.race([closed, new Promise<boolean>((resolve) => setTimeout(() => resolve(!socket.closed), ms))]);
}

/** Whether a TLS handshake from `localAddress` completes (false: the proxy closed it at accept). */
function handshakes(localAddress: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress }), servername: 'a.lab.test', ca }, () => {
      resolve(true);
      socket.destroy();
    });
    socket.on('error', () => resolve(false));
    socket.on('close', () => resolve(false));
  });
}

async function rejected(metrics: ProxyMetrics, reason: string): Promise<number> {
  return (await metrics.rejectedConnections.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

describe('plain-HTTP port: the worker connection caps', () => {
  it('closes connections over limits.maxConnectionsPerClient from one address at accept, counting its TLS connections too', async () => {
    const { worker, metrics } = await startWorker({ headerTimeoutMs: 60_000, maxConnectionsPerClient: 3 });
    const port = worker.httpPort!;
    const held = [await openFrom('127.0.0.41', port), await openFrom('127.0.0.41', port), await openFrom('127.0.0.41', port)];
    const over = await Promise.all([1, 2, 3, 4].map(() => openFrom('127.0.0.41', port)));
    try {
      expect(await Promise.all(over.map((s) => heldAfter(s, SETTLE_MS)))).toEqual([false, false, false, false]);
      expect(await Promise.all(held.map((s) => heldAfter(s, 0)))).toEqual([true, true, true]);
      // The cap is the worker's, not the port's: the same address gets no TLS connection either.
      expect(await handshakes('127.0.0.41', worker.ports[0]!)).toBe(false);
      expect(await rejected(metrics, 'client_limit')).toBe(5);
      // Another address is served meanwhile.
      const other = await openFrom('127.0.0.42', port, 'GET / HTTP/1.1\r\nHost: a.lab.test\r\nConnection: close\r\n\r\n');
      let answer = '';
      other.on('data', (d: Buffer) => (answer += d.toString('latin1')));
      await new Promise((resolve) => other.once('close', resolve));
      expect(answer).toMatch(/^HTTP\/1\.1 308 /);
    } finally {
      for (const socket of [...held, ...over]) socket.destroy();
    }
  });

  it('closes connections over limits.maxConnectionsPerWorker at accept, whatever their address, on both ports', async () => {
    const { worker, metrics } = await startWorker({ headerTimeoutMs: 60_000, maxConnectionsPerWorker: 4, maxConnectionsPerClient: null });
    const port = worker.httpPort!;
    const held = await Promise.all(['127.0.0.51', '127.0.0.52', '127.0.0.53', '127.0.0.54'].map((address) => openFrom(address, port)));
    // Accepted in the order they connected (the kernel's accept queue is FIFO): the four before the next ones.
    const over = await Promise.all(['127.0.0.55', '127.0.0.56'].map((address) => openFrom(address, port)));
    try {
      expect(await Promise.all(over.map((s) => heldAfter(s, SETTLE_MS)))).toEqual([false, false]);
      expect(await Promise.all(held.map((s) => heldAfter(s, 0)))).toEqual([true, true, true, true]);
      expect(await handshakes('127.0.0.57', worker.ports[0]!)).toBe(false);
      expect(await rejected(metrics, 'worker_limit')).toBe(3);
      // The four held are open connections like the TLS ones, and stop being so once closed.
      expect((await metrics.openConnections.get()).values[0]?.value).toBe(4);
    } finally {
      for (const socket of [...held, ...over]) socket.destroy();
    }
    await waitFor('no open connection', async () => ((await metrics.openConnections.get()).values[0]?.value === 0 ? true : undefined));
  });
});

describe('plain-HTTP port: the header deadline', () => {
  it('closes a connection that sends nothing, or its headers too slowly, after limits.headerTimeoutMs', async () => {
    const { worker } = await startWorker({ headerTimeoutMs: 1000 });
    const port = worker.httpPort!;
    const since = Date.now();
    const silent = await openFrom('127.0.0.61', port, '');
    const slow = await openFrom('127.0.0.62', port);
    // Node checks its deadlines every second here: closed within about 2 s; Node's defaults would hold both 60 to 90 s.
    const closed = await Promise.all([silent, slow].map((s) => heldAfter(s, 10_000)));
    expect(closed).toEqual([false, false]);
    expect(Date.now() - since).toBeLessThan(10_000);
  }, 20_000);
});
