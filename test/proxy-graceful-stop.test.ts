import http from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nextAnswer, splitAll } from './helpers/fuzz-h1-parse.js';
import { sleep } from './helpers/basics.js';
import { plainClient, within } from './helpers/pipelined.js';
import { type ClusterProxy, startClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';

// `keyedge proxy` (a primary and its worker) stopped by SIGTERM with a long grace period (30 s) and long client
// deadlines (25 s): a connection the stop leaves open holds the worker, and so the process, that long. Every bound
// below is far from both: the stop is done in a few seconds when each connection is closed as it should be.
const GRACE_MS = 30_000;
const EXIT_BOUND_MS = 12_000;
const HOST = 'stop.lab.test';
const TOKEN = 'stop-token_1';

let lab: KeylessLab;
let ca: string;
let chain: string;
/** The origin: answers at once, except a path with "held" in it, answered when the test releases it. */
let origin: http.Server;
const originSaw: string[] = [];
const held = new Map<string, () => void>();

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  chain = (await lab.certificate('stop', lab.keys.ec, [HOST])).file;
  origin = http.createServer((req, res) => {
    const path = req.url ?? '';
    originSaw.push(path);
    if (path.includes('held')) held.set(path, () => res.end('held'));
    else req.resume().on('end', () => res.end('ok'));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  origin?.closeAllConnections();
  await new Promise((resolve) => origin?.close(resolve));
  await lab?.close();
});

interface Stopping {
  readonly proxy: ClusterProxy;
  readonly httpPort: number;
}

async function startProxy(name: string): Promise<Stopping> {
  const httpPort = await freePort();
  const originPort = (origin.address() as net.AddressInfo).port;
  const proxy = await startClusterProxy(lab, name, (p) => ({
    stateDir: join(lab.dir, name, 'state'),
    workers: 1,
    keyserver: { socket: lab.socket },
    listen: [{ host: '127.0.0.1', port: p.port, http2: true }],
    httpRedirect: { host: '127.0.0.1', port: httpPort },
    certificates: [{ name: 'stop', chain }],
    sni: { default: 'stop' },
    domains: [{ name: HOST, origin: `http://127.0.0.1:${originPort}` }],
    admin: { host: '127.0.0.1', port: p.adminPort, tokenFile: p.tokenFile },
    log: { level: 'warn' },
    shutdownGraceMs: GRACE_MS,
    limits: { headerTimeoutMs: 25_000, keepAliveTimeoutMs: 25_000, handshakeTimeoutMs: 25_000 },
  }));
  return { proxy, httpPort };
}

const answersIn = (text: string) => splitAll(text, (rest) => nextAnswer(rest, () => false, false)).messages;
const acme = (path: string): string => `GET /.well-known/acme-challenge/${path} HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`;

// Two chains side by side (describe.concurrent), one proxy at a time in each: every case has its own proxy (one
// worker, its own state directory) and origin paths of its own, and each stop is watched on its own proxy alone.
describe.concurrent('the plain-HTTP port, and connections still in their handshake', () => {
  describe.sequential('keyedge proxy stopping on SIGTERM, its plain-HTTP port', () => {
    it('answers the request in progress with `Connection: close`, then closes the connection, whose client would have sent more', async () => {
      const { proxy, httpPort } = await startProxy('stop-plain-busy');
      // A TLS connection busy too: before, the worker waited for it, and the plain-HTTP port's connection was served on.
      const secure = await rawTls(proxy.port, HOST, ca);
      secure.socket.write(`GET /held-tls HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      const plain = await plainClient(httpPort);
      plain.socket.write(acme(`held-plain-${TOKEN}`));
      await waitFor('both at the origin', () => (held.has('/held-tls') && held.has(`/.well-known/acme-challenge/held-plain-${TOKEN}`) ? true : undefined));
      const started = Date.now();
      const stopped = proxy.stop();
      await sleep(500);
      held.get(`/.well-known/acme-challenge/held-plain-${TOKEN}`)?.();
      // Closed by the proxy after its answer, before the client sends anything more.
      const plainClosed = await within(plain.closed, 5000);
      if (!plainClosed) plain.socket.write(acme('next'));
      held.get('/held-tls')?.();
      const secureClosed = await within(secure.closed, 5000);
      await stopped;
      plain.socket.destroy();
      expect(answersIn(plain.text()).map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([['HTTP/1.1 200 OK', 'held', ['close']]]);
      expect([plainClosed, secureClosed]).toEqual([true, true]);
      expect(answersIn(secure.text()).map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([['HTTP/1.1 200 OK', 'held', ['close']]]);
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);

    it('finishes an ACME answer on its way with no TLS connection open, and the answer queued behind it, then closes; closes an idle connection at once', async () => {
      const { proxy, httpPort } = await startProxy('stop-plain-inflight');
      const busy = await plainClient(httpPort);
      // A redirect pipelined behind it: its answer, queued, is the connection's last.
      busy.socket.write(`${acme(`held-alone-${TOKEN}`)}GET /behind HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      const idle = await plainClient(httpPort);
      idle.socket.write(`GET /page HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      await waitFor('the redirect', () => (idle.text().includes('\r\n\r\n') ? true : undefined));
      await waitFor('the challenge at the origin', () => (held.has(`/.well-known/acme-challenge/held-alone-${TOKEN}`) ? true : undefined));
      const started = Date.now();
      const stopped = proxy.stop();
      const idleClosed = await within(idle.closed, 3000);
      await sleep(500);
      held.get(`/.well-known/acme-challenge/held-alone-${TOKEN}`)?.();
      const busyClosed = await within(busy.closed, 5000);
      await stopped;
      expect([idleClosed, busyClosed]).toEqual([true, true]);
      expect(answersIn(idle.text()).map((a) => a.start)).toEqual(['HTTP/1.1 308 Permanent Redirect']);
      // Before, the worker did not wait for the plain-HTTP port: with no TLS connection open it cut this answer at once.
      expect(answersIn(busy.text()).map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([
        ['HTTP/1.1 200 OK', 'held', ['keep-alive']],
        ['HTTP/1.1 308 Permanent Redirect', '', ['close']],
      ]);
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);
  });

  describe.sequential('keyedge proxy stopping on SIGTERM, connections still in their handshake when it begins', () => {
    it('closes promptly one whose handshake completes and sends nothing (HTTP/1.1: closed; h2: GOAWAY, then closed), and one that never begins it; answers one that sends a request', async () => {
      const { proxy } = await startProxy('stop-late-handshakes');
      // An idle keep-alive connection: its close says the worker's stop has begun.
      const marker = await rawTls(proxy.port, HOST, ca);
      marker.socket.write(`GET /first HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      await waitFor('the first answer', () => (marker.text().endsWith('ok') ? true : undefined));
      // Accepted before the stop, their handshakes not begun: still in their handshake when the listener stops accepting.
      const tcp = await Promise.all([0, 1, 2, 3].map(() => plainClient(proxy.port)));
      for (const { socket } of tcp) socket.removeAllListeners('data');
      await sleep(300);
      const started = Date.now();
      const stopped = proxy.stop();
      expect(await within(marker.closed, 5000)).toBe(true);
      const secure = (socket: net.Socket, alpn: string): Promise<tls.TLSSocket> =>
        new Promise((resolve, reject) => {
          const secured = tls.connect({ socket, servername: HOST, ca, ALPNProtocols: [alpn] }, () => resolve(secured));
          secured.once('error', reject);
        });
      const closedWithin = (socket: net.Socket | http2.ClientHttp2Session): Promise<boolean> =>
        within(new Promise((resolve) => socket.once('close', resolve)), 8000);
      // Never begins its handshake.
      const neverClosed = within(tcp[3]!.closed, 8000);
      // All three handshakes at once, each watched from the moment it is secured: HTTP/1.1 silent; HTTP/1.1 with a request
      // at once (answered, with `Connection: close`); h2 silent (GOAWAY, then closed).
      let answer = '';
      let goaway = false;
      const [silentClosed, askingClosed, h2Closed] = await Promise.all([
        secure(tcp[0]!.socket, 'http/1.1').then((socket) => {
          socket.on('error', () => undefined).resume();
          return closedWithin(socket);
        }),
        secure(tcp[1]!.socket, 'http/1.1').then((socket) => {
          socket.on('error', () => undefined).on('data', (chunk: Buffer) => void (answer += chunk.toString('latin1')));
          socket.write(`GET /late HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
          return closedWithin(socket);
        }),
        secure(tcp[2]!.socket, 'h2').then((socket) => {
          const session = http2.connect(`https://${HOST}`, { createConnection: () => socket });
          session.on('error', () => undefined);
          session.once('goaway', () => void (goaway = true));
          return closedWithin(session);
        }),
      ]);
      const closed = { never: await neverClosed, silent: silentClosed, asking: askingClosed, h2: h2Closed };
      expect(closed).toEqual({ never: true, silent: true, asking: true, h2: true });
      expect(goaway).toBe(true);
      expect(answersIn(answer).map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([['HTTP/1.1 200 OK', 'ok', ['close']]]);
      await stopped;
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);
  });
});

describe.concurrent('a request head still arriving', () => {
  describe.sequential('keyedge proxy stopping on SIGTERM, a request head still arriving when it begins', () => {
    it('answers it, with `Connection: close`, on the plain-HTTP port and on TLS, as nginx does; an idle one beside them is closed at once', async () => {
      const { proxy, httpPort } = await startProxy('stop-mid-head');
      const plain = await plainClient(httpPort);
      const secure = await rawTls(proxy.port, HOST, ca);
      secure.socket.write(`GET /first HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      await waitFor('the first answer', () => (secure.text().endsWith('ok') ? true : undefined));
      // Part of each head: the request line and a header, not the blank line that ends it.
      plain.socket.write(`GET /page HTTP/1.1\r\nhost: ${HOST}\r\n`);
      secure.socket.write(`GET /second HTTP/1.1\r\nhost: ${HOST}\r\n`);
      const idle = await plainClient(httpPort);
      await sleep(300);
      const started = Date.now();
      const stopped = proxy.stop();
      const idleClosed = await within(idle.closed, 3000);
      plain.socket.write('\r\n');
      secure.socket.write('\r\n');
      const closed = { idle: idleClosed, plain: await within(plain.closed, 5000), secure: await within(secure.closed, 5000) };
      await stopped;
      plain.socket.destroy();
      secure.socket.destroy();
      expect(closed).toEqual({ idle: true, plain: true, secure: true });
      // Before, each was closed as an idle connection: the request the client was sending was dropped, no answer to it.
      expect(answersIn(plain.text()).map((a) => [a.start, a.headers.get('connection')])).toEqual([['HTTP/1.1 308 Permanent Redirect', ['close']]]);
      expect(answersIn(secure.text()).map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([
        ['HTTP/1.1 200 OK', 'ok', ['keep-alive']],
        ['HTTP/1.1 200 OK', 'ok', ['close']],
      ]);
      expect(Date.now() - started).toBeLessThan(EXIT_BOUND_MS);
    }, 60_000);

    it('answers it on a connection whose handshake completes during the stop, its head still arriving after 1 s', async () => {
      const { proxy } = await startProxy('stop-late-slow-head');
      const marker = await rawTls(proxy.port, HOST, ca);
      marker.socket.write(`GET /first HTTP/1.1\r\nhost: ${HOST}\r\n\r\n`);
      await waitFor('the first answer', () => (marker.text().endsWith('ok') ? true : undefined));
      const tcp = await plainClient(proxy.port);
      tcp.socket.removeAllListeners('data');
      await sleep(300);
      const stopped = proxy.stop();
      expect(await within(marker.closed, 5000)).toBe(true);
      const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const secured = tls.connect({ socket: tcp.socket, servername: HOST, ca, ALPNProtocols: ['http/1.1'] }, () => resolve(secured));
        secured.once('error', reject);
      });
      let answer = '';
      socket.on('error', () => undefined).on('data', (chunk: Buffer) => void (answer += chunk.toString('latin1')));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.write(`GET /late-slow HTTP/1.1\r\nhost: ${HOST}\r\n`);
      // Past the second a connection that comes during the stop has for its first request.
      await sleep(1500);
      socket.write('\r\n');
      const closedInTime = await within(closed, 5000);
      await stopped;
      socket.destroy();
      expect(closedInTime).toBe(true);
      // Before, it was closed as an idle one at 1 s, the request it was sending dropped.
      expect(answersIn(answer).map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([['HTTP/1.1 200 OK', 'ok', ['close']]]);
    }, 60_000);
  });
});
