import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type ProxyChild, startProxyChild } from './helpers/proxy-child.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// 10,000 requests through a proxy worker in its own process, over new and
// kept-alive connections, one in twenty to an origin that refuses connections
// (502): once the clients have gone and idle origin connections have timed
// out, the worker holds as many file descriptors as before the load.
const REQUESTS = 10_000;
const CONCURRENCY = 32;
/** Every DEAD_EVERY-th request goes to the dead origin: 5 %. */
const DEAD_EVERY = 20;
/** A client connection is replaced after this many requests (a new TLS handshake)... */
const REQUESTS_PER_CONNECTION = 40;
/** ...and every CLOSE_EVERY-th request asks the proxy to close it after the answer (Connection: close). */
const CLOSE_EVERY = 50;
/**
 * The origin's keep-alive timeout, announced in its Keep-Alive header: undici
 * keeps an idle pooled connection until 2 s (its threshold) before that, so
 * origin connections are reused under load and gone ~1.5 s after it, instead
 * of after Node's default 5 s.
 */
const ORIGIN_KEEP_ALIVE_MS = 3500;
/**
 * Allowed difference from the baseline: 2 descriptors. The worker's one
 * connection to the key server may be dropped and re-made around a count, and
 * libuv may open or close an internal handle (a thread-pool wakeup, a DNS
 * helper) between two reads. A leak of one descriptor per connection, per
 * failed origin connect or per request would be hundreds.
 */
const TOLERANCE = 2;

let lab: KeylessLab;
let proxy: ProxyChild;
let ca: string;
let origin: http.Server;
let originConnections = 0;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = http.createServer({ keepAliveTimeout: ORIGIN_KEEP_ALIVE_MS }, (_req, res) =>
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 3 }).end('ok\n'),
  );
  origin.on('connection', () => originConnections++);
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const dead = await freePort();
  proxy = await startProxyChild(lab.dir, 'fd-leak', {
    stateDir: join(lab.dir, 'state'),
    workers: 1,
    admin: null,
    log: { level: 'error' },
    listen: [{ host: '127.0.0.1', port: 0 }],
    keyserver: { socket: lab.socket },
    certificates: [{ name: 'ec', chain: ec.file }],
    domains: [
      { name: 'live.lab.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` },
      { name: 'dead.lab.test', origin: `http://127.0.0.1:${dead}` },
    ],
  });
});
afterAll(async () => {
  await proxy?.stop();
  await new Promise((resolve) => (origin === undefined ? resolve(undefined) : origin.close(resolve)));
  await lab?.close();
});

function openFds(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).map((fd) => {
    try {
      return readlinkSync(join(dir, fd));
    } catch {
      return 'closed while listed';
    }
  });
}

/** What the fds are, by kind (socket, pipe, anon_inode:[eventpoll], file paths). */
function describeFds(fds: readonly string[]): string {
  const kinds = new Map<string, number>();
  for (const fd of fds) {
    const kind = fd.replace(/\[\d+\]$/, '[…]');
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return JSON.stringify(Object.fromEntries(kinds));
}

/**
 * The fd count once it has stopped changing (the same over 1 s) and is at
 * most `atMost`, or the last count at the deadline.
 */
async function settledFdCount(pid: number, atMost = Infinity, deadlineMs = 20_000): Promise<{ count: number; fds: string[] }> {
  const deadline = Date.now() + deadlineMs;
  let previous = -1;
  let stableSince = Date.now();
  for (;;) {
    const fds = openFds(pid);
    if (fds.length !== previous) {
      previous = fds.length;
      stableSince = Date.now();
    } else if (Date.now() - stableSince >= 1000 && fds.length <= atMost) return { count: fds.length, fds };
    if (Date.now() > deadline) return { count: fds.length, fds };
    await sleep(100);
  }
}

interface LoadResult {
  readonly statuses: Map<number, number>;
  readonly errors: string[];
  readonly connections: number;
}

/**
 * `total` GETs from `CONCURRENCY` loops. Each loop keeps one connection alive
 * for REQUESTS_PER_CONNECTION requests, then opens a new one (a new agent has
 * no TLS session to resume, so each is a full handshake); every CLOSE_EVERY-th
 * request has the proxy close the connection after answering.
 */
async function load(total: number): Promise<LoadResult> {
  const statuses = new Map<number, number>();
  const errors: string[] = [];
  let next = 0;
  const sockets = new WeakSet<object>();
  let connections = 0;
  const get = (agent: https.Agent, host: string, close: boolean): Promise<number> =>
    new Promise((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: proxy.port, servername: host, ca, agent, headers: { host, ...(close ? { connection: 'close' } : {}) } },
        (res) => {
          res.resume();
          res.once('end', () => resolve(res.statusCode ?? 0));
          res.once('error', reject);
        },
      );
      req.once('socket', (socket) => {
        if (sockets.has(socket)) return;
        sockets.add(socket);
        connections++;
      });
      req.setTimeout(15_000, () => req.destroy(new Error('client timeout')));
      req.once('error', reject);
    });
  const loop = async (): Promise<void> => {
    let agent: https.Agent | undefined;
    let used = 0;
    while (next < total) {
      const i = next++;
      if (agent === undefined || used === REQUESTS_PER_CONNECTION) {
        agent?.destroy();
        agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
        used = 0;
      }
      const close = i % CLOSE_EVERY === CLOSE_EVERY - 1;
      try {
        const status = await get(agent, i % DEAD_EVERY === 0 ? 'dead.lab.test' : 'live.lab.test', close);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      } catch (err) {
        errors.push((err as Error).message);
      }
      used++;
    }
    agent?.destroy();
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, loop));
  return { statuses, errors, connections };
}

describe('file descriptors of a proxy worker under load', () => {
  it(`are back to the baseline after ${REQUESTS} requests, ${100 / DEAD_EVERY} % of them to a dead origin`, { timeout: 120_000 }, async () => {
    const pid = proxy.child.pid!;
    // Warm-up: the key server connection, the origin pools, TLS contexts and
    // libuv's threads exist from here on; then idle until origin connections close.
    const warm = await load(400);
    expect(warm.errors).toEqual([]);
    const baseline = await settledFdCount(pid);

    const started = Date.now();
    const result = await load(REQUESTS);
    const loadMs = Date.now() - started;
    expect(result.errors, `client errors: ${[...new Set(result.errors)].join('; ')}`).toEqual([]);
    expect(Object.fromEntries(result.statuses)).toEqual({ 200: REQUESTS - REQUESTS / DEAD_EVERY, 502: REQUESTS / DEAD_EVERY });

    // Clients are gone (agents destroyed); idle origin connections time out.
    const after = await settledFdCount(pid, baseline.count + TOLERANCE);
    expect(proxy.alive()).toBe(true);
    expect(after.count, `fds before: ${describeFds(baseline.fds)}; after: ${describeFds(after.fds)}`).toBeLessThanOrEqual(baseline.count + TOLERANCE);
    console.info(
      `${REQUESTS} requests in ${loadMs} ms over ${result.connections} client connections (${originConnections} origin connections in all); worker fds: baseline ${baseline.count}, after ${after.count}`,
    );
  });
});
