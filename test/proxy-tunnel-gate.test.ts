import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { type RunningWorker, startProxyWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { acceptFor, type ClientSocket, encodeFrame, openWebSocket, TEXT, upgradeRequest } from './helpers/websocket.js';

// Tunnels count against limits.originMaxConnections with the requests (nginx's max_conns counts an upgraded
// connection as active): each holds its place at the origin's gate until its origin connection closes, one of the
// long-held places (at most half, shared with streamed uploads, so requests keep the other half), and one that finds
// none free waits in the origin's queue like a request, or gets its 503 past the queue. Before, tunnels opened
// their own origin connections outside the count, so any number of WebSockets went past the bound an operator set to
// protect the origin. The proxy runs in this process; the origin is node's server, switching on 'upgrade'.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: http.Server;
/** The origin's open connections, and the most it had open at once. */
const open = new Set<net.Socket>();
let most = 0;
/** Upgrade requests the origin received, by path. */
const upgrades = new Map<string, number>();
/** The origin's places, and the long-held ones among them that tunnels may take. */
const MAX = 4;
const TUNNELS = 2;
/** Loopback answers in milliseconds; the rest is margin for a loaded machine. */
const MARGIN_MS = 5000;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  // Requests close their connection: no idle keep-alive connection of the proxy's pool stays open between tests.
  origin = http.createServer((_req, res) => res.writeHead(200, { 'content-length': 5, connection: 'close' }).end('plain'));
  origin.on('connection', (socket: net.Socket) => {
    open.add(socket);
    most = Math.max(most, open.size);
    socket.once('close', () => open.delete(socket));
  });
  origin.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    socket.on('error', () => undefined);
    // Node's upgraded socket is half-open: it ends its side when the proxy ends its own, as the ws library does.
    socket.once('end', () => socket.end());
    const path = req.url ?? '/';
    upgrades.set(path, (upgrades.get(path) ?? 0) + 1);
    // Never answers: its client leaves first.
    if (path === '/silent') return;
    if (path === '/reject') return void socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrefused');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptFor(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
    );
    socket.write(encodeFrame(TEXT, 'welcome', false));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [{ name: 'ws.lab.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      // One waiter at most, given long enough that only a place coming free admits it within the test.
      // Clients not counted per address: the origin's own bounds are what is tried here, not one client's share of them
      // (origin-gate.ts), but in the test that sends a request beside the tunnels from another address.
      limits: { originMaxConnections: MAX, originMaxQueue: 1, originQueueTimeoutMs: 30_000, maxConnectionsPerClient: null },
    }),
    { log: createLogger('tunnel-gate-test', 'silent') },
  );
});
afterAll(async () => {
  await proxy?.close();
  origin?.closeAllConnections();
  origin?.close();
  await lab?.close();
});

type Answer = Awaited<ReturnType<typeof openWebSocket>>;

const start = (path = '/'): Promise<Answer> => openWebSocket(proxy.ports[0]!, ca, 'ws.lab.test', path);

async function tunnel(path = '/'): Promise<ClientSocket> {
  const ws = await start(path);
  if (!('socket' in ws)) throw new Error(`no upgrade: ${ws.status} ${ws.body}`);
  expect(await ws.next()).toBe('welcome');
  return ws;
}

/** An upgrade request whose client can leave before its answer (`leave`). */
function abandoned(path: string): { leave: () => void } {
  const req = https.request(upgradeRequest(proxy.ports[0]!, ca, 'ws.lab.test', path));
  req.on('error', () => undefined);
  req.end();
  return { leave: () => req.destroy() };
}

