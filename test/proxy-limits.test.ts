import { readFileSync } from 'node:fs';
import https from 'node:https';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Limits with the answers of RFC 9110 §15.5: 431 headers too large, 413 body
// too large (declared or streamed), 408 headers too slow; the proxy stays up.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let chain: string;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  chain = ec.file;
  const origin = `http://127.0.0.1:${lab.origin.port}`;
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: '*.lab.test', origin },
        // Per-domain body limits, above and below the global one.
        { name: 'uploads.lab.test', origin, maxBodyBytes: 8000 },
        { name: 'tiny.lab.test', origin, maxBodyBytes: 10 },
      ],
      limits: { maxHeaderBytes: 4096, maxBodyBytes: 1000, headerTimeoutMs: 500 },
    }),
    { log: createLogger('limits-test', 'silent') },
  );
});
afterAll(async () => {
  await proxy?.close();
  await lab?.close();
});

function request(options: {
  headers?: Record<string, string>;
  body?: Buffer;
  method?: string;
  host?: string;
}): Promise<{ status: number; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port: proxy.ports[0],
        servername: options.host ?? 'a.lab.test',
        ca,
        method: options.method ?? 'POST',
        path: '/',
        headers: { host: options.host ?? 'a.lab.test', ...options.headers },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
      },
    );
    req.on('error', reject);
    if (options.body !== undefined) {
      req.setHeader('content-length', options.body.length);
      req.write(options.body);
    }
    req.end();
  });
}

/**
 * A chunked upload of `length` bytes on a raw TLS socket, written whole, then
 * every byte the proxy sends back until it closes. The proxy may answer and
 * close while the body is still coming; a write error after that is ignored,
 * but the answer must have arrived: that is what the caller asserts (an
 * https.request would report only the EPIPE/ECONNRESET and hide whether it did).
 */
function chunkedUpload(host: string, length: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.ports[0], servername: host, ca }, () => {
      const chunk = Buffer.alloc(100, 'a');
      const parts = [Buffer.from(`POST / HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n`)];
      for (let sent = 0; sent < length; sent += chunk.length) parts.push(Buffer.from('64\r\n'), chunk, Buffer.from('\r\n'));
      parts.push(Buffer.from('0\r\n\r\n'));
      socket.write(Buffer.concat(parts));
    });
    let answer = '';
    const timer = setTimeout(() => socket.destroy(), 15_000);
    socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

function expect413(answer: string): void {
  expect(answer).toMatch(/^HTTP\/1\.1 413 /);
  expect(answer).toMatch(/\r\nx-keyedge-error: KEYEDGE_HTTP_BODY_TOO_LARGE\r\n/i);
}

describe('limits', () => {
  it('forwards a body within the limit', async () => {
    expect((await request({ body: Buffer.alloc(900) })).status).toBe(200);
  });

  it('answers 413 to a declared body over the limit, without reading it', async () => {
    const res = await request({ body: Buffer.alloc(5000) });
    expect(res.status).toBe(413);
    expect(res.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_BODY_TOO_LARGE');
  });

  it('answers 413 to a chunked body that grows past the limit', async () => {
    expect413(await chunkedUpload('a.lab.test', 5000));
  });

  it('answers 431 to headers over the limit', async () => {
    const res = await request({ method: 'GET', headers: { 'x-big': 'a'.repeat(8000) } }).catch((err: Error) => ({
      status: -1,
      headers: { error: err.message } as Record<string, unknown>,
    }));
    expect([431, -1]).toContain(res.status);
    if (res.status === -1) throw new Error(`connection failed instead of 431: ${String(res.headers.error)}`);
    // The parser's answer (client-error.ts) carries its code, as every answer of ours does.
    expect(res.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_HEADERS_TOO_LARGE');
  });

  it('answers 408 to a client too slow sending its headers, and stays up', async () => {
    const answer = await new Promise<string>((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port: proxy.ports[0], servername: 'a.lab.test', ca }, () =>
        socket.write('GET / HTTP/1.1\r\nHost: a.lab.test\r\n'),
      );
      let text = '';
      socket.on('data', (d: Buffer) => (text += d.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', () => resolve(text));
    });
    expect(answer).toMatch(/^HTTP\/1.1 408/);
    expect(answer).toMatch(/\r\nx-keyedge-error: KEYEDGE_HTTP_HEADER_TIMEOUT\r\n/i);
    expect((await request({ method: 'GET' })).status).toBe(200);
  });

  it("applies a domain's own maxBodyBytes over the global limit", async () => {
    expect((await request({ host: 'uploads.lab.test', body: Buffer.alloc(5000) })).status).toBe(200);
    expect((await request({ host: 'uploads.lab.test', body: Buffer.alloc(9000) })).status).toBe(413);
    expect413(await chunkedUpload('uploads.lab.test', 9000));
    const small = await request({ host: 'tiny.lab.test', body: Buffer.alloc(11) });
    expect(small.status).toBe(413);
    expect(small.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_BODY_TOO_LARGE');
    expect((await request({ host: 'tiny.lab.test', body: Buffer.alloc(10) })).status).toBe(200);
  });

  it('closes connections over limits.maxConnectionsPerWorker at accept, counts them, and admits again once one closes', async () => {
    const metrics = new ProxyMetrics(() => proxy.keySource.stats(), new Registry());
    // A second worker in this process: its metrics go to a registry of their own.
    const capped = await startProxyWorker(lab.proxyConfig({ certificates: [{ name: 'ec', chain }], limits: { maxConnectionsPerWorker: 2 } }), {
      log: createLogger('limits-test', 'silent'),
      metrics,
    });
    const sockets: tls.TLSSocket[] = [];
    const connect = (): Promise<tls.TLSSocket | Error> =>
      new Promise((resolve) => {
        const socket = tls.connect({ host: '127.0.0.1', port: capped.ports[0], servername: 'a.lab.test', ca }, () => resolve(socket));
        sockets.push(socket);
        socket.once('error', (err) => resolve(err));
        socket.once('close', () => resolve(new Error('closed before the handshake')));
      });
    const rejected = async (): Promise<number> => (await metrics.rejectedConnections.get()).values[0]?.value ?? 0;
    try {
      const first = await connect();
      const second = await connect();
      expect(first).toBeInstanceOf(tls.TLSSocket);
      expect(second).toBeInstanceOf(tls.TLSSocket);
      expect(await connect()).toBeInstanceOf(Error);
      expect(await rejected()).toBe(1);
      (first as tls.TLSSocket).destroy();
      // The worker sees the close asynchronously; until then, new connections are still refused.
      let next = await connect();
      while (next instanceof Error) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        next = await connect();
      }
      expect(next).toBeInstanceOf(tls.TLSSocket);
    } finally {
      for (const socket of sockets) socket.destroy();
      await capped.close();
      metrics.stop();
    }
  });
});
