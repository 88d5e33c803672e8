import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { Socket } from 'node:net';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyDomain } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/shared/errors.js';
import { Balancer } from '../proxy/http/balancer.js';
import { forward } from '../proxy/http/forward.js';
import { OriginPools } from '../proxy/http/origins.js';
import { createCa } from './helpers/pki.js';

// The pure half of routing: rotation and cool-downs on an injected clock, and
// the pool set kept across a reload.
let dir: string;
let caFile: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-balancer-'));
  caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, (await createCa('origin CA')).certPem);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function domain(name: string, origins: string[], extra: Partial<ProxyDomain> = {}): ProxyDomain {
  return {
    name,
    origins,
    originHost: null,
    originTls: { ca: null, servername: null },
    maxBodyBytes: null,
    hsts: { includeSubDomains: false, preload: false },
    ...extra,
  };
}

describe('balancer', () => {
  it('rotates over the healthy origins of each group independently', () => {
    const b = new Balancer(1000, () => 0);
    const firsts = Array.from({ length: 6 }, () => b.order('shop', ['a', 'b', 'c'])[0]);
    expect(firsts).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
    expect(b.order('blog', ['x', 'y'])).toEqual(['x', 'y']);
    expect(b.order('shop', ['a', 'b', 'c'])).toEqual(['a', 'b', 'c']);
  });

  it('skips an origin for the cool-down after a failure, then tries it again', () => {
    let now = 0;
    const b = new Balancer(1000, () => now);
    b.failed('a');
    expect(b.healthy('a')).toBe(false);
    const firsts = Array.from({ length: 4 }, () => b.order('shop', ['a', 'b'])[0]);
    expect(firsts).toEqual(['b', 'b', 'b', 'b']);
    // The cooling-down origin is still listed, last, for a retry.
    expect(b.order('shop', ['a', 'b'])).toEqual(['b', 'a']);
    now = 999;
    expect(b.healthy('a')).toBe(false);
    now = 1000;
    expect(b.healthy('a')).toBe(true);
    expect(new Set(Array.from({ length: 2 }, () => b.order('shop', ['a', 'b'])[0]))).toEqual(new Set(['a', 'b']));
  });

  it('one success clears a failure; a new failure starts a new cool-down', () => {
    let now = 0;
    const b = new Balancer(1000, () => now);
    b.failed('a');
    b.succeeded('a');
    expect(b.healthy('a')).toBe(true);
    b.failed('a');
    now = 500;
    b.failed('a');
    now = 1200;
    expect(b.healthy('a')).toBe(false);
    now = 1500;
    expect(b.healthy('a')).toBe(true);
  });

  it('tries all origins in turn when all are cooling down', () => {
    let now = 0;
    const b = new Balancer(1000, () => now);
    b.failed('a');
    now = 10;
    b.failed('b');
    const orders = [b.order('shop', ['a', 'b']), b.order('shop', ['a', 'b'])];
    expect(orders).toEqual([
      ['a', 'b'],
      ['b', 'a'],
    ]);
  });

  it('forgets origins and groups no longer configured, keeping the others', () => {
    const b = new Balancer(1000, () => 0);
    b.failed('a');
    b.failed('b');
    b.order('shop', ['a', 'b']);
    b.retain(new Set(['a']), new Set(['blog']));
    expect(b.healthy('a')).toBe(false);
    expect(b.healthy('b')).toBe(true);
    // The shop group's rotation starts over.
    expect(b.order('shop', ['b', 'c'])[0]).toBe('b');
  });
});

