import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { plainClient } from './helpers/pipelined.js';
import { frame, getHeaders, headerFrames, hpackLiteral, RawH2, rstStream } from './helpers/h2.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { jsonLineSink, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// Access lines (and their counts) that must say what the client got: a request whose body went bad after part of it
// was forwarded, an HTTP/2 refusal its client reset before it went out, a pipelined request whose client left behind
// a CONNECT on the plain-HTTP port. The proxy in this process, a scripted raw origin.
let lab: KeylessLab;
let proxy: RunningWorker;
let metrics: ProxyMetrics;
let ca: string;
let origin: net.Server;
const sockets = new Set<net.Socket>();
/** The request line of each request the origin received. */
const saw: string[] = [];
const lines: Record<string, unknown>[] = [];
const HOST = 'lines.lab.test';
const ACME = '/.well-known/acme-challenge';
/** The origin connection each slow request came on, by its token. */
const slowAt = new Map<string, net.Socket>();
/** Answers once the client that asked has left (if its origin request was not abandoned meanwhile). */
function slow(token: string, socket: net.Socket): void {
  slowAt.set(token, socket);
  setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow'), 1500);
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = scriptedOrigin(
    {
      '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
      // Never answers: the request body is what ends the exchange.
      '/held': () => undefined,
      '/held-second': () => undefined,
      '/held-continue': () => undefined,
      '/held-h2': () => undefined,
      '/held-upgrade': () => undefined,
      [`${ACME}/slow-connect`]: (socket) => slow('slow-connect', socket),
      [`${ACME}/slow-upgrade`]: (socket) => slow('slow-upgrade', socket),
    },
    { sockets, saw },
  );
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  metrics = new ProxyMetrics(() => proxy.keySource.stats(), new Registry());
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [{ name: HOST, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      httpRedirect: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 0,
    }),
    { log: createLogger('access-lines-test', 'info', jsonLineSink(lines)), metrics },
  );
}, 60_000);
afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

const statuses = (text: string): string[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);
const accessLine = (path: string): Promise<Record<string, unknown>> =>
  waitFor(`the access line of ${path}`, () => lines.find((l) => l.access === true && l.path === path));
const requestsCount = async (status: string, code: string): Promise<number> => {
  const text = await metrics.registry.metrics();
  const re = new RegExp(`keyedge_proxy_http_requests_total\\{[^}]*status_class="${status}"[^}]*code="${code}"[^}]*protocol="http/1.1"[^}]*\\} (\\d+)`);
  return Number(re.exec(text)?.[1] ?? 0);
};

