import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { PROXY_DEFAULTS } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { type RunningWorker, startProxyWorker } from '../proxy/worker.js';
import { sleep } from './helpers/keyserver.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { acceptFor, type ClientSocket, encodeFrame, openWebSocket, readFrames, TEXT } from './helpers/websocket.js';

// A tunnel that carries no byte either way for limits.tunnelIdleTimeoutMs is closed, both sides (HAProxy's `timeout
// tunnel`, nginx's proxy_read_timeout on a proxied WebSocket); one that carries bytes one way only is not idle. Before
// the bound, a tunnel where neither side sent anything held its client connection, its origin connection and the
// worker's memory for ever. The proxy runs in this process; the origin is node's server, switching on 'upgrade'.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: http.Server;
/** The origin's side of each tunnel, in the order opened: `closed` once the proxy closed its connection. */
const originSides: { socket: Duplex; closed: Promise<void>; received: () => number }[] = [];
const IDLE_MS = 1000;
/** Loopback closes in milliseconds; the rest is margin for a loaded machine. */
const MARGIN_MS = 5000;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = http.createServer((_req, res) => res.writeHead(426, { 'content-length': 0 }).end());
  origin.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptFor(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
    );
    let received = 0;
    readFrames(socket, head, () => received++);
    // The proxy's close of its connection arrives as a FIN (or a reset): node's upgraded socket is half-open, so it ends
    // its side too, as the ws library does.
    const closed = new Promise<void>((resolve) => {
      socket.once('end', () => {
        socket.end();
        resolve();
      });
      socket.once('close', () => resolve());
    });
    originSides.push({ socket, closed, received: () => received });
    // '/push': the origin sends every 300 ms (a server pushing to a silent client); otherwise it never sends.
    if (req.url === '/push') {
      let n = 0;
      const push = setInterval(() => socket.write(encodeFrame(TEXT, `push ${n++}`, false)), 300);
      socket.once('close', () => clearInterval(push));
    }
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [{ name: 'ws.lab.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      limits: { tunnelIdleTimeoutMs: IDLE_MS },
    }),
    { log: createLogger('tunnel-idle-test', 'silent') },
  );
});
afterAll(async () => {
  await proxy?.close();
  origin?.closeAllConnections();
  origin?.close();
  await lab?.close();
});

async function open(path: string): Promise<{ ws: ClientSocket; side: (typeof originSides)[number] }> {
  const before = originSides.length;
  const ws = await openWebSocket(proxy.ports[0]!, ca, 'ws.lab.test', path);
  if (!('socket' in ws)) throw new Error(`no upgrade: ${ws.status} ${ws.body}`);
  return { ws, side: originSides[before]! };
}

/** Whether `promise` settled by now. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await sleep(0);
  return done;
}

/** Milliseconds until `promise` settles, or undefined when it has not within `ms`. */
async function settlesWithin(ms: number, promise: Promise<unknown>): Promise<number | undefined> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  const elapsed = await Promise.race([promise.then(() => performance.now() - started), late]);
  clearTimeout(timer);
  return elapsed;
}

describe('limits.tunnelIdleTimeoutMs', () => {
  it('defaults to a minute, and takes null for no bound', () => {
    expect(PROXY_DEFAULTS.limits.tunnelIdleTimeoutMs).toBe(60_000);
    const file = `${lab.dir}/tunnel-idle-config.json`;
    writeFileSync(file, JSON.stringify({}));
    expect(loadProxyConfig(file).limits.tunnelIdleTimeoutMs).toBe(60_000);
    writeFileSync(file, JSON.stringify({ limits: { tunnelIdleTimeoutMs: null } }));
    expect(loadProxyConfig(file).limits.tunnelIdleTimeoutMs).toBeNull();
    writeFileSync(file, JSON.stringify({ limits: { tunnelIdleTimeoutMs: 50 } }));
    expect(() => loadProxyConfig(file)).toThrow('limits.tunnelIdleTimeoutMs');
    expect(() => loadProxyConfig(file)).toThrow('from 100 to 86400000');
  });

  it('closes a tunnel neither side sent anything on, both its connections, after the bound and not before', async () => {
    const { ws, side } = await open('/');
    const elapsed = await settlesWithin(IDLE_MS + MARGIN_MS, ws.closed);
    expect(elapsed, 'the client side closed within the bound and the margin').toBeDefined();
    // Not before half the bound (measured from the 101, which came before the clock started).
    expect(elapsed!).toBeGreaterThanOrEqual(IDLE_MS / 2);
    expect(await settlesWithin(MARGIN_MS, side.closed), 'the origin side closed').toBeDefined();
  });

  it('keeps a tunnel open past the bound while only the client sends (to a silent origin)', async () => {
    const { ws, side } = await open('/');
    for (let i = 0; i < 10; i++) {
      ws.send(`tick ${i}`);
      await sleep(300);
    }
    // Three times the bound has passed: the tunnel is open, and what the client sent reached the origin.
    expect(await settled(ws.closed)).toBe(false);
    expect(await settled(side.closed)).toBe(false);
    expect(side.received()).toBe(10);
    // Then silent: closed by the bound.
    expect(await settlesWithin(IDLE_MS + MARGIN_MS, ws.closed)).toBeDefined();
    expect(await settlesWithin(MARGIN_MS, side.closed)).toBeDefined();
  });

  it('keeps a tunnel open past the bound while only the origin sends (to a silent client)', async () => {
    const { ws, side } = await open('/push');
    await sleep(3 * IDLE_MS);
    expect(await settled(ws.closed)).toBe(false);
    expect(ws.messages.length).toBeGreaterThanOrEqual(5);
    ws.socket.destroy();
    expect(await settlesWithin(MARGIN_MS, side.closed)).toBeDefined();
  });
});
