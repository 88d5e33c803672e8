import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/keyserver.js';
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

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = scriptedOrigin(
    {
      '/ok': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
      [`${ACME}/first`]: 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst',
      [`${ACME}/smuggled`]: 'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nSMUGGLED',
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

/** Resolves with true once `closed` resolves, with false after `ms`. */
const within = (closed: Promise<unknown>, ms: number): Promise<boolean> => Promise.race([closed.then(() => true), sleep(ms).then(() => false)]);
const statuses = (text: string): string[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);

describe("a keep-alive connection's next request, refused by the parser", () => {
  // Node's parser refuses it (clientError). Our 400 or 431 was said only on a connection that had written nothing yet,
  // or behind answers still going out: once an earlier answer was whole, the connection was destroyed without a word,
  // and the client saw its request fail with no answer (a POST cannot be sent again).
  it.each([
    ['obs-fold', `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\nX-A: 1\r\n folded\r\n\r\n`, '400'],
    ['a head over the limit', `GET /ok HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${'b'.repeat(40_000)}\r\n\r\n`, '431'],
    ['a bad chunk size', `POST /ok HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`, '400'],
  ])('%s: gets its %s after the earlier answer, then the connection closes', async (_name, bad, status) => {
    const client = await rawTls(proxy.ports[0]!, HOST, ca);
    client.socket.on('error', () => undefined);
    client.socket.write(`GET /ok HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await waitFor('the first answer', () => (client.text().endsWith('\r\n\r\nok') ? true : undefined));
    client.socket.write(bad);
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    expect({ statuses: statuses(client.text()), closed }).toEqual({ statuses: ['200', status], closed: true });
  });
});
