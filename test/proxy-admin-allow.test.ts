// The proxy's admin API and its 405s, in process, at port 0: a method a resource does not take is answered 405 with
// `Allow` naming the methods it takes (RFC 9110 §15.5.6: a 405 MUST carry one; §10.2.1), for every route, with the
// control API and without it; a path that is no resource stays 404, whatever the method. Every method an `Allow`
// names is one the resource answers (no 404, no 405): the route table and the dispatch agree. The control's parts are
// stand-ins that record their calls: this is the HTTP side's routing, not what the primary does with a change. And
// the refusals a change gets before its control is asked: a body that is no object, a body over its route's limit,
// a token file that cannot be read.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { continueExchange } from './helpers/continue.js';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { type AdminControl, startProxyAdmin } from '../proxy/admin.js';
import type { ReloadReport } from '../proxy/serving/coordinator.js';

const TOKEN = 'allow-test-token';
let dir: string;
let withControl: http.Server;
let withoutControl: http.Server;
const calls: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-admin-allow-'));
  const tokenFile = join(dir, 'admin.token');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  /** A stand-in that records its call as `what` and answers `value`. */
  const record =
    <T>(what: (...args: string[]) => string, value: T) =>
    async (...args: unknown[]): Promise<T> => {
      calls.push(what(...args.map((a) => (Array.isArray(a) ? a.join() : String(a)))));
      return value;
    };
  const report: ReloadReport = {
    trigger: 'admin',
    result: 'ok',
    generation: 1,
    changed: [],
    removed: [],
    refused: [],
    warnings: [],
    restartNeeded: [],
    durationMs: 0,
  };
  const control: AdminControl = {
    tokenFile,
    reload: record(() => 'reload', report),
    putCertificate: record((name) => `put ${name}`, report),
    certificates: () => ({ certificates: [], refused: [] }),
    ownedByConfig: (name) => name === 'owned',
    rotateTicketKeys: record(() => 'rotate', { keys: 1 }),
    putRoute: record((name) => `route ${name}`, report),
    deleteRoute: record((name) => `unroute ${name}`, report),
    acmeIssue: record((domains) => `issue ${domains}`, {}),
    acmeRenew: record((name) => `renew ${name}`, {}),
  };
  const reads = { metrics: async () => ({ contentType: 'text/plain', body: '' }), notReadyReason: async () => undefined, config: () => ({}) as ProxyConfig };
  withControl = await startProxyAdmin('127.0.0.1', 0, { ...reads, control });
  withoutControl = await startProxyAdmin('127.0.0.1', 0, reads);
});
afterAll(async () => {
  await Promise.all([withControl, withoutControl].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  rmSync(dir, { recursive: true, force: true });
});

function ask(server: http.Server, method: string, path: string, body?: string): Promise<{ status: number; allow: string | undefined }> {
  return answerOf(server, method, path, body).then(({ status, allow }) => ({ status, allow }));
}

/** ask(), with the answer's body too. */
function answerOf(server: http.Server, method: string, path: string, body?: string): Promise<{ status: number; allow: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: (server.address() as AddressInfo).port,
        method,
        path,
        agent: false,
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      },
      (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, allow: res.headers.allow, body: text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Every resource of the admin API with a control API (README, "Reloads and the admin API"), and the methods it takes. */
const ROUTES: ReadonlyArray<readonly [string, string]> = [
  ['/metrics', 'GET, HEAD'],
  ['/healthz', 'GET, HEAD'],
  ['/readyz', 'GET, HEAD'],
  ['/config', 'GET, HEAD'],
  ['/certs', 'GET, HEAD'],
  ['/reload', 'POST'],
  // Also the upload of an entry named `reload` (PUT /certs/:name).
  ['/certs/reload', 'POST, PUT'],
  ['/certs/example', 'PUT'],
  ['/tickets/rotate', 'POST'],
  ['/routes/www.example', 'PUT, DELETE'],
  ['/acme/issue', 'POST'],
  ['/acme/renew/example', 'POST'],
];

/** A body each change that reads one takes. */
const BODIES: Readonly<Record<string, string>> = { '/acme/issue': '{"domains":["a.example"]}', '/routes/www.example': '{}' };

describe('admin API: 405 carries Allow', () => {
  it.each(ROUTES)('%s: a method it does not take gets 405 with Allow: %s', async (path, allow) => {
    const taken = allow.split(', ');
    for (const method of ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'].filter((m) => !taken.includes(m))) {
      const answer = await ask(withControl, method, path);
      expect(answer, `${method} ${path}`).toEqual({ status: 405, allow });
    }
  });

  it.each(ROUTES)('%s: every method its Allow names is answered (not 404, not 405)', async (path, allow) => {
    for (const method of allow.split(', ')) {
      const answer = await ask(withControl, method, path, method === 'GET' || method === 'HEAD' ? undefined : (BODIES[path] ?? 'x'));
      expect(answer.status, `${method} ${path}`).not.toBe(404);
      expect(answer.status, `${method} ${path}`).not.toBe(405);
    }
  });

  it('a path that is no resource is 404 whatever the method, with no Allow', async () => {
    for (const method of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      for (const path of ['/nope', '/certs/', '/routes/a/b']) {
        expect(await ask(withControl, method, path), `${method} ${path}`).toEqual({ status: 404, allow: undefined });
      }
    }
  });

  it('without a control API, the reads take GET and HEAD (405 with Allow otherwise), and the changes are no resources (404)', async () => {
    for (const path of ['/metrics', '/healthz', '/readyz', '/config']) {
      for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
        expect(await ask(withoutControl, method, path), `${method} ${path}`).toEqual({ status: 405, allow: 'GET, HEAD' });
      }
    }
    for (const path of ['/certs', '/reload', '/certs/x', '/tickets/rotate', '/routes/x', '/acme/issue']) {
      for (const method of ['GET', 'POST', 'PUT', 'PATCH']) {
        expect(await ask(withoutControl, method, path), `${method} ${path}`).toEqual({ status: 404, allow: undefined });
      }
    }
  });

  it('a 405 ran no change', () => {
    // Only the accepted methods above reached the control (each once); no refused one did.
    expect(calls.sort()).toEqual(
      ['issue a.example', 'put example', 'put reload', 'reload', 'reload', 'renew example', 'rotate', 'route www.example', 'unroute www.example'].sort(),
    );
  });
});

describe('admin API: a change refused before its control is asked', () => {
  it('POST /acme/issue with a JSON body that is no object is 400 KEYEDGE_ERR_USAGE, not the 502 of an order', async () => {
    for (const body of ['null', '7', '"a.example"', '["a.example"]']) {
      const answer = await answerOf(withControl, 'POST', '/acme/issue', body);
      expect({ body, status: answer.status, code: (JSON.parse(answer.body) as { error: { code: string } }).error.code }).toEqual({
        body,
        status: 400,
        code: 'KEYEDGE_ERR_USAGE',
      });
    }
  });

  it('PUT /certs/:name to a name refused before its body, with Expect: 100-continue, gets its refusal and no 100', async () => {
    // The 100 went to every upload, then `..` got its 400: the client was invited to send a chain nobody would read.
    const port = (withControl.address() as AddressInfo).port;
    for (const [path, status] of [
      ['/certs/..', '400'],
      ['/certs/.hidden', '400'],
      ['/certs/owned', '409'],
    ] as const) {
      const { answer } = await continueExchange(
        port,
        `PUT ${path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n`,
        Buffer.alloc(200_000, ' '),
      );
      expect(answer.split('\r\n')[0], path).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
    }
  });

  it('POST /acme/issue with a domain past 253 characters is 400 KEYEDGE_ERR_USAGE, not an order', async () => {
    const long = `${'a'.repeat(63)}.`.repeat(4) + 'example.com';
    const answer = await answerOf(withControl, 'POST', '/acme/issue', JSON.stringify({ domains: [long] }));
    expect({ status: answer.status, body: JSON.parse(answer.body) as unknown }).toMatchObject({
      status: 400,
      body: { error: { code: 'KEYEDGE_ERR_USAGE' } },
    });
  });

  it('POST /acme/issue with a body over its 64 KiB limit is 413, and with Expect: 100-continue gets no 100 first', async () => {
    // Invited up to the upload limit (256 KiB), then answered 400: the client sent 100,000 bytes to be told it was too large.
    const port = (withControl.address() as AddressInfo).port;
    const { answer } = await continueExchange(
      port,
      `POST /acme/issue HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n`,
      Buffer.alloc(100_000, ' '),
    );
    expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 413 Payload Too Large');
    const sent = await answerOf(withControl, 'POST', '/acme/issue', `{"domains":["a.example"]}${' '.repeat(100_000)}`);
    expect({ status: sent.status, code: (JSON.parse(sent.body) as { error: { code: string } }).error.code }).toEqual({
      status: 413,
      code: 'KEYEDGE_HTTP_BODY_TOO_LARGE',
    });
  });

  it('a token file that cannot be read refuses changes naming the errno; only a missing one is "no token"', async () => {
    // Every errno read as no token: a file the primary may not read (EACCES) was reported as "no token in FILE".
    const loop = join(dir, 'loop.token');
    symlinkSync(loop, loop);
    const missing = join(dir, 'missing.token');
    for (const [tokenFile, text] of [
      [loop, `admin changes are disabled: ${loop} (admin.tokenFile) cannot be read (ELOOP)\n`],
      [missing, `admin changes are disabled: no token in ${missing} (admin.tokenFile)\n`],
    ] as const) {
      const reads = {
        metrics: async () => ({ contentType: 'text/plain', body: '' }),
        notReadyReason: async () => undefined,
        config: () => ({}) as ProxyConfig,
      };
      const control: AdminControl = {
        tokenFile,
        reload: async () => ({}) as ReloadReport,
        putCertificate: async () => ({}) as ReloadReport,
        certificates: () => ({}),
        ownedByConfig: () => false,
      };
      const server = await startProxyAdmin('127.0.0.1', 0, { ...reads, control });
      try {
        const answer = await answerOf(server, 'POST', '/reload');
        expect(`${answer.status} ${answer.body}`).toBe(`403 ${text}`);
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    }
  });
});
