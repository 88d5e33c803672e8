import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { plainClient, within } from './helpers/pipelined.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { jsonLineSink, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// HTTP/1.1 connections attacked at the seams between requests: a keep-alive connection's next request, and an Upgrade
// on the plain-HTTP port (which switches to nothing). The proxy in this process, a scripted raw origin.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const sockets = new Set<net.Socket>();
/** The request line of each request the origin received. */
const saw: string[] = [];
const lines: Record<string, unknown>[] = [];
const HOST = 'review.lab.test';
const ACME = '/.well-known/acme-challenge';
/** An origin's answer larger than a socket's write buffer: its writes meet backpressure. */
const BIG = 1 << 20;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = scriptedOrigin(
    {
      '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
      [`${ACME}/first`]: 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst',
      [`${ACME}/smuggled`]: 'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nSMUGGLED',
      [`${ACME}/warm`]: 'HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwarm',
      [`${ACME}/big`]: `HTTP/1.1 200 OK\r\ncontent-length: ${BIG}\r\n\r\n${'z'.repeat(BIG)}`,
      // Answers once the client that asked has left.
      [`${ACME}/slow`]: (socket) => void setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow'), 1000),
    },
    { sockets, saw },
  );
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [{ name: HOST, origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      httpRedirect: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 0,
    }),
    { log: createLogger('h1-review-test', 'info', jsonLineSink(lines)) },
  );
}, 60_000);
afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

const statuses = (text: string): string[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);