describe('an HTTP/1.1 request body that turns bad after part of it was forwarded', () => {
  // Node's parser refuses the rest (clientError) and the client gets our 400 (client-error.ts); the request's own
  // answer never started, and its line said 499 KEYEDGE_HTTP_CLIENT_CLOSED, as if the client had left.
  it.each([
    ['the first request of its connection', '/held', false],
    ['a keep-alive connection’s second request', '/held-second', true],
    // A final status may follow 100 (Continue) (RFC 9110 §15.2.1): the 100 is no answer begun.
    ['a request that was sent 100 Continue', '/held-continue', false],
  ])('%s: the client gets 400, and its line and count say 400 KEYEDGE_HTTP_BAD_FRAMING', async (_name, path, second) => {
    const continued = path === '/held-continue';
    const before = await requestsCount('4xx', 'KEYEDGE_HTTP_BAD_FRAMING');
    const client = await rawTls(proxy.ports[0]!, HOST, ca);
    client.socket.on('error', () => undefined);
    if (second) {
      client.socket.write(`GET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
      await waitFor('the first answer', () => (client.text().endsWith('\r\n\r\nok') ? true : undefined));
    }
    // A first chunk past what is read whole before forwarding (64 KiB): the request and that chunk reach the origin.
    const first = 'a'.repeat(70_000);
    const head = `POST ${path} HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n${continued ? 'Expect: 100-continue\r\n' : ''}\r\n`;
    client.socket.write(head);
    if (continued) await waitFor('the 100', () => (client.text().includes('HTTP/1.1 100 Continue') ? true : undefined));
    client.socket.write(`${first.length.toString(16)}\r\n${first}\r\n`);
    await waitFor('the request at the origin', () => (saw.includes(`POST ${path} HTTP/1.1`) ? true : undefined));
    client.socket.write('zz\r\n');
    await client.closed;
    const line = await accessLine(path);
    expect({ statuses: statuses(client.text()), line: [line.status, line.code, line.aborted] }).toEqual({
      statuses: second ? ['200', '400'] : continued ? ['100', '400'] : ['400'],
      line: [400, 'KEYEDGE_HTTP_BAD_FRAMING', undefined],
    });
    expect(await requestsCount('4xx', 'KEYEDGE_HTTP_BAD_FRAMING')).toBe(before + 1);
  });
});

describe('an HTTP/2 request refused by us whose client reset it in the same packet', () => {
  // Our 413 was handed to nghttp2, which dropped it with the stream: no HEADERS went out, yet the line said 413 with
  // its body's bytes, aborted.
  it('is logged as the client leaving: 499 KEYEDGE_HTTP_CLIENT_CLOSED, aborted, no bytes', async () => {
    const client = new RawH2(proxy.ports[0]!, ca, HOST);
    await client.secure;
    client.preface();
    const ids = [1, 3, 5];
    for (const id of ids) {
      const block = Buffer.concat([
        Buffer.from([0x83, 0x87]),
        hpackLiteral(':path', `/too-large-${id}`),
        hpackLiteral(':authority', HOST),
        hpackLiteral('content-length', '999999999999'),
      ]);
      // CANCEL (0x8): one write, one TLS record.
      client.write(Buffer.concat([headerFrames(id, block, false), rstStream(id, 0x8)]));
      await sleep(50);
    }
    const logged = await Promise.all(ids.map((id) => accessLine(`/too-large-${id}`)));
    client.write(frame(0x7, 0, 0, Buffer.alloc(8)));
    client.tls.destroy();
    // Whatever the order, a line may say 413 only for a stream whose HEADERS the client got.
    const said = logged.map((l, i) => ({ status: l.status, code: l.code, aborted: l.aborted, bytes: l.bytes, answered: client.answered.has(ids[i]!) }));
    for (const line of said) {
      if (line.answered) expect(line).toMatchObject({ status: 413, code: 'KEYEDGE_HTTP_BODY_TOO_LARGE' });
      else expect(line).toEqual({ status: 499, code: 'KEYEDGE_HTTP_CLIENT_CLOSED', aborted: true, bytes: 0, answered: false });
    }
  });
});

describe('an HTTP/2 stream its client resets while the origin has not answered', () => {
  // HTTP/1.1's line for a client gone before any answer says `bytes: 0` (what went out); HTTP/2's left `bytes` out.
  it('is logged 499 KEYEDGE_HTTP_CLIENT_CLOSED, aborted, with the bytes sent: 0', async () => {
    const client = new RawH2(proxy.ports[0]!, ca, HOST);
    await client.secure;
    client.preface();
    client.write(getHeaders(1, HOST, '/held-h2'));
    await waitFor('the request at the origin', () => (saw.includes('GET /held-h2 HTTP/1.1') ? true : undefined));
    client.write(rstStream(1, 0x8));
    const line = await accessLine('/held-h2');
    client.tls.destroy();
    expect({ protocol: line.protocol, status: line.status, code: line.code, aborted: line.aborted, bytes: line.bytes }).toEqual({
      protocol: 'h2',
      status: 499,
      code: 'KEYEDGE_HTTP_CLIENT_CLOSED',
      aborted: true,
      bytes: 0,
    });
  });
});

describe('a client that leaves before the origin answers its Upgrade on HTTPS', () => {
  // As every other request whose client left before any answer (a request's, HTTP/2's, the plain-HTTP port's Upgrade
  // and CONNECT): the line and the count said 499 with no code, `code="none"`, which read as no failure at all.
  it('is logged and counted 499 KEYEDGE_HTTP_CLIENT_CLOSED, aborted, as a request is', async () => {
    const before = await requestsCount('4xx', 'KEYEDGE_HTTP_CLIENT_CLOSED');
    const client = await rawTls(proxy.ports[0]!, HOST, ca);
    client.socket.write(`GET /held-upgrade HTTP/1.1\r\nHost: ${HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    await waitFor('the upgrade at the origin', () => (saw.includes('GET /held-upgrade HTTP/1.1') ? true : undefined));
    client.socket.destroy();
    const line = await accessLine('/held-upgrade');
    expect([line.status, line.code, line.aborted]).toEqual([499, 'KEYEDGE_HTTP_CLIENT_CLOSED', true]);
    expect(await requestsCount('4xx', 'KEYEDGE_HTTP_CLIENT_CLOSED')).toBe(before + 1);
  });
});

describe('a client that leaves behind a pipelined CONNECT or Upgrade on the plain-HTTP port', () => {
  // The socket Node hands over with the CONNECT (or Upgrade) waits, paused, for the answers before it: a plain socket
  // paused reads nothing, so the client's FIN went unseen, the earlier request (an ACME challenge at its origin) was
  // logged 200 when its answer came, written to a client that had left, and its origin request was not abandoned.
  it.each([
    ['CONNECT', 'slow-connect', `${HOST}:443`, `CONNECT ${HOST}:443 HTTP/1.1\r\nHost: ${HOST}:443\r\n\r\n`],
    ['Upgrade', 'slow-upgrade', '/behind', `GET /behind HTTP/1.1\r\nHost: ${HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`],
  ])('%s: the request before it and itself are logged 499, the origin request abandoned', async (_name, token, behindPath, behind) => {
    const path = `${ACME}/${token}`;
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(`GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n${behind}`);
    await waitFor('the request at the origin', () => (saw.includes(`GET ${path} HTTP/1.1`) ? true : undefined));
    client.socket.end();
    const line = await accessLine(path);
    client.socket.destroy();
    expect([line.status, line.code, line.aborted]).toEqual([499, 'KEYEDGE_HTTP_CLIENT_CLOSED', true]);
    // Nor is the CONNECT's refusal, never sent, logged as its 400.
    const own = await accessLine(behindPath);
    expect([own.status, own.code, own.aborted]).toEqual([499, 'KEYEDGE_HTTP_CLIENT_CLOSED', true]);
    // Abandoned: the origin connection that carried it is closed, not kept for its answer.
    await waitFor('the origin connection closed', () => (slowAt.get(token)?.destroyed === true ? true : undefined));
  });
});
