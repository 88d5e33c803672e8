/**
 * The proxy's admin HTTP listener (loopback by default), served by the
 * cluster primary:
 *   GET /metrics  every worker's metrics, summed (prom-client AggregatorRegistry)
 *   GET /healthz  200 while the primary runs
 *   GET /readyz   200 once every worker has loaded its certificates and the
 *                 key server answers a ping; 503 with the reason otherwise.
 *                 A fleet node whose etcd is away answers 200 "degraded: ..."
 *                 (with x-keyedge-degraded): it serves its last good state and
 *                 should keep its traffic, but refuses changes
 *   GET /config   the running configuration as JSON (it holds no secrets:
 *                 PINs and keys are never in a proxy config; paths are shown)
 *   GET /certs    every certificate entry: names, serial, issuer, notAfter,
 *                 key id, loaded-at; refused entries with the reason
 * and, with `Authorization: Bearer <token>` (RFC 6750 §2.1; the token is
 * read from admin.tokenFile on each request, so it can be rotated live):
 *   POST /reload, POST /certs/reload   reload the config file and the store
 *   PUT /certs/:name                   a PEM chain for a store entry: validated,
 *                                      then written to the store and reloaded
 *   POST /tickets/rotate               a new session-ticket key; answers once
 *                                      every worker encrypts with it (never a key);
 *                                      in a fleet, for every node
 *   PUT /routes/:name, DELETE /routes/:name   (fleet only) a route, as in the
 *                                      config's `domains[]`, kept in etcd
 *   POST /acme/issue                   {"domains": [...], "name"?, "replaceDomains"?}:
 *                                      a managed certificate from the ACME CA; answers
 *                                      once it serves (502 KEYEDGE_ERR_ACME otherwise;
 *                                      409 KEYEDGE_ERR_ACME_DOMAINS when it would drop
 *                                      names of the entry, acme/domain-lists.ts)
 *   POST /acme/renew/:name             renew a managed certificate now
 * At most MAX_ADMIN_CONNECTIONS connections are open at once; more are closed
 * at accept, and the ones already open keep working.
 * Refusals answer 4xx with the reason as JSON; the running state is kept:
 *   400 KEYEDGE_ERR_CERT_STORE       not an entry name (`..`, `.hidden`, a `/`)
 *   409 KEYEDGE_ERR_CERT_EXISTS      the name is a certificate of the config file
 *   413 KEYEDGE_HTTP_BODY_TOO_LARGE  the body is over MAX_UPLOAD_BYTES
 *   413 KEYEDGE_ERR_STORE_TOO_LARGE  the value is past etcd's request limit: no retry helps
 *   422 KEYEDGE_ERR_CERTIFICATE      the chain is refused (with `reason`)
 *   422 KEYEDGE_ERR_CONFIG           the route is refused (what was expected)
 *   503 KEYEDGE_ERR_STORE_UNAVAILABLE  the fleet's etcd is unreachable: retry later
 * A body over the limit is read and dropped up to a bound (readBody), so the
 * client sees the 413 rather than a reset of a connection it still writes to,
 * as nginx's lingering close does; past the bound, the 413 goes out with
 * `connection: close`. With `Expect: 100-continue`, `100 Continue` goes only
 * to a change the control API takes and would not refuse before its body: a
 * read, or any change without a control API, gets its answer at once, a change
 * without the token its 401/403 (checked first), a declared body over the limit
 * its 413, and the connection ends.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { KeyedgeError, UsageError } from '../keyserver/shared/errors.js';
import { CertificateError, CertificateStoreError } from './certs/errors.js';
import { STORE_ENTRY_NAME } from './certs/store.js';
import { StoreUnavailableError, StoreValueTooLargeError } from './store/storage.js';
import type { ReloadReport } from './serving/coordinator.js';
import { listen } from '../keyserver/shared/listen.js';

/** A PEM chain of a leaf and a few intermediates is a few KiB; anything near this is not one. */
const MAX_UPLOAD_BYTES = 256 * 1024;
/** Past the limit, this much more is read and dropped before answering 413 (nginx's lingering close reads for up to 5 s). */
const DISCARD_BYTES = 4 * 1024 * 1024;
const DISCARD_MS = 5_000;
/** How often a body Node drops unread is measured against DISCARD_BYTES. */
const DRAIN_POLL_MS = 20;
/** A request's head arrives at once from any scraper or client; a whole upload (MAX_UPLOAD_BYTES) within a minute. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 60_000;
const TIMEOUT_CHECK_MS = 1_000;
/**
 * Connections the admin listener holds at once; more are closed as soon as they are accepted. Each is a file
 * descriptor of the primary, which every worker depends on: without a cap, one client opening thousands could take
 * the descriptors the primary needs for its workers, the store and the key server. Scrapers, probes and an operator
 * keep a few open; this is far above that and far below the descriptor limit.
 */