describe("a keep-alive connection's next request, refused by the parser", () => {
  // Node's parser refuses it (clientError). Our 400 or 431 was said only on a connection that had written nothing yet,
  // or behind answers still going out: once an earlier answer was whole, the connection was destroyed without a word,
  // and the client saw its request fail with no answer (a POST cannot be sent again).
  // Each carries its code in x-keyedge-error, as every answer of ours does: Node's own carried none.
  it.each([
    ['obs-fold', '400', 'KEYEDGE_HTTP_BAD_FRAMING', `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\nX-A: 1\r\n folded\r\n\r\n`],
    ['a head over the limit', '431', 'KEYEDGE_HTTP_HEADERS_TOO_LARGE', `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${'b'.repeat(40_000)}\r\n\r\n`],
    ['a bad chunk size', '400', 'KEYEDGE_HTTP_BAD_FRAMING', `POST /ok HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`],
  ])('%s: gets its %s (%s) after the earlier answer, then the connection closes', async (_name, status, code, bad) => {
    const client = await rawTls(proxy.ports[0]!, HOST, ca);
    client.socket.on('error', () => undefined);
    client.socket.write(`GET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await waitFor('the first answer', () => (client.text().endsWith('\r\n\r\nok') ? true : undefined));
    client.socket.write(bad);
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    const codes = [...client.text().matchAll(/\r\nx-keyedge-error: ([A-Z_]+)\r\n/gi)].map((m) => m[1]);
    expect({ statuses: statuses(client.text()), codes, closed }).toEqual({ statuses: ['200', status], codes: [code], closed: true });
  });
});

const upgradeHead = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`;

describe('an Upgrade on the plain-HTTP port', () => {
  // Node's server, with no 'upgrade' listener there, took it for a request but dropped the rest of the read it came in
  // (its parser had stopped for the switch), then parsed on from the next read. A request pipelined behind it was lost,
  // unanswered on a connection kept open; and bytes that came after as the body of that request were read as a
  // request of their own: a front proxy's view of the connection and ours part (request smuggling).
  it('is answered with Connection: close, and a request pipelined behind it is never processed', async () => {
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(`${upgradeHead('/x')}GET /y HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    const text = client.text();
    expect({ statuses: statuses(text), close: /\r\nconnection: close\r\n/i.test(text), closed }).toEqual({ statuses: ['308'], close: true, closed: true });
  });

  it('bytes sent after it as a body never reach an origin as a request', async () => {
    const before = saw.length;
    const client = await plainClient(proxy.httpPort!);
    const smuggled = `GET ${ACME}/smuggled HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
    // In one read: the Upgrade, then a request whose declared body is the next read.
    client.socket.write(`${upgradeHead(`${ACME}/first`)}POST /y HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${smuggled.length}\r\n\r\n`);
    await waitFor('the first answer', () => (client.text().includes('\r\n\r\nfirst') || client.socket.destroyed ? true : undefined));
    client.socket.write(smuggled);
    await within(client.closed, 3000);
    client.socket.destroy();
    expect({ origin: saw.slice(before), smuggled: client.text().includes('SMUGGLED') }).toEqual({ origin: [`GET ${ACME}/first HTTP/1.1`], smuggled: false });
    const line = await waitFor('its access line', () => lines.find((l) => l.access === true && l.path === `${ACME}/first`));
    expect(line.status).toBe(200);
  });

  it('a client that leaves before its answer is logged 499, as for a request', async () => {
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(upgradeHead(`${ACME}/slow`));
    await waitFor('the request at the origin', () => (saw.includes(`GET ${ACME}/slow HTTP/1.1`) ? true : undefined));
    client.socket.end();
    const line = await waitFor('its access line', () => lines.find((l) => l.access === true && l.path === `${ACME}/slow`));
    expect([line.status, line.code]).toEqual([499, 'KEYEDGE_HTTP_CLIENT_CLOSED']);
  });

  it('pipelined behind a request, its client gone before its turn: logged 499, once', async () => {
    const before = saw.length;
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(`GET ${ACME}/slow HTTP/1.1\r\nHost: ${HOST}\r\n\r\n${upgradeHead('/gone-behind')}`);
    await waitFor('the request at the origin', () => (saw.slice(before).includes(`GET ${ACME}/slow HTTP/1.1`) ? true : undefined));
    client.socket.resetAndDestroy();
    const line = await waitFor('its access line', () => lines.find((l) => l.access === true && l.path === '/gone-behind'));
    await sleep(300);
    expect({ status: line.status, code: line.code, lines: lines.filter((l) => l.access === true && l.path === '/gone-behind').length }).toEqual({
      status: 499,
      code: 'KEYEDGE_HTTP_CLIENT_CLOSED',
      lines: 1,
    });
  });

  it("an origin's answer larger than the socket's buffer goes out whole, and the connection closes after it", async () => {
    // The answer is written on the socket Node handed over, which no longer passes its 'drain' to an answer: one that
    // met backpressure waited for it for ever, the connection held open.
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(upgradeHead(`${ACME}/big`));
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    const text = client.text();
    expect({ statuses: statuses(text), body: text.length - text.indexOf('\r\n\r\n') - 4, closed }).toEqual({ statuses: ['200'], body: BIG, closed: true });
    const line = await waitFor('its access line', () => lines.find((l) => l.access === true && l.path === `${ACME}/big`));
    expect([line.status, line.aborted]).toEqual([200, undefined]);
  });

  it('with a body: 400, as on HTTPS, and nothing reaches an origin', async () => {
    const before = saw.length;
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(`POST ${ACME}/first HTTP/1.1\r\nHost: ${HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello`);
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    expect({
      status: statuses(client.text()),
      code: /\r\nx-keyedge-error: KEYEDGE_HTTP_UPGRADE_BODY\r\n/.test(client.text()),
      closed,
      origin: saw.slice(before),
    }).toEqual({
      status: ['400'],
      code: true,
      closed: true,
      origin: [],
    });
  });
});

describe('an unmet expectation', () => {
  // An ordinary request with `Expect: foo` gets 417 (Node's 'checkExpectation', handler.ts); an Upgrade, which Node
  // hands over before it looks at Expect, was answered as if the header were not there: on the plain-HTTP port an ACME
  // challenge forwarded, on HTTPS routed and sent to its origin (a WebSocket asked for).
  const upgrade = 'Connection: Upgrade\r\nUpgrade: websocket';
  it.each([
    ['the plain-HTTP port', 'an ordinary request', `${ACME}/first`, 'Connection: close'],
    ['the plain-HTTP port', 'an Upgrade', `${ACME}/first`, upgrade],
    ['HTTPS', 'an ordinary request', '/ok', 'Connection: close'],
    ['HTTPS', 'an Upgrade', '/ok', upgrade],
  ])('on %s, %s: 417 KEYEDGE_HTTP_EXPECTATION_FAILED, Connection: close, no tunnel, nothing reaches an origin', async (port, _kind, path, fields) => {
    const before = saw.length;
    const client = port === 'HTTPS' ? await rawTls(proxy.ports[0]!, HOST, ca) : await plainClient(proxy.httpPort!);
    client.socket.on('error', () => undefined);
    client.socket.write(`GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nExpect: foo\r\n${fields}\r\n\r\n`);
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    const text = client.text();
    expect({
      statuses: statuses(text),
      code: /\r\nx-keyedge-error: KEYEDGE_HTTP_EXPECTATION_FAILED\r\n/i.test(text),
      close: /\r\nconnection: close\r\n/i.test(text),
      closed,
      origin: saw.slice(before),
    }).toEqual({ statuses: ['417'], code: true, close: true, closed: true, origin: [] });
  });
});

describe('an HTTP/1.1 request without Host on the plain-HTTP port', () => {
  // Node's own 400 (requireHostHeader) said close, but its parser read on: the request behind it was handed over,
  // and on an origin connection already open it reached the origin, its answer never sent; the request without Host
  // had no access line. HTTPS refuses it in the handler since the same was found there.
  it('gets our 400 and its access line; a request pipelined behind it reaches no origin', async () => {
    // An origin connection kept open, so that a request handed over is written to it at once.
    const warm = await plainClient(proxy.httpPort!);
    warm.socket.write(`GET ${ACME}/warm HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await waitFor('the warm answer', () => (warm.text().endsWith('\r\n\r\nwarm') ? true : undefined));
    warm.socket.destroy();
    const before = saw.length;
    const client = await plainClient(proxy.httpPort!);
    client.socket.write(`POST /no-host HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET ${ACME}/smuggled HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    await sleep(300);
    const line = lines.find((l) => l.access === true && l.path === '/no-host');
    expect({ statuses: statuses(client.text()), closed, origin: saw.slice(before), line: [line?.status, line?.code] }).toEqual({
      statuses: ['400'],
      closed: true,
      origin: [],
      line: [400, 'KEYEDGE_HTTP_BAD_TARGET'],
    });
  });
});
