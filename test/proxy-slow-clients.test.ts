import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type AbuseOrigin, startAbuseOrigin } from './helpers/abuse-origin.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';
import { type Answer, request } from './helpers/requests.js';

// Each slow-client limit against `keyedge proxy` with two workers and real
// origins, with short timeouts so each shows within seconds: a body that
// stalls or drags gets 408 (KEYEDGE_HTTP_BODY_TIMEOUT) and, once streaming,
// its origin request is aborted; an answer the client stops reading is cut
// and so is its origin request; an origin whose connections and queue are
// full answers 503 (KEYEDGE_HTTP_ORIGIN_BUSY) with Retry-After.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let origin: AbuseOrigin;
let busy: AbuseOrigin;
/** Only the send-stall test's: a connection of it that closes is that test's. */
let stall: AbuseOrigin;

const LIMITS = {
  bodyBufferBytes: 16_384,
  bodyIdleTimeoutMs: 1500,
  bodyTimeoutMs: 4000,
  sendTimeoutMs: 2000,
  originMaxConnections: 2,
  originMaxQueue: 1,
  originQueueTimeoutMs: 1500,
  // Every client here is 127.0.0.1: not counted per client, so the origin's own bounds are what is tried, not one
  // client's share of them (origin-gate.ts; abuse-origin-share.test.ts tries that).
  maxConnectionsPerClient: null,
};

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  origin = await startAbuseOrigin();
  busy = await startAbuseOrigin();
  stall = await startAbuseOrigin();
  const wild = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  proxy = await startClusterProxy(lab, 'slow', (p) =>
    storeProxyConfig(lab, p, {
      certificates: [{ name: 'wild', chain: wild.file }],
      domains: [
        { name: '*.lab.test', origin: `http://127.0.0.1:${origin.port}` },
        { name: 'busy.lab.test', origin: `http://127.0.0.1:${busy.port}` },
        { name: 'stall.lab.test', origin: `http://127.0.0.1:${stall.port}` },
      ],
      limits: LIMITS,
    }),
  );
}, 60_000);
afterAll(async () => {
  await proxy?.stop();
  await origin?.close();
  await busy?.close();
  await stall?.close();
  await lab?.close();
});

const HEAD = (length: number, path = '/upload'): string => `POST ${path} HTTP/1.1\r\nHost: a.lab.test\r\nContent-Length: ${length}\r\n\r\n`;

describe('request body timeouts', () => {
  it('answers 408 KEYEDGE_HTTP_BODY_TIMEOUT to a body that stops arriving, before any origin connection is taken', async () => {
    const posts = origin.stats.posts;
    const client = await rawTls(proxy.port, 'a.lab.test', ca);
    client.socket.write(`${HEAD(1000)}0123456789`);
    const ms = await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 408 /);
    expect(client.text()).toMatch(/x-keyedge-error: KEYEDGE_HTTP_BODY_TIMEOUT/i);
    expect(client.text()).toMatch(/connection: close/i);
    expect(ms).toBeGreaterThanOrEqual(1000);
    expect(ms).toBeLessThan(15_000);
    // A body within the buffer never reached the origin.
    expect(origin.stats.posts).toBe(posts);
  }, 30_000);

  it('answers 408 to a body that keeps trickling past the total body timeout', async () => {
    const client = await rawTls(proxy.port, 'a.lab.test', ca);
    client.socket.write(HEAD(1000));
    // A byte every 300 ms: never idle for 1.5 s, never done within 4 s.
    const drip = setInterval(() => client.socket.writable && client.socket.write('x'), 300);
    try {
      const ms = await client.closed;
      expect(client.text()).toMatch(/^HTTP\/1\.1 408 /);
      expect(client.text()).toMatch(/x-keyedge-error: KEYEDGE_HTTP_BODY_TIMEOUT/i);
      expect(ms).toBeGreaterThanOrEqual(3500);
      expect(ms).toBeLessThan(20_000);
    } finally {
      clearInterval(drip);
    }
  }, 30_000);

  it('aborts the origin request of a streaming body that stalls, and answers 408', async () => {
    const posts = origin.stats.posts;
    const aborted = origin.stats.bodiesAborted;
    const client = await rawTls(proxy.port, 'a.lab.test', ca);
    // Past the 16 KiB buffer: the body streams to the origin, then stops.
    client.socket.write(HEAD(200_000));
    client.socket.write(Buffer.alloc(40_000, 0x62));
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 408 /);
    expect(origin.stats.posts).toBe(posts + 1);
    // The origin's connection was closed mid-body: its connection is free again, not held.
    await waitFor('the origin request to be aborted', () => (origin.stats.bodiesAborted > aborted ? true : undefined), 10_000);
  }, 30_000);

  it('forwards a body read whole (within the buffer) and one that streams', async () => {
    const small = await request(proxy.port, ca, 'a.lab.test', { method: 'POST', path: '/upload', body: Buffer.alloc(10_000) });
    expect((small as Answer).status).toBe(200);
    expect((small as Answer).body).toBe('10000\n');
    const large = await request(proxy.port, ca, 'a.lab.test', { method: 'POST', path: '/upload', body: Buffer.alloc(300_000) });
    expect((large as Answer).status).toBe(200);
    expect((large as Answer).body).toBe('300000\n');
  }, 30_000);
});

