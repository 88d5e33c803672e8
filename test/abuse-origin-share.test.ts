import { readFileSync } from 'node:fs';
import type http2 from 'node:http2';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { closeSession, h2Connect } from './helpers/h2.js';
import { startOriginWorker } from './helpers/origin-worker.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type RawTls, rawTls } from './helpers/raw-tls.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// One client's share of an origin's places (proxy/http/origin-gate.ts). Answers are relayed with backpressure, not
// buffered, so a client that reads none of its answers holds an origin place per request until limits.sendTimeoutMs.
// One HTTP/2 connection of 20 streams (or 16 HTTP/1.1 connections) held all 8 places of the origin, and every other
// client of it got 503 KEYEDGE_HTTP_ORIGIN_BUSY after the queue timeout, for a minute at a time. A client now holds
// at most half the places; its other requests wait, and the other half serves everyone else. The clients here are
// told apart by address: the attacker connects from 127.0.0.1, the others from 127.0.0.2.
const HOST = 'share.lab.test';
const PLACES = 8;
/** Long enough that before the fix the victim's 503 came well before the attacker's cut, and short enough for the test. */
const LIMITS = { originMaxConnections: PLACES, originQueueTimeoutMs: 5000, sendTimeoutMs: 60_000 };
/** Past what the kernel's socket buffers on loopback take (several MiB each way): an HTTP/1.1 answer the client does not read stays unsent. */
const BIG_BYTES = 16 * 1024 * 1024;
const BIG = Buffer.alloc(BIG_BYTES, 'x');
const OTHER = '127.0.0.2';

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const sockets = new Set<net.Socket>();
const saw: string[] = [];
const lines: Record<string, unknown>[] = [];

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('share', lab.keys.ec, [HOST]);
  origin = scriptedOrigin(
    {
      '/big': (socket) => {
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${BIG_BYTES}\r\n\r\n`);
        // One buffer for every answer: the origin's writes queue it, not copies of it.
        socket.write(BIG);
      },
      '/mid': `HTTP/1.1 200 OK\r\ncontent-length: ${64 * 1024}\r\n\r\n${'m'.repeat(64 * 1024)}`,
      '/victim': 'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nvictim',
    },
    { sockets, saw },
  );
  proxy = await startOriginWorker(lab, {
    certificate: { name: 'share', chain: cert.file },
    host: HOST,
    origin,
    limits: LIMITS,
    logName: 'origin-share',
    lines,
  });
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

/** An HTTP/2 connection from `localAddress`; `settings` as the client sends them. */
function h2From(localAddress: string | undefined, settings: http2.Settings = {}): http2.ClientHttp2Session {
  const port = proxy.ports[0]!;
  return h2Connect(port, ca, HOST, {
    settings,
    createConnection: () =>
      tls.connect({ host: '127.0.0.1', port, ca, servername: HOST, ALPNProtocols: ['h2'], ...(localAddress === undefined ? {} : { localAddress }) }),
  });
}

/** A GET on `session`: its status and body length once the stream closes. */
function get(session: http2.ClientHttp2Session, path: string): Promise<{ status: number | undefined; bytes: number }> {
  return new Promise((resolve) => {
    const stream = session.request({ ':path': path });
    let status: number | undefined;
    let bytes = 0;
    stream.on('response', (head) => (status = Number(head[':status'])));
    stream.on('data', (chunk: Buffer) => (bytes += chunk.length));
    stream.on('error', () => undefined);
    stream.on('close', () => resolve({ status, bytes }));
  });
}

const bigRequests = (): number => saw.filter((line) => line.startsWith('GET /big ')).length;

/** Waits until the origin has been sent at least `count` GET /big in all, then a while more, for any further ones to arrive. */
async function originSent(count: number): Promise<number> {
  await waitFor(`the origin to be sent ${count} requests`, () => (bigRequests() >= count ? true : undefined), 20_000);
  await sleep(500);
  return bigRequests();
}

it("one HTTP/2 connection reading none of its 20 answers holds half the origin's places, and another client is served meanwhile", async () => {
  const before = bigRequests();
  // A stream window of 0: the proxy can send none of an answer, and every stream's origin request stays paused.
  const attacker = h2From(undefined, { initialWindowSize: 0 });
  const streams = Array.from({ length: 20 }, () => get(attacker, '/big'));
  // Before the fix, all 8 places went to the attacker's streams.
  expect((await originSent(before + PLACES / 2)) - before).toBe(PLACES / 2);
  const other = h2From(OTHER);
  // Before the fix: 503 KEYEDGE_HTTP_ORIGIN_BUSY, after the 5 s queue timeout.
  expect(await get(other, '/victim')).toEqual({ status: 200, bytes: 6 });
  await closeSession(other);
  attacker.destroy();
  await Promise.all(streams);
  // Every place the attacker held or waited for is given back: the same address is served again.
  const again = h2From(undefined);
  expect(await get(again, '/victim')).toEqual({ status: 200, bytes: 6 });
  await closeSession(again);
}, 60_000);

it("16 HTTP/1.1 connections reading none of their answers hold half the origin's places, and another client is served meanwhile", async () => {
  const before = bigRequests();
  const attackers: RawTls[] = [];
  for (let i = 0; i < 16; i++) {
    const client = await rawTls(proxy.ports[0]!, HOST, ca, { read: false });
    client.socket.write(`GET /big HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    attackers.push(client);
  }
  expect((await originSent(before + PLACES / 2)) - before).toBe(PLACES / 2);
  const other = await rawTls(proxy.ports[0]!, HOST, ca, { localAddress: OTHER });
  other.socket.write(`GET /victim HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
  const answer = await waitFor('the answer to /victim', () => (other.text().includes('\r\n\r\n') ? other.text() : undefined), 20_000);
  expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  other.socket.destroy();
  for (const client of attackers) client.socket.destroy();
}, 60_000);

it('one client that reads gets all of its 20 concurrent answers whole: the requests past its share wait their turn', async () => {
  const session = h2From(undefined);
  const answers = await Promise.all(Array.from({ length: 20 }, () => get(session, '/mid')));
  expect(answers).toEqual(Array(20).fill({ status: 200, bytes: 64 * 1024 }));
  await closeSession(session);
}, 60_000);