export const MAX_ADMIN_CONNECTIONS = 64;

export interface AdminControl {
  readonly tokenFile: string;
  readonly reload: () => Promise<ReloadReport>;
  /** Validates and stores a chain for entry `name`, then reloads; rejects with a CertificateError when refused. */
  readonly putCertificate: (name: string, chainText: string) => Promise<ReloadReport>;
  readonly certificates: () => unknown;
  /** True for a name the config file's `certificates` use: the store may not take it. */
  readonly ownedByConfig: (name: string) => boolean;
  /** Rotates the session-ticket keys; resolves with counts, never key material. */
  readonly rotateTicketKeys?: () => Promise<unknown>;
  /** Stores a route (a `domains[]` entry) for domain `name`, then reloads; fleet only. */
  readonly putRoute?: (name: string, body: unknown) => Promise<ReloadReport>;
  /** Removes a stored route, then reloads; undefined when there was none. */
  readonly deleteRoute?: (name: string) => Promise<ReloadReport | undefined>;
  /** ACME (when configured): issue a managed certificate for these domains, or renew one now; resolve once it serves. */
  readonly acmeIssue?: (domains: readonly string[], name?: string, replaceDomains?: boolean) => Promise<unknown>;
  readonly acmeRenew?: (name: string) => Promise<unknown>;
}

export interface AdminSources {
  readonly metrics: () => Promise<{ readonly contentType: string; readonly body: string }>;
  /** Resolves with undefined when ready, or the reason it is not. */
  readonly notReadyReason: () => Promise<string | undefined>;
  /** Why the node serves in degraded mode (its shared store is away), or undefined. */
  readonly degradedReason?: () => string | undefined;
  readonly config: () => ProxyConfig;
  readonly control?: AdminControl;
}

