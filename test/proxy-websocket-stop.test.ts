import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';
import { acceptFor, encodeFrame, readFrames, TEXT } from './helpers/websocket.js';

// WebSockets and `keyedge proxy`'s graceful stop (SIGTERM), as nginx's `quit`: tunnels already open are kept until
// the grace period ends, then cut; no new one is opened once the stop has begun. The grace is long (30 s) where a
// tunnel wrongly opened would hold the worker that long; every bound is far from it. Where the grace itself is
// watched, it is short (5 s) and only its order against the tunnel's close is asserted.
const LONG_GRACE_MS = 30_000;
const SHORT_GRACE_MS = 5_000;
const EXIT_BOUND_MS = 12_000;
const HOST = 'ws-stop.lab.test';

let lab: KeylessLab;
let ca: string;
let chain: string;
/** A WebSocket origin: echoes text frames; a path with "held" in it gets its 101 when the test releases it. */
let origin: http.Server;
const upgradesSeen: string[] = [];
const held = new Map<string, () => void>();

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  chain = (await lab.certificate('ws-stop', lab.keys.ec, [HOST])).file;
  // Ordinary requests: /held-get is answered when the test releases it, the rest at once.
  origin = http.createServer((req, res) => {
    const answer = (): void => void res.writeHead(200, { 'content-length': 2 }).end('ok');
    if (req.url === '/held-get') held.set('/held-get', answer);
    else answer();
  });
  origin.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = req.url ?? '';
    upgradesSeen.push(path);
    socket.on('error', () => undefined);
    socket.once('end', () => socket.end());
    const open = (): void => {
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptFor(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
      );
      readFrames(socket, head, (frame) => socket.write(encodeFrame(TEXT, `echo ${frame.payload.toString()}`, false)));
    };
    if (path.includes('held')) held.set(path, open);
    else open();
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  origin?.closeAllConnections();
  await new Promise((resolve) => origin?.close(resolve));
  await lab?.close();
});

async function startProxy(name: string, graceMs: number): Promise<ClusterProxy> {
  const originPort = (origin.address() as net.AddressInfo).port;
  return startClusterProxy(lab, name, (p) => ({
    stateDir: join(lab.dir, name, 'state'),
    workers: 1,
    keyserver: { socket: lab.socket },
    listen: [{ host: '127.0.0.1', port: p.port }],
    certificates: [{ name: 'ws-stop', chain }],
    sni: { default: 'ws-stop' },
    domains: [{ name: HOST, origin: `http://127.0.0.1:${originPort}` }],
    admin: { host: '127.0.0.1', port: p.adminPort, tokenFile: p.tokenFile },
    log: { level: 'warn' },
    shutdownGraceMs: graceMs,
    limits: { headerTimeoutMs: 25_000, keepAliveTimeoutMs: 25_000, handshakeTimeoutMs: 25_000 },
  }));
}

/** A WebSocket handshake's request, without the blank line that ends its head. */
const upgradeHead = (path: string): string =>
  `GET ${path} HTTP/1.1\r\nhost: ${HOST}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n`;

/** The status line and the Connection field of the first answer in `text`. */
function firstAnswer(text: string): { status: string; connection: string | undefined } {
  const head = text.split('\r\n\r\n')[0] ?? '';
  const [status = '', ...fields] = head.split('\r\n');
  const connection = fields
    .find((f) => f.toLowerCase().startsWith('connection:'))
    ?.slice('connection:'.length)
    .trim()
    .toLowerCase();
  return { status, connection };
}

/** Resolves with true once `closed` resolves, with false after `ms`. */
const within = (closed: Promise<unknown>, ms: number): Promise<boolean> => Promise.race([closed.then(() => true), sleep(ms).then(() => false)]);

