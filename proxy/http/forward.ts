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
 * Slow clients (body.ts, origin-gate.ts, send-stall.ts): a body is read
 * before the request waits for an origin connection (whole when small), a
 * request takes its place at the origin's gate before undici sees it, and an
 * answer the client stops reading is cut.
 *
 * Retries: a request is sent once. Only a request that cannot have reached
 * the origin and can be repeated safely (an idempotent method, RFC 9110
 * §9.2.2, without a body: nothing streamed is lost) is tried once more, on
 * the next origin, when the first could not be connected to.
 *
 * A client that goes away (mid-upload, while the origin thinks, mid-answer)
 * aborts the origin request: undici closes that origin connection, so nothing
 * waits for an answer no one will read. Every stream here keeps an error
 * listener for as long as it lives: an 'error' nobody listens to is an
 * uncaught exception, which takes the whole worker down.
 */
import { EventEmitter } from 'node:events';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { RequestBody } from './body.js';
import { ClientGone, HttpFailure } from './errors.js';
import type { OriginGate } from './origin-gate.js';
import { continueOnRead } from './expect.js';
import { type OriginPools, type OriginTarget, requestServername } from './origins.js';
import { stalledSend, watchSendStall } from './send-stall.js';
import { whenQueuedClientGone } from './queued.js';
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

function ignore(): void {}

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
 * undici's abort signal for one request (it takes any emitter of 'abort'; an
 * AbortController costs far more per request), fired when the client left
 * before the answer was whole; `gone` says whether it has fired.
 */
class ClientGoneSignal extends EventEmitter {
  gone = false;
}

/**
 * Sends `req` to one of `domain`'s origins and streams the answer into
 * `res`. Resolves when the answer is fully sent; rejects with the failure
 * when no origin could be reached or one failed before answering (the
 * caller answers 502/504 then), or when the answer broke off mid-way.
 */
export async function forward(pools: OriginPools, domain: ProxyDomain, req: IncomingMessage, res: ServerResponse, options: ForwardOptions): Promise<void> {
  const hasBody =
    req.method !== 'GET' && req.method !== 'HEAD' && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  const targets = pools.targets(domain);
  const clientGone = new ClientGoneSignal();
  const onGone = (): void => {
    if (res.writableFinished) return;
    clientGone.gone = true;
    clientGone.emit('abort');
  };
  // A pipelined answer still queued behind another gets no 'close' of its own (queued.ts).
  const cancel = whenQueuedClientGone(req.socket, res, onGone);
  res.once('close', () => {
    cancel();
    onGone();
  });
  const body = hasBody ? await requestBody(pools, req, res, options) : null;
  if (!Buffer.isBuffer(body)) return send(pools, targets, req, res, body, clientGone, options);
  try {
    await send(pools, targets, req, res, body, clientGone, options);
  } finally {
    pools.bodies.release(body);
  }
}

