import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// The plain-HTTP listener: 308 to HTTPS for known domains, ACME challenges to the origin.
let lab: KeylessLab;
let proxy: RunningWorker;

beforeAll(async () => {
  lab = await startKeylessLab();
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  proxy = await startProxyWorker(lab.proxyConfig({ certificates: [{ name: 'ec', chain: ec.file }], httpRedirect: { host: '127.0.0.1', port: 0 } }), {
    log: createLogger('redirect-test', 'silent'),
  });
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
function get(host: string, path: string, method = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxy.httpPort, path, method, headers: { host } }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
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

  it('answers 404 to an unknown host, and to a host that is not a plain DNS name', async () => {
    for (const host of ['unknown.example', 'evil.com/@x.lab.test']) {
      const res = await get(host, '/');
      expect(res.status).toBe(404);
      expect(res.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_UNKNOWN_HOST');
      expect(res.headers.location).toBeUndefined();
    }
  });
});
