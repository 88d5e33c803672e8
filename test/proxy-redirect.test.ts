import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { Registry } from 'prom-client';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// The plain-HTTP listener: 308 to HTTPS for known domains, ACME challenges to the origin.
let lab: KeylessLab;
let proxy: RunningWorker;
const BODY_LIMIT = 4096;
/** The worker's log lines (JSON). */
const logged: string[] = [];

beforeAll(async () => {
  lab = await startKeylessLab();
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      httpRedirect: { host: '127.0.0.1', port: 0 },
      limits: { maxBodyBytes: BODY_LIMIT },
    }),
    {
      log: createLogger('redirect-test', 'info', { write: (line: string) => void logged.push(line) }),
    },
  );
});
afterAll(async () => {
  await proxy?.close();
  await lab?.close();
});

interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

/** node:http, because fetch() may not set Host. */
function get(host: string, path: string, method = 'GET', body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxy.httpPort, path, method, headers: { host } }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('plain HTTP', () => {
  it('sends a known domain to HTTPS with 308, keeping path and query', async () => {
    const res = await get('shop.lab.test', '/a/b?c=d');
    expect(res.status).toBe(308);
    expect(res.headers.location).toBe(`https://shop.lab.test:${proxy.ports[0]}/a/b?c=d`);
    expect(res.headers['strict-transport-security']).toBeUndefined();
    expect((await get('shop.lab.test', '/form', 'POST')).status).toBe(308);
  });

  it('forwards ACME HTTP-01 challenges to the origin', async () => {
    const before = lab.origin.requests();
    const res = await get('shop.lab.test', '/.well-known/acme-challenge/token-123');
    expect(res.status).toBe(200);
    const seen = JSON.parse(res.body) as { host: string; url: string; forwarded: string };
    expect(seen).toMatchObject({ host: 'shop.lab.test', url: '/.well-known/acme-challenge/token-123' });
    expect(seen.forwarded).toContain('proto=http;');
    expect(lab.origin.requests()).toBe(before + 1);
  });

  it('forwards only a challenge token path: dot segments, encoded bytes, slashes or a query under the prefix are redirected, never sent to the origin in clear', async () => {
    const before = lab.origin.requests();
    for (const path of [
      '/.well-known/acme-challenge/../../admin',
      '/.well-known/acme-challenge/%2e%2e/admin',
      '/.well-known/acme-challenge/a/b',
      '/.well-known/acme-challenge/token?x=1',
      '/.well-known/acme-challenge/',
    ]) {
      const res = await get('shop.lab.test', path);
      expect([path, res.status]).toEqual([path, 308]);
      expect(res.headers.location).toBe(`https://shop.lab.test:${proxy.ports[0]}${path}`);
    }
    expect(lab.origin.requests()).toBe(before);
  });

  it('redirects a wildcard name only when it is a DNS name: a label of 64 characters is an unknown host, not echoed', async () => {
    const fits = `${'a'.repeat(63)}.lab.test`;
    expect((await get(fits, '/')).headers.location).toBe(`https://${fits}:${proxy.ports[0]}/`);
    const long = await get(`${'a'.repeat(64)}.lab.test`, '/');
    expect(long.status).toBe(404);
    expect(long.headers.location).toBeUndefined();
  });

  it('holds an ACME challenge request body to limits.maxBodyBytes, as on HTTPS: 413, and the origin gets nothing', async () => {
    const before = lab.origin.requests();
    const res = await get('shop.lab.test', '/.well-known/acme-challenge/big', 'POST', 'x'.repeat(2 * BODY_LIMIT));
    expect(res.status).toBe(413);
    expect(res.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_BODY_TOO_LARGE');
    expect(lab.origin.requests()).toBe(before);
  });

  it('answers 404 to an unknown host, and 400 to a Host that is not host[:port], never redirecting either', async () => {
    for (const [host, status, code] of [
      ['unknown.example', 404, 'KEYEDGE_HTTP_UNKNOWN_HOST'],
      ['evil.com/@x.lab.test', 400, 'KEYEDGE_HTTP_BAD_TARGET'],
    ] as const) {
      const res = await get(host, '/');
      expect(res.status).toBe(status);
      expect(res.headers['x-keyedge-error']).toBe(code);
      expect(res.headers.location).toBeUndefined();
    }
  });

  it("counts a client whose connection broke as its request's body arrived as gone (499), not as an origin failure", async () => {
    const lines = logged.length;
    const socket = net.connect(proxy.httpPort!, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    // The challenge's body whole, then a reset at once: the body is read, and the connection is gone as the request
    // is sent or just after. (A parse error behind a whole request no longer closes the connection before that
    // request's answer, client-error.ts, so it cannot stand in for the reset.)
    socket.write('POST /.well-known/acme-challenge/gone HTTP/1.1\r\nhost: shop.lab.test\r\ncontent-length: 5\r\n\r\nhello');
    socket.resetAndDestroy();
    await expect
      .poll(() =>
        logged
          .slice(lines)
          .map((line) => JSON.parse(line) as Record<string, unknown>)
          .find((line) => line.path === '/.well-known/acme-challenge/gone'),
      )
      .toMatchObject({ access: true, status: 499, code: 'KEYEDGE_HTTP_CLIENT_CLOSED' });
    expect(logged.slice(lines).join('')).not.toContain('could not reach the origin');
  });
});

describe('a request the parser refuses, pipelined behind redirects', () => {
  // Our answers on this port are written at once; the parser's error for a request behind them must still follow them.
  it('gets its 400 after their answers, in order', async () => {
    const socket = net.connect(proxy.httpPort!, '127.0.0.1');
    socket.on('error', () => undefined);
    let received = '';
    socket.on('data', (chunk: Buffer) => void (received += chunk.toString('latin1')));
    await new Promise((resolve) => socket.once('connect', resolve));
    const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: shop.lab.test\r\n\r\n`;
    socket.write(`${get('/a')}${get('/b')}GET /c HTTP/1.1\r\nHost: shop.lab.test\r\nX-A: 1\r\n folded\r\n\r\n`);
    await new Promise((resolve) => socket.once('close', resolve));
    expect([...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1])).toEqual(['308', '308', '400']);
  });
});

describe('a worker stopping with a plain-HTTP request still arriving', () => {
  // The TLS listeners' connections are cut when the grace period ends; before, the plain-HTTP port's were left to
  // Node's own deadlines (headerTimeoutMs here: 30 s), and with them the worker's event loop.
  it('cuts it when the grace period ends', async () => {
    const ec = await lab.certificate('ec-stop', lab.keys.ec, ['lab.test']);
    const stopping = await startProxyWorker(
      lab.proxyConfig({
        certificates: [{ name: 'ec-stop', chain: ec.file }],
        httpRedirect: { host: '127.0.0.1', port: 0 },
        shutdownGraceMs: 500,
        limits: { headerTimeoutMs: 30_000 },
      }),
      {
        log: createLogger('redirect-stop-test', 'warn', { write: () => undefined }),
        metrics: new ProxyMetrics(() => stopping.keySource.stats(), new Registry()),
      },
    );
    const socket = net.connect(stopping.httpPort!, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write('GET /slow HTTP/1.1\r\nHost: lab.test\r\n');
    const closed = new Promise((resolve) => socket.once('close', resolve));
    const started = Date.now();
    await stopping.close();
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    expect(socket.destroyed).toBe(true);
    expect(Date.now() - started).toBeLessThan(10_000);
  }, 30_000);
});
