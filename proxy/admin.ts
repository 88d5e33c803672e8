/**
 * The proxy's admin HTTP listener (loopback by default), served by the
 * cluster primary:
 *   GET /metrics  every worker's metrics, summed (prom-client AggregatorRegistry)
 *   GET /healthz  200 while the primary runs
 *   GET /readyz   200 once every worker has loaded its certificates and the
 *                 key server answers a ping; 503 with the reason otherwise
 *   GET /config   the running configuration as JSON (it holds no secrets:
 *                 PINs and keys are never in a proxy config; paths are shown)
 *   GET /certs    every certificate entry: names, serial, issuer, notAfter,
 *                 key id, loaded-at; refused entries with the reason
 * and, with `Authorization: Bearer <token>` (RFC 6750 §2.1; the token is
 * read from admin.tokenFile on each request, so it can be rotated live):
 *   POST /reload, POST /certs/reload   reload the config file and the store
 *   PUT /certs/:name                   a PEM chain for a store entry: validated,
 *                                      then written to the store and reloaded
 * Refusals answer 4xx with the reason as JSON; the running state is kept.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { CertificateError, KeyedgeError } from '../keyserver/errors.js';
import type { ReloadReport } from './serving/coordinator.js';
import { listen } from '../keyserver/listen.js';

/** A PEM chain of a leaf and a few intermediates is a few KiB; anything near this is not one. */
const MAX_UPLOAD_BYTES = 256 * 1024;

export interface AdminControl {
  readonly tokenFile: string;
  readonly reload: () => Promise<ReloadReport>;
  /** Validates and stores a chain for entry `name`, then reloads; rejects with a CertificateError when refused. */
  readonly putCertificate: (name: string, chainText: string) => Promise<ReloadReport>;
  readonly certificates: () => unknown;
}

export interface AdminSources {
  readonly metrics: () => Promise<{ readonly contentType: string; readonly body: string }>;
  /** Resolves with undefined when ready, or the reason it is not. */
  readonly notReadyReason: () => Promise<string | undefined>;
  readonly config: () => ProxyConfig;
  readonly control?: AdminControl;
}

export function startProxyAdmin(host: string, port: number, sources: AdminSources): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const text = (status: number, body: string): void => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
    };
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body, null, 2)}\n`);
    };
    const control = sources.control;
    if (req.method === 'POST' || req.method === 'PUT') {
      if (control === undefined) return text(404, 'not found\n');
      const denied = authorisationFailure(req, control.tokenFile);
      if (denied !== undefined) {
        res.writeHead(denied.status, { 'content-type': 'text/plain; charset=utf-8', ...(denied.status === 401 ? { 'www-authenticate': 'Bearer realm="keyedge-admin"' } : {}) }).end(`${denied.message}\n`);
        return;
      }
      const upload = /^\/certs\/([\w.-]{1,64})$/.exec(path ?? '');
      if (req.method === 'POST' && (path === '/reload' || path === '/certs/reload')) {
        control.reload().then((report) => json(report.error === undefined ? 200 : 409, report), (err: Error) => json(500, { error: { message: err.message } }));
        return;
      }
      if (req.method === 'PUT' && upload !== null) {
        readBody(req, MAX_UPLOAD_BYTES).then(
          (body) => control.putCertificate(upload[1]!, body),
          (err: Error) => Promise.reject(new CertificateError('admin API', err.message, { cause: err })),
        ).then(
          (report) => json(report.error === undefined ? 200 : 409, report),
          (err: Error) => json(err instanceof CertificateError ? 422 : 500, { error: { code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_CERTIFICATE', reason: (err as { reason?: string }).reason, message: err.message } }),
        );
        return;
      }
      return text(404, 'not found\n');
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n');
    switch (path) {
      case '/metrics':
        sources.metrics().then(
          ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
          (err: Error) => text(500, `metrics unavailable: ${err.message}\n`),
        );
        return;
      case '/healthz':
        return text(200, 'ok\n');
      case '/readyz':
        sources.notReadyReason().then(
          (reason) => (reason === undefined ? text(200, 'ready\n') : text(503, `not ready: ${reason}\n`)),
          (err: Error) => text(503, `not ready: ${err.message}\n`),
        );
        return;
      case '/config':
        return json(200, sources.config());
      case '/certs':
        return control === undefined ? text(404, 'not found\n') : json(200, control.certificates());
      default:
        return text(404, 'not found\n');
    }
  });
  return listen(server, { host, port });
}

/** Undefined when the request carries the admin token; else the answer to give. */
function authorisationFailure(req: http.IncomingMessage, tokenFile: string): { status: number; message: string } | undefined {
  let expected: string;
  try {
    expected = readFileSync(tokenFile, 'utf8').trim();
  } catch {
    expected = '';
  }
  if (expected === '') return { status: 403, message: `admin changes are disabled: no token in ${tokenFile} (admin.tokenFile)` };
  const presented = /^Bearer ([!-~]+)$/.exec(req.headers.authorization ?? '')?.[1];
  if (presented === undefined) return { status: 401, message: 'a bearer token is required' };
  // Digests have equal length, so the comparison time says nothing about the token.
  const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(presented), digest(expected)) ? undefined : { status: 401, message: 'wrong bearer token' };
}

function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) {
        reject(new Error(`the body is over ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
