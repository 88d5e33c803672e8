import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { http1Request, http2Answer, http2Fields } from '../proxy/http2/headers.js';
import { ResetGuard } from '../proxy/http2/reset-guard.js';
import { http2ServerOptions } from '../proxy/http2/settings.js';

describe('HTTP/2 request and answer fields', () => {
  it(':authority becomes Host, pseudo-headers go, split cookies are joined with "; " (RFC 9113 §8.3.1, §8.2.3)', () => {
    const request = http1Request({
      ':method': 'POST',
      ':path': '/a?b=1',
      ':scheme': 'https',
      ':authority': 'x.test:8443',
      cookie: ['a=1', 'b=2'] as unknown as string,
      'x-y': 'z',
    });
    expect(request).toEqual({
      method: 'POST',
      path: '/a?b=1',
      authority: 'x.test:8443',
      hostDiffers: false,
      headers: { host: 'x.test:8443', cookie: 'a=1; b=2', 'x-y': 'z' },
    });
    // Without :authority, Host stands in.
    expect(http1Request({ ':method': 'GET', ':path': '/', host: 'h.test' }).authority).toBe('h.test');
    // A Host naming what :authority names (in any case) is the same request; another name is noted (§8.3.1).
    expect(http1Request({ ':method': 'GET', ':path': '/', ':authority': 'h.test', host: 'H.Test' }).hostDiffers).toBe(false);
    expect(http1Request({ ':method': 'GET', ':path': '/', ':authority': 'h.test', host: 'evil.test' })).toMatchObject({
      hostDiffers: true,
      headers: { host: 'h.test' },
    });
  });

  it('an origin answer loses what HTTP/2 forbids (RFC 9113 §8.2.2), including what Connection names', () => {
    const head = http2Answer(
      200,
      {
        connection: 'keep-alive, x-hop',
        'keep-alive': 'timeout=5',
        'transfer-encoding': 'chunked',
        upgrade: 'h2c',
        'x-hop': '1',
        'x-kept': '2',
        'set-cookie': ['a=1', 'b=2'],
      },
      { 'strict-transport-security': 'max-age=1' },
    );
    expect(head).toEqual({ ':status': 200, 'x-kept': '2', 'set-cookie': ['a=1', 'b=2'], 'strict-transport-security': 'max-age=1' });
  });
});

describe("an origin's raw head as an HTTP/2 answer (one pass)", () => {
  it("lower-cases names, keeps repetitions as lists, drops what HTTP/2 forbids and what Connection names, and lets ours replace the origin's", () => {
    const raw = [
      'Connection',
      'keep-alive, X-Hop',
      'X-Hop',
      '1',
      'Keep-Alive',
      'timeout=5',
      'Transfer-Encoding',
      'chunked',
      'Set-Cookie',
      'a=1',
      'set-cookie',
      'b=2',
      'Strict-Transport-Security',
      'max-age=0',
      'Constructor',
      'c',
      '__proto__',
      'p',
    ].map((t, i) => (i % 4 === 1 ? Buffer.from(t, 'latin1') : t));
    const head = http2Fields(raw, { 'strict-transport-security': 'max-age=1' }, 204);
    expect(head).toEqual({ ':status': 204, 'set-cookie': ['a=1', 'b=2'], 'strict-transport-security': 'max-age=1', constructor: 'c', ['__proto__']: 'p' });
    expect(Object.getPrototypeOf(head)).toBe(Object.prototype);
    expect(Object.keys(head)).toContain('__proto__');
    // Trailers: no :status; a Connection of keep-alive names nothing.
    expect(http2Fields(['Connection', 'keep-alive', 'X-Sum', '1', 'x-sum', '2'], {})).toEqual({ 'x-sum': ['1', '2'] });
  });
});

describe('the reset bound', () => {
  it('tolerates a burst of `burst`, cuts the next, and refills at a tenth of it per second', () => {
    const guard = new ResetGuard(200, 0);
    for (let i = 0; i < 200; i++) expect(guard.reset(0)).toBe(true);
    expect(guard.reset(0)).toBe(false);
    const steady = new ResetGuard(200, 0);
    // 20 resets per second for ten minutes: never cut.
    for (let ms = 0; ms < 600_000; ms += 50) expect(steady.reset(ms)).toBe(true);
    expect(steady.total).toBe(12_000);
  });
});

const dir = mkdtempSync(join(tmpdir(), 'keyedge-h2-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
function configFile(content: Record<string, unknown>): string {
  const file = join(dir, `${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(content));
  return file;
}

describe('HTTP/2 settings and config', () => {
  it('streams are capped (Node: unlimited), push and extended CONNECT off, the header list bounded by maxHeaderBytes', () => {
    const config = loadProxyConfig(configFile({}));
    const options = http2ServerOptions(config.limits);
    expect(options.settings).toMatchObject({ maxConcurrentStreams: 128, maxHeaderListSize: 16_384, enablePush: false, enableConnectProtocol: false });
    expect(options.maxSessionInvalidFrames).toBe(100);
  });

  it('http2 is on by default on both profiles and is turned off per listener', () => {
    const config = loadProxyConfig(
      configFile({
        listen: [
          { port: 1, profile: 'intermediate' },
          { port: 2, profile: 'modern' },
          { port: 3, http2: false },
        ],
      }),
    );
    expect(config.listen.map((l) => l.http2)).toEqual([true, true, false]);
  });
});