describe('origin pools', () => {
  it('keeps pools and health still in use on retain, closes the others after their requests', async () => {
    let release: (() => void) | undefined;
    const origins = [0, 1].map(() =>
      http.createServer((req, res) => {
        if (req.url === '/slow') release = () => res.end('late');
        else res.end('ok');
      }),
    );
    const urls: string[] = [];
    for (const origin of origins) {
      await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
      urls.push(`http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`);
    }
    const [live, other] = urls as [string, string];
    const pools = new OriginPools({ connectMs: 1000, responseMs: 5000, failureCooldownMs: 60_000, now: () => 0 });
    try {
      const shop = domain('shop.example', [live, 'http://127.0.0.1:9']);
      const blog = domain('blog.example', [other]);
      pools.retain([shop, blog]);
      const kept = pools.pool(pools.targets(shop).find((t) => t.url.origin === live)!);
      const dead = pools.targets(shop).find((t) => t.url.port === '9')!;
      pools.pool(dead);
      pools.failed(dead);
      // A request in flight on blog's pool, which the reload removes.
      const blogPool = pools.pool(pools.targets(blog)[0]!);
      const late = blogPool.request({ path: '/slow', method: 'GET' });
      while (release === undefined) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(pools.size).toBe(3);

      // Reload: a new shop object with the same origins; blog removed.
      const shop2 = domain('shop.example', [live, 'http://127.0.0.1:9']);
      pools.retain([shop2]);
      expect(pools.size).toBe(2);
      expect(pools.pool(pools.targets(shop2).find((t) => t.url.origin === live)!)).toBe(kept);
      expect(pools.healthy(pools.targets(shop2).find((t) => t.url.port === '9')!)).toBe(false);
      expect(blogPool.closed).toBe(true);
      // The removed pool's request still completes.
      release();
      expect(await (await late).body.text()).toBe('late');
    } finally {
      await pools.close();
      for (const origin of origins) origin.close();
    }
  });

  it('refuses an unreadable or non-PEM origin CA on retain, changing nothing', () => {
    const pools = new OriginPools();
    const good = domain('shop.example', ['https://origin.internal']);
    pools.retain([good]);
    const goodTargets = pools.targets(good);
    const notPem = join(dir, 'not-pem.pem');
    writeFileSync(notPem, 'hello');
    for (const ca of [join(dir, 'missing.pem'), notPem]) {
      const bad = domain('bad.example', ['https://origin.internal'], { originTls: { ca, servername: null } });
      let error: unknown;
      try {
        pools.retain([good, bad]);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain(ca);
      expect((error as Error).message).toContain('domains[bad.example].originTls.ca');
    }
    expect(pools.targets(good)).toEqual(goodTargets);
  });

  it('fails a forward whose domain was never retained and whose origin CA cannot be read now: told, never thrown', async () => {
    const pools = new OriginPools();
    const bad = domain('late.example', ['https://origin.internal'], { originTls: { ca: join(dir, 'missing.pem'), servername: null } });
    const req = new http.IncomingMessage(new Socket());
    req.method = 'GET';
    req.url = '/';
    const failures: Error[] = [];
    const owner = { extraHeaders: {}, proto: 'https' as const, maxBodyBytes: 1000, onOrigin() {}, onFailure: (err: Error) => void failures.push(err) };
    // A throw here would leave the server's 'request' listener: the worker's end (uncaught.ts).
    expect(() => forward(pools, bad, req, new http.ServerResponse(req), owner)).not.toThrow();
    await new Promise((resolve) => setImmediate(resolve));
    expect(failures).toHaveLength(1);
    expect(failures[0]).toBeInstanceOf(ConfigError);
    await pools.close();
  });

  it('derives Host, SNI and the pool key from the origin and originTls', () => {
    const pools = new OriginPools();
    const d = domain('shop.example', ['http://10.0.0.1:8080', 'https://b.internal:8443', 'https://10.0.0.2'], { originTls: { ca: caFile, servername: null } });
    const [plain, named, ip] = pools.targets(d) as [
      ReturnType<OriginPools['targets']>[0],
      ReturnType<OriginPools['targets']>[0],
      ReturnType<OriginPools['targets']>[0],
    ];
    expect(plain.host('shop.example')).toBe('shop.example');
    expect(plain.tls).toBeUndefined();
    expect(named.host('shop.example')).toBe('b.internal:8443');
    expect(named.tls?.servername).toBe('b.internal');
    expect(named.tls?.ca).toContain('BEGIN CERTIFICATE');
    // An IP literal sends no SNI (RFC 6066 §3).
    expect(ip.tls?.servername).toBeUndefined();
    const client = domain('shop.example', ['https://b.internal:8443'], { originHost: 'client', originTls: { ca: null, servername: 'origin.test' } });
    const [t] = pools.targets(client);
    expect(t?.host('shop.example')).toBe('shop.example');
    expect(t?.tls?.servername).toBe('origin.test');
    expect(t?.key).not.toBe(named.key);
  });
});
