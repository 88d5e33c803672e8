import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { http1Request, http2Answer, http2Fields } from '../proxy/http2/headers.js';
import { ResetGuard } from '../proxy/http2/reset-guard.js';
import { answer } from '../proxy/http2/stream-end.js';
import { endedByNghttp2 } from '../proxy/http2/session-ended.js';
import { http2ServerOptions } from '../proxy/http2/settings.js';
import { createCa, issue } from './helpers/pki.js';

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

  it('names as undici hands them (bytes, any case) come out as their latin1 text lower-cased, well-known or not', () => {
    const names = [
      'CONTENT-TYPE',
      'Content-Length',
      'dAtE',
      'Content',
      'Content-Types',
      'X-Custom-Thing',
      'X-\xc0\xde\xe9',
      'Constructor',
      '__PROTO__',
      'cOnNeCtIoN',
      'KEEP-ALIVE',
      'Vary',
      'X-Named',
    ];
    const values = ['text/html', '5', 'Thu, 01 Jan 1970 00:00:00 GMT', 'c', 'ts', 'x', 'l', 'k', 'p', 'keep-alive, X-NAMED', 'timeout=5', 'accept', 'dropped'];
    const raw = names.flatMap((name, i) => [Buffer.from(name, 'latin1'), Buffer.from(values[i]!, 'latin1')]);
    const head = http2Fields(raw, {}, 200);
    expect(Object.keys(head)).toEqual([
      ':status',
      'content-type',
      'content-length',
      'date',
      'content',
      'content-types',
      'x-custom-thing',
      'x-\xe0\xfe\xe9',
      'constructor',
      '__proto__',
      'vary',
    ]);
    expect(head['x-\xe0\xfe\xe9']).toBe('l');
    expect(head.date).toBe('Thu, 01 Jan 1970 00:00:00 GMT');
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

describe('nghttp2 done with a session (session-ended.ts), on the Node in use', () => {
  it('reads a live session as not ended, and one nghttp2 ended on a connection error as ended (or Node ended it itself, as 22 and 24 do)', async () => {
    const ca = await createCa('session-ended');
    const leaf = await issue(ca, { commonName: 'h2.test', dnsNames: ['h2.test'], keyAlgorithm: 'ec-p256' });
    const server = http2.createSecureServer({ key: leaf.keyPem, cert: leaf.certPem });
    const sessions: http2.ServerHttp2Session[] = [];
    server.on('session', (session) => sessions.push(session.on('error', () => undefined)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const connect = async (bytes: Buffer): Promise<tls.TLSSocket> => {
      const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['h2'] });
      socket.on('error', () => undefined);
      await new Promise((resolve) => socket.once('secureConnect', resolve));
      socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), Buffer.from('000000040000000000', 'hex'), bytes]));
      return socket;
    };
    try {
      const healthy = await connect(Buffer.alloc(0));
      // A DATA frame of 20,000 bytes, over the 16,384 every session starts with: a connection error (RFC 9113 §4.2).
      const oversized = Buffer.concat([Buffer.from('004e20000000000063', 'hex'), Buffer.alloc(20_000)]);
      const broken = await connect(oversized);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(sessions).toHaveLength(2);
      expect(endedByNghttp2(sessions[0]!)).toBe(false);
      expect(sessions[1]!.destroyed || endedByNghttp2(sessions[1]!)).toBe(true);
      healthy.destroy();
      broken.destroy();
    } finally {
      for (const session of sessions) session.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('our own answer on a stream already closed (stream-end.ts answer)', () => {
  it('sends nothing and throws nothing on a stream closed but not yet destroyed', async () => {
    const ca = await createCa('answer-closed');
    const leaf = await issue(ca, { commonName: 'h2.test', dnsNames: ['h2.test'], keyAlgorithm: 'ec-p256' });
    const server = http2.createSecureServer({ key: leaf.keyPem, cert: leaf.certPem });
    const seen = new Promise<{ closed: boolean; destroyed: boolean; threw: unknown }>((resolve) =>
      server.on('stream', (stream) => {
        stream.on('error', () => undefined);
        // A stream closed with NO_ERROR is left undestroyed while its readable side is open (Node 20's onStreamClose).
        stream.close(http2.constants.NGHTTP2_NO_ERROR);
        let threw: unknown;
        try {
          answer(stream, { status: 421, code: 'KEYEDGE_HTTP_MISDIRECTED', body: 'x' }, {});
        } catch (err) {
          // Before: ERR_HTTP2_INVALID_STREAM, which a 'stream' listener would have thrown into the worker.
          threw = (err as { code?: string }).code;
        }
        resolve({ closed: stream.closed, destroyed: stream.destroyed, threw });
      }),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = http2.connect(`https://127.0.0.1:${(server.address() as AddressInfo).port}`, { rejectUnauthorized: false });
    client.on('error', () => undefined);
    const request = client.request({ ':method': 'POST', ':path': '/' }, { endStream: false });
    request.on('error', () => undefined);
    try {
      expect(await seen).toEqual({ closed: true, destroyed: false, threw: undefined });
    } finally {
      client.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