describe('send stall', () => {
  it('closes a client that stops reading an 8 MiB answer, and aborts its origin request', async () => {
    const started = Date.now();
    const client = await rawTls(proxy.port, 'stall.lab.test', ca, { read: false });
    client.socket.write('GET /big HTTP/1.1\r\nHost: stall.lab.test\r\n\r\n');
    // sendTimeoutMs is 2 s, once the answer has filled the socket buffers; the
    // aborted origin request closes its connection (its only one).
    await waitFor('the origin request to be aborted', () => (stall.stats.closed > 0 ? true : undefined), 20_000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
    // Reading now gets what the kernel still held, then the close: a cut answer, short of its Content-Length.
    client.resume();
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 200 /);
    expect(client.text().length).toBeLessThan(8 * 1024 * 1024);
  }, 40_000);

  it('still sends a large answer whole to a client that reads it', async () => {
    const answer = (await request(proxy.port, ca, 'a.lab.test', { path: '/big' })) as Answer;
    expect(answer.status).toBe(200);
    expect(answer.body.length).toBe(8 * 1024 * 1024);
  }, 30_000);
});

describe('origin admission', () => {
  it("answers 503 KEYEDGE_HTTP_ORIGIN_BUSY with Retry-After when an origin's connections and queue are full, or a queued request waited too long", async () => {
    // Two connections and one waiting request per worker; each answer holds for 4 s.
    const answers = await Promise.all(Array.from({ length: 12 }, () => request(proxy.port, ca, 'busy.lab.test', { path: '/hold?ms=4000' })));
    const statuses = answers.map((a) => ('status' in a ? a.status : 0));
    const ok = statuses.filter((s) => s === 200).length;
    const refused = answers.filter((a) => 'status' in a && a.status === 503) as Answer[];
    expect(ok + refused.length).toBe(12);
    expect(ok).toBeGreaterThanOrEqual(1);
    expect(ok).toBeLessThanOrEqual(4);
    for (const answer of refused) {
      expect(answer.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_ORIGIN_BUSY');
      expect(Number(answer.headers['retry-after'])).toBeGreaterThan(0);
    }
    // Never more than each worker's two connections at once at the origin.
    expect(busy.stats.maxInFlight).toBeLessThanOrEqual(4);
    const reasons = proxy.lines.filter((l) => l.code === 'KEYEDGE_HTTP_ORIGIN_BUSY').map((l) => String(l.reason));
    expect(reasons.some((r) => /waiting/.test(r))).toBe(true);
    expect(reasons.some((r) => /no connection free within/.test(r))).toBe(true);
    // Once the held answers are done, the origin takes requests again.
    await sleep(500);
    expect(((await request(proxy.port, ca, 'busy.lab.test', { path: '/' })) as Answer).status).toBe(200);
  }, 60_000);
});

describe('afterwards', () => {
  it('lost no worker to any of it', () => {
    expect(proxy.lines.filter((l) => l.msg === 'proxy worker died; starting a replacement')).toEqual([]);
  });
});
