/**
 * Forwarding a request to one of its domain's origins with undici (one
 * keep-alive Pool per origin, origins.ts), streaming both bodies.
 *
 * Headers: hop-by-hop headers are removed both ways (RFC 9110 §7.6.1: the
 * fixed list plus whatever Connection names); Host is the client's for http://
 * origins and the origin's own for https:// ones unless `originHost` says
 * otherwise; the client's address and scheme go in X-Forwarded-For/-Proto/-Host
 * and Forwarded (RFC 7239). What a client sent in those is dropped, unless it
 * is a trusted peer (trusted-peers.ts): then it is kept and appended to.
 *
 * Retries: a request is sent once. Only a request that cannot have reached
 * the origin and can be repeated safely (an idempotent method, RFC 9110
 * §9.2.2, without a body: nothing streamed is lost) is tried once more, on
 * the next origin, when the first could not be connected to.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import { continueOnRead } from './expect.js';
import { type OriginPools, type OriginTarget, requestServername } from './origins.js';
import type { TrustedPeers } from './trusted-peers.js';

export { OriginPools, type OriginTimeouts } from './origins.js';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]);
const CLIENT_SET = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded']);

export function endToEndHeaders(headers: IncomingHttpHeaders, dropAlso: ReadonlySet<string> = new Set()): Record<string, string | string[]> {
  const named = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((t) => t.trim().toLowerCase())
      .filter((t) => t !== ''),
  );
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name) || dropAlso.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** RFC 7239 §6: an IPv6 address is quoted and bracketed. */
function forwardedFor(address: string): string {
  return address.includes(':') ? `"[${address}]"` : address;
}

/** RFC 9110 §5.6.4 quoted-string. */
function quoted(value: string): string {
  return `"${value.replace(/["\\]/g, '\\$&')}"`;
}

const joined = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value.join(', ') : value);

/**
 * The headers to send to `target` for a request received from `peer`: the
 * client's end-to-end headers, Host by the target's rule, and the forwarding
 * headers (kept and appended to from a trusted peer, replaced otherwise).
 */
export function originRequestHeaders(
  headers: IncomingHttpHeaders,
  peer: string | undefined,
  proto: 'https' | 'http',
  target: OriginTarget,
  trusted: TrustedPeers | undefined,
): Record<string, string | string[]> {
  const keep = trusted?.trusts(peer) ?? false;
  const out = endToEndHeaders(headers, keep ? new Set() : CLIENT_SET);
  const address = peer ?? 'unknown';
  const host = headers.host;
  const xff = keep ? joined(headers['x-forwarded-for']) : undefined;
  out['x-forwarded-for'] = xff === undefined || xff === '' ? address : `${xff}, ${address}`;
  // -Proto and -Host describe the original request: a trusted peer's are what its client used.
  if (!keep || headers['x-forwarded-proto'] === undefined) out['x-forwarded-proto'] = proto;
  if ((!keep || headers['x-forwarded-host'] === undefined) && host !== undefined) out['x-forwarded-host'] = host;
  // RFC 7239 §4: each proxy appends its own element to the list.
  const element = `for=${forwardedFor(address)};proto=${proto}${host !== undefined ? `;host=${quoted(host)}` : ''}`;
  const previous = keep ? joined(headers.forwarded) : undefined;
  out.forwarded = previous === undefined || previous === '' ? element : `${previous}, ${element}`;
  // RFC 9110 §10.1.1: the expectation is met at the edge (expect.ts), not passed on.
  delete out.expect;
  const targetHost = target.host(host);
  if (targetHost === undefined) delete out.host;
  else out.host = targetHost;
  return out;
}

/**
 * The request body as it streams to the origin, failing with
 * KEYEDGE_HTTP_BODY_TOO_LARGE past `max` bytes: a chunked body has no
 * Content-Length to check up front.
 */
function limitBody(req: IncomingMessage, max: number): Readable {
  if (max === Infinity) return req;
  let seen = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > max) done(Object.assign(new Error(`request body over ${max} bytes`), { code: 'KEYEDGE_HTTP_BODY_TOO_LARGE' }));
      else done(null, chunk);
    },
  });
  req.pipe(counted);
  return counted;
}

/** Failures of the connection to the origin before anything was sent: safe to try elsewhere. */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);
/** OpenSSL's verification results as node reports them: the origin's certificate was refused. */
const CERTIFICATE_FAILURES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
/** Failures after the request may have reached the origin. */
const LATER_FAILURES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_HEADERS_TIMEOUT']);

const errorCode = (err: unknown): string => String((err as { code?: unknown }).code ?? '');

/** How a request to an origin failed, for our answer (502/504) and the balancer. */
export type OriginFailure = 'connect' | 'certificate' | 'timeout' | 'broken' | 'not-origin';

export function originFailure(err: unknown): OriginFailure {
  const code = errorCode(err);
  if (CERTIFICATE_FAILURES.has(code)) return 'certificate';
  if (CONNECT_FAILURES.has(code) || code.startsWith('ERR_SSL_')) return 'connect';
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return 'timeout';
  if (LATER_FAILURES.has(code)) return 'broken';
  // Our body limit, a client that went away: the origin is not at fault.
  return 'not-origin';
}