/** Whether `promise` settled by now. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  void promise.then(
    () => (done = true),
    () => (done = true),
  );
  await sleep(0);
  return done;
}

/** `promise`'s value within `ms`, or a failure naming what did not happen. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_resolve, reject) => (timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function closeAll(...tunnels: ClientSocket[]): Promise<void> {
  for (const ws of tunnels) ws.socket.destroy();
  await waitFor('the origin connections to close', () => (open.size === 0 ? true : undefined), MARGIN_MS);
}

describe('tunnels under limits.originMaxConnections', () => {
  it('gives a third tunnel no origin connection while two are open, and one once either closes', async () => {
    most = 0;
    const first = await tunnel();
    const second = await tunnel();
    const third = start();
    await sleep(1000);
    expect(await settled(third), 'the third upgrade was answered while two tunnels were open').toBe(false);
    expect(open.size).toBe(TUNNELS);
    first.socket.destroy();
    const admitted = await within(MARGIN_MS, 'the third tunnel once the first closed', third);
    expect('socket' in admitted && (await admitted.next())).toBe('welcome');
    expect(most).toBe(TUNNELS);
    await closeAll(second, admitted as ClientSocket);
  });

  it('answers an upgrade past the full queue as a request: 503 KEYEDGE_HTTP_ORIGIN_BUSY with Retry-After', async () => {
    const tunnels = [await tunnel(), await tunnel()];
    const waiting = start();
    await sleep(500);
    expect(await within(MARGIN_MS, 'the fourth upgrade refused', start())).toMatchObject({
      status: 503,
      headers: { 'x-keyedge-error': 'KEYEDGE_HTTP_ORIGIN_BUSY', 'retry-after': '5', connection: 'close' },
    });
    tunnels[0]!.socket.destroy();
    const admitted = await within(MARGIN_MS, 'the waiting tunnel once a place came free', waiting);
    expect('socket' in admitted).toBe(true);
    await closeAll(tunnels[1]!, admitted as ClientSocket);
  });

  it('leaves requests their half: a request is answered at once while tunnels hold all the places tunnels may take', async () => {
    const tunnels = [await tunnel(), await tunnel()];
    // From another client: the tunnels' client holds its own share of the places (half) with them (origin-gate.ts).
    const from = { localAddress: '127.0.0.2' };
    const answer = new Promise<number>((resolve, reject) =>
      https
        .get(
          { host: '127.0.0.1', port: proxy.ports[0], servername: 'ws.lab.test', ca, path: '/', agent: false, headers: { host: 'ws.lab.test' }, ...from },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        )
        .on('error', reject),
    );
    expect(await within(MARGIN_MS, 'the request beside two tunnels', answer)).toBe(200);
    await closeAll(...tunnels);
  });

  it('gives the place back on every end: a refused upgrade, a client gone before the answer or while waiting', async () => {
    // Refused by the origin (not switched): more of them than places.
    for (let i = 0; i < TUNNELS + 1; i++) expect(await within(MARGIN_MS, 'the refusal', start('/reject'))).toMatchObject({ status: 403 });
    // Gone before the origin answered: each held a place and an origin connection until then.
    const silent = upgrades.get('/silent') ?? 0;
    const gone = [abandoned('/silent'), abandoned('/silent')];
    await waitFor('the origin to have both upgrades', () => ((upgrades.get('/silent') ?? 0) === silent + TUNNELS ? true : undefined), MARGIN_MS);
    for (const client of gone) client.leave();
    await waitFor('the origin connections to close', () => (open.size === 0 ? true : undefined), MARGIN_MS);
    // Gone while waiting for a place.
    const tunnels = [await tunnel(), await tunnel()];
    const waiter = abandoned('/');
    await sleep(500);
    waiter.leave();
    await closeAll(...tunnels);
    // Every place is free: two tunnels open at once (a place kept would hold one of them in the queue for 30 s).
    const again = await within(MARGIN_MS, 'two tunnels at once', Promise.all([tunnel(), tunnel()]));
    await closeAll(...again);
  });

  it('never opens a tunnel for a client that left while it waited for a place', async () => {
    const tunnels = [await tunnel(), await tunnel()];
    const waiter = abandoned('/ghost');
    await sleep(500);
    waiter.leave();
    await sleep(500);
    // A place comes free after the client left: its upgrade must not reach the origin.
    tunnels[0]!.socket.destroy();
    await sleep(1000);
    expect(upgrades.get('/ghost') ?? 0, 'the origin received the upgrade of a client that had left').toBe(0);
    await closeAll(tunnels[1]!);
  });
});