/** An idle keep-alive connection: its close says the worker's stop has begun. */
async function marker(proxy: ClusterProxy): Promise<Awaited<ReturnType<typeof rawTls>>> {
  const socket = await rawTls(proxy.port, HOST, ca);
  socket.socket.write(`GET /marker HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
  await waitFor('the marker answer', () => (socket.text().endsWith('ok') ? true : undefined));
  return socket;
}

/** An open WebSocket tunnel through the proxy. */
async function tunnel(proxy: ClusterProxy): Promise<Awaited<ReturnType<typeof rawTls>>> {
  const socket = await rawTls(proxy.port, HOST, ca);
  socket.socket.write(`${upgradeHead('/open')}\r\n`);
  await waitFor('the 101', () => (socket.text().includes('\r\n\r\n') ? true : undefined));
  return socket;
}

// Two chains side by side (describe.concurrent), one proxy at a time in each: every case has its own proxy (one
// worker, its own state directory) and origin paths of its own, and each stop is watched on its own proxy alone.
describe.concurrent('a WebSocket once the stop has begun', () => {
  describe.sequential('keyedge proxy stopping on SIGTERM, a WebSocket asked for once the stop has begun', () => {
    it('is refused with `Connection: close` when its request head was still arriving, never opened; the stop does not wait for it', async () => {
      const proxy = await startProxy('ws-stop-mid-head', LONG_GRACE_MS);
      const client = await rawTls(proxy.port, HOST, ca);
      // A request on the connection first: the Upgrade comes on a kept-alive connection.
      client.socket.write(`GET /first HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      await waitFor('the first answer', () => (client.text().includes('\r\n\r\n') ? true : undefined));
      const before = client.text().length;
      const mark = await marker(proxy);
      client.socket.write(upgradeHead('/late-mid-head'));
      await sleep(300);
      const started = Date.now();
      const stopped = proxy.stop();
      // The worker's stop has begun once the idle connection is closed.
      expect(await within(mark.closed, 5000)).toBe(true);
      client.socket.write('\r\n');
      const closed = await within(client.closed, 5000);
      await stopped;
      client.socket.destroy();
      const answer = firstAnswer(client.text().slice(before));
      // Before, the origin switched and the tunnel held the worker until the grace period's end.
      expect({ closed, status: answer.status, connection: answer.connection, opened: upgradesSeen.includes('/late-mid-head') }).toEqual({
        closed: true,
        status: 'HTTP/1.1 503 Service Unavailable',
        connection: 'close',
        opened: false,
      });
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);

    it('is refused as the first request of a connection whose handshake completes during the stop', async () => {
      const proxy = await startProxy('ws-stop-late-handshake', LONG_GRACE_MS);
      const mark = await rawTls(proxy.port, HOST, ca);
      mark.socket.write(`GET /first HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      await waitFor('the first answer', () => (mark.text().includes('\r\n\r\n') ? true : undefined));
      // Accepted before the stop, its handshake not begun.
      const tcp = net.connect(proxy.port, '127.0.0.1');
      tcp.on('error', () => undefined);
      await new Promise((resolve) => tcp.once('connect', resolve));
      await sleep(300);
      const started = Date.now();
      const stopped = proxy.stop();
      expect(await within(mark.closed, 5000)).toBe(true);
      const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const secured = tls.connect({ socket: tcp, servername: HOST, ca, ALPNProtocols: ['http/1.1'] }, () => resolve(secured));
        secured.once('error', reject);
      });
      let text = '';
      socket.on('error', () => undefined).on('data', (chunk: Buffer) => void (text += chunk.toString('latin1')));
      const closed = within(new Promise((resolve) => socket.once('close', resolve)), 5000);
      socket.write(`${upgradeHead('/late-handshake')}\r\n`);
      const closedInTime = await closed;
      await stopped;
      socket.destroy();
      const answer = firstAnswer(text);
      expect({ closed: closedInTime, status: answer.status, connection: answer.connection, opened: upgradesSeen.includes('/late-handshake') }).toEqual({
        closed: true,
        status: 'HTTP/1.1 503 Service Unavailable',
        connection: 'close',
        opened: false,
      });
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);
  });
});

describe.concurrent('a WebSocket behind an answer, and those under way', () => {
  describe.sequential('keyedge proxy stopping on SIGTERM, a WebSocket pipelined behind an answer in progress', () => {
    it('is not opened: the answer goes out with `Connection: close`, then the connection closes', async () => {
      const proxy = await startProxy('ws-stop-pipelined', LONG_GRACE_MS);
      const mark = await marker(proxy);
      const client = await rawTls(proxy.port, HOST, ca);
      client.socket.write(`GET /held-get HTTP/1.1\r\nhost: ${HOST}\r\n\r\n${upgradeHead('/behind')}\r\n`);
      await waitFor('the held request at the origin', () => (held.has('/held-get') ? true : undefined));
      await sleep(300);
      const started = Date.now();
      const stopped = proxy.stop();
      expect(await within(mark.closed, 5000)).toBe(true);
      held.get('/held-get')?.();
      const closed = await within(client.closed, 5000);
      await stopped;
      client.socket.destroy();
      expect({
        closed,
        answer: firstAnswer(client.text()),
        answers: client.text().split('HTTP/1.1 ').length - 1,
        opened: upgradesSeen.includes('/behind'),
      }).toEqual({
        closed: true,
        answer: { status: 'HTTP/1.1 200 OK', connection: 'close' },
        answers: 1,
        opened: false,
      });
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);
  });

  describe.sequential('keyedge proxy stopping on SIGTERM, WebSockets under way', () => {
    it("keeps an open tunnel and one whose origin's 101 was on its way until the grace period ends, then closes both", async () => {
      const proxy = await startProxy('ws-stop-under-way', SHORT_GRACE_MS);
      const open = await tunnel(proxy);
      const mark = await marker(proxy);
      const inFlight = await rawTls(proxy.port, HOST, ca);
      inFlight.socket.write(`${upgradeHead('/held-101')}\r\n`);
      await waitFor('the upgrade at the origin', () => (held.has('/held-101') ? true : undefined));
      const stopped = proxy.stop();
      let stopDone = false;
      void stopped.then(() => void (stopDone = true));
      // The origin's 101 comes once the worker's stop has begun.
      expect(await within(mark.closed, 5000)).toBe(true);
      held.get('/held-101')?.();
      await waitFor('the 101', () => (inFlight.text().includes('\r\n\r\n') ? true : undefined));
      // Both carry messages during the stop.
      const echoed = (client: Awaited<ReturnType<typeof rawTls>>, word: string): Promise<boolean> => {
        client.socket.write(encodeFrame(TEXT, word, true));
        return waitFor(`the echo of ${word}`, () => (client.text().includes(`echo ${word}`) ? true : undefined));
      };
      expect(await echoed(open, 'a')).toBe(true);
      expect(await echoed(inFlight, 'b')).toBe(true);
      const closed = await Promise.all([within(open.closed, 10_000), within(inFlight.closed, 10_000)]);
      const closedBeforeExit = !stopDone;
      await stopped;
      expect({ status: firstAnswer(inFlight.text()).status, closed, closedBeforeExit }).toEqual({
        status: 'HTTP/1.1 101 Switching Protocols',
        closed: [true, true],
        closedBeforeExit: true,
      });
    }, 60_000);
  });
});