/** RFC 9110 §9.2.2. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** Whether a request that failed with `failure` on one origin may be sent to another. */
export function mayRetry(method: string | undefined, hasBody: boolean, failure: OriginFailure): boolean {
  return !hasBody && IDEMPOTENT.has(method ?? 'GET') && (failure === 'connect' || failure === 'certificate');
}

export interface ForwardOptions {
  /** Set on the answer after the origin's headers (HSTS). */
  readonly extraHeaders: Record<string, string>;
  /** The scheme the client used. */
  readonly proto: 'https' | 'http';
  readonly maxBodyBytes: number;
  readonly trusted?: TrustedPeers;
  /** Told each origin tried, before the attempt (for the access log). */
  readonly onOrigin?: (origin: string) => void;
  /** The client awaits 100 (Continue) before sending its body (expect.ts). */
  readonly awaitsContinue?: boolean;
}

/**
 * Sends `req` to one of `domain`'s origins and streams the answer into
 * `res`. Resolves when the answer is fully sent; rejects with the failure
 * when no origin could be reached or one failed before answering (the
 * caller answers 502/504 then), or when the answer broke off mid-way.
 */
export async function forward(pools: OriginPools, domain: ProxyDomain, req: IncomingMessage, res: ServerResponse, options: ForwardOptions): Promise<void> {
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD' && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  const targets = pools.targets(domain);
  const body = hasBody ? requestBody(req, res, options) : null;
  for (let attempt = 0; ; attempt++) {
    const target = targets[attempt];
    if (target === undefined) throw new Error('no origin configured');
    options.onOrigin?.(target.url.origin);
    // undici takes `servername` per request at run time, though its types omit it.
    const request: Dispatcher.RequestOptions & { servername?: string } = {
      path: req.url ?? '/',
      method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
      headers: originRequestHeaders(req.headers, req.socket.remoteAddress, options.proto, target, options.trusted),
      body,
      ...(target.tls === undefined ? {} : { servername: requestServername(target) }),
    };
    let answer: Dispatcher.ResponseData;
    try {
      answer = await pools.pool(target).request(request);
    } catch (err) {
      // A client that went away mid-upload fails the request with its own reset: not the origin's fault.
      const failure = req.socket.destroyed ? 'not-origin' : originFailure(err);
      if (failure !== 'not-origin') pools.failed(target);
      if (attempt === 0 && targets.length > 1 && mayRetry(req.method, hasBody, failure)) continue;
      throw err;
    }
    pools.succeeded(target);
    const responseHeaders = endToEndHeaders(answer.headers as IncomingHttpHeaders);
    if (body !== null && !req.complete) closeAfterEarlyAnswer(req, res);
    res.writeHead(answer.statusCode, { ...responseHeaders, ...options.extraHeaders });
    await relay(answer.body, res);
    return;
  }
}

/** The body to send on: counted against the limit, and asked for with 100 (Continue) when the client waits for that. */
function requestBody(req: IncomingMessage, res: ServerResponse, options: ForwardOptions): Readable {
  const body = limitBody(req, options.maxBodyBytes);
  return options.awaitsContinue === true ? continueOnRead(body, res) : body;
}

/** How long a connection closed after an early answer keeps reading what the client still sends (nginx: lingering_timeout 5 s). */
const LINGER_MS = 5000;

/**
 * The origin answered before the client's body was all read (a 401 or 417
 * before reading it): undici stops sending the body, so the rest of it cannot
 * be told from a next request, and the answer says `Connection: close`.
 * Node then ends the socket and destroys it as soon as the end is flushed;
 * with the client still sending, closing on unread bytes resets the
 * connection, and the client may lose the answer. So the connection lingers
 * (RFC 9112 §9.6): half-closed, reading and dropping what still arrives, until
 * the client closes or LINGER_MS pass.
 */
function closeAfterEarlyAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('connection', 'close');
  const socket = req.socket;
  res.once('finish', () => {
    if (req.complete || socket.destroyed) return;
    // Registered by Node's destroySoon() in its own 'finish' listener, which runs before this one.
    socket.removeListener('finish', socket.destroy);
    const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
    socket.once('close', () => clearTimeout(timer));
    socket.once('end', () => socket.destroy());
    req.resume();
  });
}

/**
 * Streams an origin's body into the client's answer; resolves when it is
 * sent or the client has gone (nothing left to tell it), rejects when the
 * origin's body fails mid-way. stream.pipeline would do the same, but it
 * allocates an AbortController per answer and builds a DOMException when it
 * settles: about a tenth of a keep-alive request's CPU in the keepalive
 * benchmark (bench/README.md).
 */
function relay(body: Readable, res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      body.off('error', settle);
      res.off('close', onClose);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onClose = (): void => {
      // Closed before the last byte went out: the client left; stop reading the origin.
      if (!res.writableFinished) body.destroy();
      settle();
    };
    body.once('error', settle);
    res.once('close', onClose);
    body.pipe(res);
  });
}
