import { readFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// Requests Node's parser refuses (RFC 9112 framing and smuggling shapes, a
// head over the limit), against `keyedge proxy` with two workers: each gets
// its status line, whole, before the connection closes (never a bare reset),
// and nothing written after the bad request reaches the origin as a request.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let origin: http.Server;
const originSaw: string[] = [];

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: f.lab.test\r\n\r\n';
const CASES: readonly (readonly [string, string, number])[] = [
  ['CL.TE', 'POST / HTTP/1.1\r\nHost: f.lab.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
  ['two Content-Lengths', 'POST / HTTP/1.1\r\nHost: f.lab.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc', 400],
  ['obs-fold', 'GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-A: 1\r\n folded\r\n\r\n', 400],
  ['bare LF in a header', 'GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-A: 1\nX-B: 2\r\n\r\n', 400],
  ['a bad chunk size', 'POST / HTTP/1.1\r\nHost: f.lab.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', 400],
  ['a NUL in a header', 'GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-A: a\0b\r\n\r\n', 400],
  ['a head over the limit', `GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
];

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  origin = http.createServer((req, res) => {
    originSaw.push(`${req.method} ${req.url}`);
    req.resume();
    req.once('end', () => res.end('ok'));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const originPort = (origin.address() as net.AddressInfo).port;
  const wildcard = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  proxy = await startClusterProxy(lab, 'framing', (p) =>
    storeProxyConfig(lab, p, {
      certificates: [{ name: 'wild', chain: wildcard.file }],
      domains: [{ name: 'f.lab.test', origin: `http://127.0.0.1:${originPort}` }],
    }),
  );
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  origin?.close();
  await lab?.close();
});

/** Writes `raw` (then a smuggled request, unless told not to) on one TLS connection; resolves with all it read until the proxy closed it. */
function exchange(raw: string, smuggle = true): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: 'f.lab.test', ca }, () => {
      socket.write(raw);
      if (smuggle) socket.write(SMUGGLED);
    });
    let read = '';
    socket.on('data', (chunk: Buffer) => (read += chunk.toString('latin1')));
    socket.on('error', () => undefined);
    socket.once('close', () => resolve(read));
    setTimeout(() => reject(new Error(`no close within 15 s; read: ${read.slice(0, 200)}`)), 15_000).unref();
  });
}

describe('requests the parser refuses', () => {
  it.each(CASES)('%s: the status line arrives whole, the connection closes, nothing after it is forwarded', async (_name, raw, status) => {
    for (let round = 0; round < 5; round++) {
      const read = await exchange(raw);
      expect(read.startsWith(`HTTP/1.1 ${status} `)).toBe(true);
      expect(read.toLowerCase()).toContain('connection: close');
    }
    expect(originSaw.filter((line) => line.includes('/smuggled'))).toEqual([]);
  });

  it('leaves the proxy serving ordinary requests', async () => {
    const read = await exchange('GET /fine HTTP/1.1\r\nHost: f.lab.test\r\nConnection: close\r\n\r\n', false);
    expect(read.startsWith('HTTP/1.1 200 ')).toBe(true);
    expect(originSaw).toContain('GET /fine');
  });
});