export function startProxyAdmin(host: string, port: number, sources: AdminSources): Promise<http.Server> {
  const handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    boundDrain(req, res);
    const path = (req.url ?? '/').split('?')[0];
    const text = (status: number, body: string): void => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
    };
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body, null, 2)}\n`);
    };
    const control = sources.control;
    const failed = (err: Error): void =>
      json(putFailureStatus(err), {
        error: { code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_CERTIFICATE', reason: (err as { reason?: string }).reason, message: err.message },
      });
    if (CHANGES.has(req.method ?? '')) {
      if (control === undefined) return text(404, 'not found\n');
      const denied = authorisationFailure(req, control.tokenFile);
      if (denied !== undefined) {
        if (!hasBody(req)) return refuse(res, denied, false);
        // A body nobody may send is dropped as one over the limit is (readBody): up to DISCARD_BYTES / DISCARD_MS, so the
        // answer reaches a client that finished writing, then the connection ends. Node would otherwise read and drop it
        // to its end, however long (an endless chunked one for ever), to keep the connection.
        void readBody(req, 0).then((body) => refuse(res, denied, typeof body !== 'string' && body.close));
        return;
      }
      const upload = /^\/certs\/(.+)$/.exec(path ?? '');
      const route = /^\/routes\/([^/]+)$/.exec(path ?? '');
      if (route !== null && req.method === 'PUT' && control.putRoute !== undefined) {
        const name = entryName(route[1]!) ?? '';
        const putRoute = control.putRoute;
        readBody(req, MAX_UPLOAD_BYTES).then((body) => {
          if (typeof body !== 'string') return tooLarge(res, body.close);
          let parsed: unknown;
          try {
            parsed = JSON.parse(body);
          } catch {
            return json(422, { error: { code: 'KEYEDGE_ERR_CONFIG', message: 'the route is not valid JSON' } });
          }
          putRoute(name, parsed).then((report) => json(report.error === undefined ? 200 : 409, report), failed);
        });
        return;
      }
      if (route !== null && req.method === 'DELETE' && control.deleteRoute !== undefined) {
        control
          .deleteRoute(entryName(route[1]!) ?? '')
          .then(
            (report) =>
              report === undefined ? json(404, { error: { message: 'no such route in the store' } }) : json(report.error === undefined ? 200 : 409, report),
            failed,
          );
        return;
      }
      if (req.method === 'POST' && (path === '/reload' || path === '/certs/reload')) {
        control.reload().then(
          (report) => json(report.error === undefined ? 200 : 409, report),
          (err: Error) => json(500, { error: { message: err.message } }),
        );
        return;
      }
      if (req.method === 'POST' && path === '/tickets/rotate' && control.rotateTicketKeys !== undefined) {
        control.rotateTicketKeys().then((report) => json(200, report), failed);
        return;
      }
      if (req.method === 'POST' && (path === '/acme/issue' || path?.startsWith('/acme/renew/'))) {
        acmeRequest(req, path, control).then(
          (answer) => json(200, answer),
          (err: Error) =>
            json(err instanceof KeyedgeError ? (ACME_STATUS[err.code] ?? 502) : 502, {
              error: {
                code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_ACME',
                problem: (err as { problem?: string }).problem,
                message: err.message,
              },
            }),
        );
        return;
      }
      if (req.method === 'PUT' && upload !== null) {
        const name = entryName(upload[1]!);
        // Judged before the body is read: a refused name costs no upload.
        if (name === undefined || !STORE_ENTRY_NAME.test(name)) {
          return json(400, {
            error: {
              code: 'KEYEDGE_ERR_CERT_STORE',
              message: `'${(name ?? upload[1]!).slice(0, 80)}' is not a certificate name: expected 1-64 letters, digits, _ . - (not starting with ".")`,
            },
          });
        }
        if (control.ownedByConfig(name)) {
          return json(409, {
            error: {
              code: 'KEYEDGE_ERR_CERT_EXISTS',
              message: `certificate '${name}' is configured in the proxy config file; change it there, or choose another name`,
            },
          });
        }
        readBody(req, MAX_UPLOAD_BYTES).then((body) => {
          if (typeof body !== 'string') return tooLarge(res, body.close);
          control.putCertificate(name, body).then((report) => json(report.error === undefined ? 200 : 409, report), failed);
        });
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
          (reason) => {
            if (reason !== undefined) return text(503, `not ready: ${reason}\n`);
            const degraded = sources.degradedReason?.();
            if (degraded === undefined) return text(200, 'ready\n');
            res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'x-keyedge-degraded': 'store' }).end(`degraded: ${degraded}\n`);
          },
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
  };
  // A head has HEADERS_TIMEOUT_MS, a whole request (an upload) REQUEST_TIMEOUT_MS; a slow client (slowloris) held a
  // connection of the primary for Node's 60 s and 300 s, checked every 30 s.
  const server = http.createServer(
    { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: TIMEOUT_CHECK_MS },
    handle,
  );
  server.maxConnections = MAX_ADMIN_CONNECTIONS;
  // Expect: 100-continue (RFC 9110 §10.1.1): the 100 invites the body, so it goes only to a change that reads one
  // (readsBody) and is not refused before it. Every change's token is checked first: its 401 or 403 at once, so that no
  // client without the token is invited to send up to the body limit, nor left waiting for a body it holds back for the
  // 100. Then a declared body over the limit gets its 413. Anything else gets its final answer at once, and the
  // connection ends after it if a body was declared (the client may send it anyway once it tires of waiting; it is not
  // read).
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const control = sources.control;
    const denied = control !== undefined && CHANGES.has(req.method ?? '') ? authorisationFailure(req, control.tokenFile) : undefined;
    if (denied !== undefined) return refuse(res, denied, true);
    if (control === undefined || !readsBody(req, control)) {
      if (hasBody(req)) res.shouldKeepAlive = false;
      return handle(req, res);
    }
    if (declaredLength(req) > MAX_UPLOAD_BYTES) return tooLarge(res, true);
    res.writeContinue();
    handle(req, res);
  });
  return listen(server, { host, port });
}

/** Whether `host` is a loopback address or name: an admin API elsewhere answers its reads to anyone who reaches it. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/i.test(host);
}

/** The entry name of a `/certs/:name` path, percent-decoded; undefined when it does not decode. */
function entryName(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

function putFailureStatus(err: Error): number {
  if (err instanceof StoreUnavailableError) return 503;
  if (err instanceof StoreValueTooLargeError) return 413;
  if (err instanceof CertificateError || (err instanceof KeyedgeError && err.code === 'KEYEDGE_ERR_CONFIG')) return 422;
  if (err instanceof CertificateStoreError) return err.code === 'KEYEDGE_ERR_CERT_EXISTS' ? 409 : err.code === 'KEYEDGE_ERR_CERT_NOT_FOUND' ? 404 : 500;
  // The key server could not be asked for the chain's key.
  if (err instanceof KeyedgeError && (err.code === 'KEYEDGE_ERR_CLOSED' || err.code === 'KEYEDGE_ERR_TIMEOUT')) return 503;
  return 500;
}

/**
 * A body the answer left unread (a GET's, a 404's, a refused one still arriving) is read and dropped by Node to its end
 * to keep the connection, however long, an endless chunked one for ever: bounded here as readBody bounds one over the
 * limit (DISCARD_BYTES more or DISCARD_MS), past which the connection ends. Any client that reaches the port may send one.
 */
function boundDrain(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.once('finish', () => {
    if (req.complete) return;
    // Node's dump emits no 'data' (it drops the bytes in its parser): what it read is the socket's count.
    const socket = req.socket;
    const from = socket.bytesRead;
    // Both listeners go with the first: a kept-alive connection carries many requests, and would gather one per request.
    const done = (): void => {
      clearTimeout(timer);
      clearInterval(poll);
      req.removeListener('end', done);
      socket.removeListener('close', done);
    };
    const cut = (): void => {
      done();
      socket.destroy();
    };
    const timer = setTimeout(cut, DISCARD_MS).unref();
    // Past what readBody lets Node drop for a declared length it answered at once (413 without Connection: close).
    const bound = MAX_UPLOAD_BYTES + DISCARD_BYTES;
    const poll = setInterval(() => socket.bytesRead - from > bound && cut(), DRAIN_POLL_MS).unref();
    req.once('end', done);
    socket.once('close', done);
  });
}

/** Whether `req` is a change `control` reads a body for: a certificate upload, a route (fleet), an ACME issue. */
function readsBody(req: http.IncomingMessage, control: AdminControl): boolean {
  const path = (req.url ?? '/').split('?')[0] ?? '';
  if (req.method === 'PUT') return /^\/certs\/./.test(path) || (/^\/routes\/[^/]+$/.test(path) && control.putRoute !== undefined);
  return req.method === 'POST' && path === '/acme/issue' && control.acmeIssue !== undefined;
}

/** Whether a body follows the request's head: a non-zero Content-Length, or any Transfer-Encoding (RFC 9112 §6.3). */
function hasBody(req: http.IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || declaredLength(req) > 0;
}

function declaredLength(req: http.IncomingMessage): number {
  const length = Number(req.headers['content-length'] ?? 0);
  return Number.isFinite(length) ? length : Infinity;
}

/** 413; with `close`, the connection ends after it (the rest of the body is not read). */
function tooLarge(res: http.ServerResponse, close: boolean): void {
  const body = `${JSON.stringify({ error: { code: 'KEYEDGE_HTTP_BODY_TOO_LARGE', message: `the body is over ${MAX_UPLOAD_BYTES} bytes` } }, null, 2)}\n`;
  res
    .writeHead(413, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'x-keyedge-error': 'KEYEDGE_HTTP_BODY_TOO_LARGE',
      ...(close ? { connection: 'close' } : {}),
    })
    .end(body);
}

/** The methods that change something: each needs the admin token. */
const CHANGES: ReadonlySet<string> = new Set(['POST', 'PUT', 'DELETE']);

/** The 401 or 403 of a change without the token; with `close`, the connection ends after it. */
function refuse(res: http.ServerResponse, denied: { status: number; message: string }, close: boolean): void {
  res
    .writeHead(denied.status, {
      'content-type': 'text/plain; charset=utf-8',
      ...(denied.status === 401 ? { 'www-authenticate': 'Bearer realm="keyedge-admin"' } : {}),
      ...(close ? { connection: 'close' } : {}),
    })
    .end(`${denied.message}\n`);
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
  // The scheme is case-insensitive (RFC 9110 §11.1: "bearer" and "BEARER" are Bearer), followed by 1*SP.
  const presented = /^bearer +([!-~]+)$/i.exec(req.headers.authorization ?? '')?.[1];
  if (presented === undefined) return { status: 401, message: 'a bearer token is required' };
  // Digests have equal length, so the comparison time says nothing about the token.
  const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(presented), digest(expected)) ? undefined : { status: 401, message: 'wrong bearer token' };
}

/** A body over the limit; `close` when what is left of it will not be read (the connection ends after the 413). */
interface TooLarge {
  readonly close: boolean;
}

/**
 * The body as text, or TooLarge. A declared length over the limit is answered
 * at once: Node reads and drops the rest of a declared body after the answer,
 * which keeps the connection usable, so that is left to it up to DISCARD_BYTES
 * past the limit. A chunked body is read and dropped past the limit until it
 * ends, up to DISCARD_BYTES / DISCARD_MS, so the 413 reaches a client that has
 * finished writing. Never rejects.
 */
function readBody(req: http.IncomingMessage, limit: number): Promise<string | TooLarge> {
  return new Promise((resolve) => {
    const declared = declaredLength(req);
    if (declared > limit) return resolve({ close: declared > limit + DISCARD_BYTES });
    const chunks: Buffer[] = [];
    let length = 0;
    let timer: NodeJS.Timeout | undefined;
    const over = (close: boolean): void => {
      clearTimeout(timer);
      resolve({ close });
    };
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length <= limit) chunks.push(chunk);
      else if (length > limit + DISCARD_BYTES) over(true);
      else if (timer === undefined) {
        chunks.length = 0;
        timer = setTimeout(() => over(true), DISCARD_MS);
      }
    });
    req.on('end', () => (length > limit ? over(false) : resolve(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', () => over(true));
  });
}

/** The status of an ACME request's refusal by its code; anything else is the CA's or the order's failure, 502. */
const ACME_STATUS: Partial<Record<KeyedgeError['code'], number>> = {
  KEYEDGE_ERR_USAGE: 400,
  KEYEDGE_ERR_CERT_NOT_FOUND: 404,
  // The entry records other names than those asked for (acme/domain-lists.ts): a conflict with its state, nothing ordered.
  KEYEDGE_ERR_ACME_DOMAINS: 409,
};

/** POST /acme/issue and /acme/renew/NAME: the body's domains, or the entry name from the path. */
async function acmeRequest(req: http.IncomingMessage, path: string, control: AdminControl): Promise<unknown> {
  const { acmeIssue, acmeRenew } = control;
  if (acmeIssue === undefined || acmeRenew === undefined) throw new UsageError('ACME is not configured (the proxy config has no "acme")');
  if (path.startsWith('/acme/renew/')) {
    const name = entryName(path.slice('/acme/renew/'.length));
    if (name === undefined || !STORE_ENTRY_NAME.test(name)) throw new UsageError('not a certificate name');
    return acmeRenew(name);
  }
  const body = await readBody(req, 64 * 1024);
  if (typeof body !== 'string') throw new UsageError('the request body is too large');
  let parsed: { domains?: unknown; name?: unknown; replaceDomains?: unknown };
  try {
    parsed = JSON.parse(body) as typeof parsed;
  } catch {
    throw new UsageError('expected a JSON body {"domains": ["a.example", ...], "name"?: "entry", "replaceDomains"?: true}');
  }
  const domains = parsed.domains;
  if (!Array.isArray(domains) || domains.length === 0 || domains.length > 100 || !domains.every((d) => typeof d === 'string' && DNS_NAME.test(d))) {
    throw new UsageError('"domains" must be 1-100 lower-case DNS names');
  }
  if (parsed.name !== undefined && (typeof parsed.name !== 'string' || !STORE_ENTRY_NAME.test(parsed.name)))
    throw new UsageError('"name" is not a certificate name');
  if (parsed.replaceDomains !== undefined && typeof parsed.replaceDomains !== 'boolean') throw new UsageError('"replaceDomains" must be true or false');
  return acmeIssue(domains as string[], parsed.name as string | undefined, parsed.replaceDomains === true);
}

/** A lower-case DNS name, optionally with one leading wildcard label (RFC 6125 §6.4.3). */
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