/** The attempts of `forward`, on `targets` in order, once `body` (if any) is at hand. */
async function send(
  pools: OriginPools,
  targets: readonly OriginTarget[],
  req: IncomingMessage,
  res: ServerResponse,
  body: RequestBody | null,
  clientGone: ClientGoneSignal,
  options: ForwardOptions,
): Promise<void> {
  const hasBody = body !== null;
  const upload = hasBody && !Buffer.isBuffer(body);
  for (let attempt = 0; ; attempt++) {
    const target = targets[attempt];
    if (target === undefined) throw new Error('no origin configured');
    options.onOrigin?.(target.url.origin);
    const gate = pools.gate(target);
    const entered = gate.enter(upload, clientGone);
    if (entered !== true) {
      try {
        await waitAdmitted(entered, gate, upload, req, body);
      } catch (err) {
        // Nothing was sent: a busy origin's request may go to the next one whatever its method.
        if (attempt === 0 && targets.length > 1 && (err as { code?: string }).code === 'KEYEDGE_HTTP_ORIGIN_BUSY') continue;
        throw err;
      }
    }
    // undici takes `servername` per request at run time, though its types omit it.
    const request: Dispatcher.RequestOptions & { servername?: string } = {
      path: req.url ?? '/',
      method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
      headers: originRequestHeaders(req.headers, req.socket.remoteAddress, options.proto, target, options.trusted),
      body,
      signal: clientGone,
      ...(target.tls === undefined ? {} : { servername: requestServername(target) }),
    };
    let answer: Dispatcher.ResponseData;
    try {
      answer = await pools.pool(target).request(request);
    } catch (err) {
      gate.leave(upload);
      // A client that went away mid-upload fails the request with its own reset: not the origin's fault.
      const failure = clientGone.gone || req.socket.destroyed ? 'not-origin' : originFailure(err);
      if (failure !== 'not-origin') pools.failed(target);
      if (attempt === 0 && targets.length > 1 && mayRetry(req.method, hasBody, failure)) continue;
      throw err;
    }
    try {
      pools.succeeded(target);
      // Kept for the body's whole life: undici fails it when its connection breaks, at any time.
      answer.body.on('error', ignore);
      // The client left as the answer came: let go of the origin connection (undici's abort may have come too late for the request).
      if (clientGone.gone) return void answer.body.destroy();
      try {
        const responseHeaders = endToEndHeaders(answer.headers as IncomingHttpHeaders);
        if (body !== null && !req.complete) closeAfterEarlyAnswer(req, res);
        res.writeHead(answer.statusCode, { ...responseHeaders, ...options.extraHeaders });
      } catch (err) {
        // A head node refuses to send (a header value with bytes RFC 9110 §5.5 forbids): the body is not read, so let go of its connection.
        answer.body.destroy();
        throw err;
      }
      watchSendStall(answer.body, res, pools.sendTimeoutMs);
      await relay(answer.body, res, clientGone);
    } finally {
      gate.leave(upload);
    }
    if (stalledSend(res)) throw new HttpFailure('KEYEDGE_HTTP_SEND_TIMEOUT', `the client took nothing of the answer for ${pools.sendTimeoutMs} ms`);
    return;
  }
}

/**
 * The body to send on: read whole when small, so a slow upload holds no
 * origin connection (body.ts), streamed past that. A client waiting for 100
 * (Continue) sends nothing until asked: its body streams, and is asked for
 * when an origin connection takes it (expect.ts).
 */
function requestBody(pools: OriginPools, req: IncomingMessage, res: ServerResponse, options: ForwardOptions): Promise<RequestBody> {
  if (options.awaitsContinue === true) return Promise.resolve(continueOnRead(pools.bodies.stream(req, options.maxBodyBytes), res));
  return pools.bodies.read(req, options.maxBodyBytes);
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
 * Waits for a place at `gate` for a request that could not enter at once;
 * once there, a request whose client left or whose streamed body failed
 * while it waited gives its place back and fails.
 */
async function waitAdmitted(entered: Promise<void>, gate: OriginGate, upload: boolean, req: IncomingMessage, body: RequestBody | null): Promise<void> {
  await entered;
  const failed = upload ? (body as Readable).errored : null;
  if (failed === null && !req.socket.destroyed) return;
  gate.leave(upload);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}

/**
 * Streams an origin's body into the client's answer; resolves when it is
 * sent or the client has gone (nothing left to tell it), rejects when the
 * origin's body fails mid-way. stream.pipeline would do the same, but it
 * allocates an AbortController per answer and builds a DOMException when it
 * settles: about a tenth of a keep-alive request's CPU in the keepalive
 * benchmark (bench/README.md).
 */
function relay(body: Readable, res: ServerResponse, clientGone: EventEmitter): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      body.off('error', settle);
      res.off('close', onClose);
      clientGone.off('abort', onClose);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onClose = (): void => {
      // Closed before the last byte went out: the client left; stop reading the origin.
      // (The destroy fails the body with undici's RequestAbortedError: forward() keeps a listener for that.)
      if (!res.writableFinished) body.destroy();
      settle();
    };
    body.once('error', settle);
    res.once('close', onClose);
    // A pipelined answer queued behind another gets no 'close' when the client goes (queued.ts).
    clientGone.once('abort', onClose);
    body.pipe(res);
  });
}
