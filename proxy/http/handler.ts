/**
 * The HTTPS request handler: find the domain by Host, add HSTS, forward to its
 * origin; answer ourselves, with a short plain body and a stable code, when
 * that cannot be done. One access-log line per request, with listed fields only.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { HttpErrorCode } from '../../config/codes.js';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ProxyMetrics } from '../metrics.js';
import { connectionOf } from '../tls/connection.js';
import { coveredBy, type NameIndex, selectByName } from '../tls/names.js';
import { parserRefusal } from './client-error.js';
import type { Expectation, ExpectingHandler } from './expect.js';
import { forward, type OriginFailure, originFailure, type OriginPools } from './forward.js';
import { BUSY_RETRY_AFTER_SECONDS } from './origin-gate.js';
import { closeAfterAnswer, closeIfBodyUnread } from './linger.js';
import { cutAnswer, queueAnswer, whenQueuedClientGone } from './queued.js';
import { AccessAccounts, type AnswerEnd, CLIENT_CLOSED_STATUS, type ForwardFailed, onRecordedAnswerEnd, RECORD, RequestRecord } from './access.js';
import { stalledSend } from './send-stall.js';
import { fieldLinesRefusal, framingRefusal } from './request-framing.js';
import { normaliseTarget } from './target.js';
import type { TrustedPeers } from './trusted-peers.js';

export { type AnswerEnd, CLIENT_CLOSED_STATUS } from './access.js';

/** A routed domain, as the resolved configuration lists it. */
export type Domain = ProxyDomain;

export interface HandlerOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  /** For domains without their own `maxBodyBytes`. */
  readonly maxBodyBytes: number;
  readonly hstsMaxAgeSeconds: number;
  /** Peers whose forwarding headers are kept; none when absent. */
  readonly trustedPeers?: TrustedPeers;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
}

/** Codes of the answers the proxy gives itself (README, "HTTP answers of our own"); the registry is config/codes.ts. */
export type { HttpErrorCode };

/** Our answer to a request (or upgrade) that could not be forwarded. */
export interface Refusal {
  readonly status: number;
  readonly code: HttpErrorCode;
  readonly body: string;
  /** Beyond the usual ones (`Allow` for `OPTIONS *`). */
  readonly headers?: Record<string, string>;
}

/**
 * Where a request for `host` on a connection served a certificate covering
 * `certificateNames` goes: its domain, or our refusal. Shared by requests
 * and upgrades.
 */
export function routeRequest(
  options: Pick<HandlerOptions, 'domains'>,
  host: string | undefined,
  certificateNames: readonly string[],
): { readonly domain: Domain } | { readonly refusal: Refusal; readonly domain: Domain | undefined } {
  const domain = selectByName(options.domains(), host, undefined)?.value;
  // A request for a host the connection's certificate does not cover is
  // refused (RFC 9110 §15.5.20): one tenant's TLS connection must not reach
  // another tenant's origin (domain fronting).
  if (host !== undefined && !covers(certificateNames, host)) {
    return {
      domain,
      refusal: { status: 421, code: 'KEYEDGE_HTTP_MISDIRECTED', body: "misdirected request: this connection's certificate does not cover the host\n" },
    };
  }
  if (domain === undefined) return { domain, refusal: { status: 404, code: 'KEYEDGE_HTTP_UNKNOWN_HOST', body: 'unknown host\n' } };
  return { domain };
}

/**
 * Each certificate's names as an index, built on its first request: checking
 * a Host against every name in turn cost each request time linear in the
 * certificate's SANs (0.75 ms per request with 9,000 of them). Keyed by the
 * served certificate's own list, so it goes with the certificate.
 */
const coverage = new WeakMap<readonly string[], (name: string) => boolean>();

function covers(certificateNames: readonly string[], host: string): boolean {
  if (certificateNames.length === 0) return false;
  let check = coverage.get(certificateNames);
  if (check === undefined) {
    check = coveredBy(certificateNames);
    coverage.set(certificateNames, check);
  }
  return check(host);
}

/** The names the connection's certificate covers, as its TLS listener recorded them; none on a socket no listener secured. */
export function servedNames(socket: object): readonly string[] {
  return connectionOf(socket)?.certificateNames ?? [];
}

/**
 * Calls `account` once, when the answer went out whole ('finish') or was cut
 * ('close' alone: origin or client gone before the end; a queued pipelined
 * answer's client gone, queued.ts). `code()` is our code so
 * far; a cut with none (an origin failure sets its code first) means the
 * client left: KEYEDGE_HTTP_CLIENT_CLOSED, with status 499 when no answer head
 * went out (nginx's "client closed request"), never the 200 node presets.
 */
export function onAnswerEnd(req: IncomingMessage, res: ServerResponse, code: () => HttpErrorCode | undefined, account: (end: AnswerEnd) => void): void {
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    cancel();
    // Its body turned bad and the parser's refusal went out instead (client-error.ts): that is what the client got.
    const refused = parserRefusal(res);
    if (refused !== undefined) return account({ aborted: false, ...refused });
    // An answer ended whose last bytes the client never took is cut by the send clock: its socket's end then leaves
    // nothing unwritten, and writableFinished says true.
    const stalled = stalledSend(res);
    const aborted = !res.writableFinished || stalled;
    // A client that stopped reading is cut by the send-stall timer before forward() can say so.
    const ours = code() ?? (stalled ? 'KEYEDGE_HTTP_SEND_TIMEOUT' : undefined);
    account({
      aborted,
      code: aborted && ours === undefined ? 'KEYEDGE_HTTP_CLIENT_CLOSED' : ours,
      status: aborted && !res.headersSent ? CLIENT_CLOSED_STATUS : res.statusCode,
    });
  };
  // A pipelined answer still queued behind another gets no 'close' of its own (queued.ts).
  const cancel = whenQueuedClientGone(req.socket, res, end);
  res.once('finish', end);
  res.once('close', end);
}

/** Our answer when an origin failed before answering. */
export function originRefusal(failure: OriginFailure): Refusal {
  if (failure === 'timeout') return { status: 504, code: 'KEYEDGE_HTTP_ORIGIN_TIMEOUT', body: 'origin timed out\n' };
  if (failure === 'certificate')
    return { status: 502, code: 'KEYEDGE_HTTP_ORIGIN_CERTIFICATE', body: 'origin unreachable: its certificate failed verification\n' };
  return { status: 502, code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE', body: 'origin unreachable\n' };
}

/** RFC 9110 §10.1.1: a server MAY answer 417 to an expectation it cannot meet; 100-continue is the only one defined. */
export const EXPECTATION_FAILED: Refusal = { status: 417, code: 'KEYEDGE_HTTP_EXPECTATION_FAILED', body: 'expectation not supported: only 100-continue is\n' };

/**
 * Our answer, whatever the host, to a request not to forward: a bad or `*` target (target.ts), a head of too many field
 * lines or framing by a transfer coding keyedge does not forward (request-framing.ts), an unmet expectation. The target first: it is brought to the
 * path the access line logs (an absolute-form one may hold a password).
 */
export function ownAnswer(req: IncomingMessage, expectation: Expectation | undefined): Refusal | undefined {
  return normaliseTarget(req) ?? fieldLinesRefusal(req) ?? framingRefusal(req) ?? (expectation === 'unsupported' ? EXPECTATION_FAILED : undefined);
}

/** RFC 6797 §6.1. */
export function hstsValue(maxAge: number, domain: Domain | undefined): string {
  let value = `max-age=${maxAge}`;
  if (domain?.hsts.includeSubDomains) value += '; includeSubDomains';
  if (domain?.hsts.preload) value += '; preload';
  return value;
}

/** Host without its port (RFC 9110 §7.2); bracketed IPv6 literals keep their brackets. */
export function hostName(host: string | undefined): string | undefined {
  if (host === undefined) return undefined;
  const end = host.startsWith('[') ? host.indexOf(']') + 1 : host.indexOf(':');
  return end > 0 ? host.slice(0, end) : host;
}

/** The HSTS header of each domain object, made once (a reload makes new domain objects); HTTP/2 streams share it (http2/stream.ts). */
export function hstsHeaders(maxAge: number): (domain: Domain | undefined) => Readonly<Record<string, string>> {
  const byDomain = new WeakMap<Domain, Readonly<Record<string, string>>>();
  const none = Object.freeze({ 'strict-transport-security': hstsValue(maxAge, undefined) });
  return (domain) => {
    if (domain === undefined) return none;
    let headers = byDomain.get(domain);
    if (headers === undefined) {
      headers = Object.freeze({ 'strict-transport-security': hstsValue(maxAge, domain) });
      byDomain.set(domain, headers);
    }
    return headers;
  };
}

export function createRequestHandler(options: HandlerOptions): ExpectingHandler {
  const { pools, log, metrics } = options;
  const accounts = new AccessAccounts(log, metrics);
  const failed = forwardFailed(log);
  const hstsOf = hstsHeaders(options.hstsMaxAgeSeconds);
  return (req, res, expectation?: Expectation) => {
    const started = process.hrtime.bigint();
    // Before routing: an absolute-form target's authority is the Host routed on.
    const own = ownAnswer(req, expectation);
    const host = hostName(req.headers.host);
    // The served certificate's names, kept on the connection by its listener (tls/connection.ts).
    const route = routeRequest(options, host, servedNames(req.socket));
    const domain = route.domain;
    const hsts = hstsOf(domain);
    const record = new RequestRecord(req, res, started, domain, hsts, options.trustedPeers, accounts, failed);
    (res as ServerResponse & { [RECORD]?: RequestRecord })[RECORD] = record;
    res.on('finish', onRecordedAnswerEnd);
    res.on('close', onRecordedAnswerEnd);
    // A pipelined answer still queued behind another gets no 'close' of its own; until it ends it is the connection's
    // last answer, the one a retired connection closes after (queued.ts, retire.ts).
    if (res.socket === null) record.cancelQueued = queueAnswer(req.socket, res, () => record.end());
    if (own !== undefined) {
      record.code = own.code;
      record.bodyBytes = answer(res, own, hsts);
      return;
    }
    if ('refusal' in route) {
      record.code = route.refusal.code;
      record.bodyBytes = answer(res, route.refusal, hsts);
      return;
    }
    const target = route.domain;
    const maxBodyBytes = target.maxBodyBytes ?? options.maxBodyBytes;
    record.maxBodyBytes = maxBodyBytes;
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > maxBodyBytes) {
      record.code = 'KEYEDGE_HTTP_BODY_TOO_LARGE';
      // The body is not read: the refusal closes the connection after the answer.
      record.bodyBytes = answer(res, ownFailureRefusal(record.code, maxBodyBytes)!, hsts);
      return;
    }
    record.awaitsContinue = expectation === 'continue';
    forward(pools, target, req, res, record);
  };
}

/** What a forward's failure becomes: our answer when none has started, a cut connection once one has, and a log line. */
function forwardFailed(log: Logger): ForwardFailed {
  return (record, err) => {
    const { req, res, maxBodyBytes } = record;
    const domain = record.domain?.name;
    const refused = refuseFailure(err, req, res, record.extraHeaders, maxBodyBytes);
    if (refused !== undefined) {
      record.code = refused;
      log.info({ code: refused, domain, origin: record.origin, reason: err.message }, 'request refused');
      return;
    }
    // The client left (logged and counted as such when it did): no one to answer, and not the origin's failure.
    if (record.code === 'KEYEDGE_HTTP_CLIENT_CLOSED') return;
    // Once the answer has started, the client can only be told by a cut connection.
    const code = res.headersSent ? 'KEYEDGE_HTTP_ORIGIN_ABORTED' : originRefusal(originFailure(err)).code;
    record.code = code;
    log.warn({ code, domain, origin: record.origin, err }, 'origin request failed');
    if (!res.headersSent) record.bodyBytes = answer(res, originRefusal(originFailure(err)), record.extraHeaders);
    else cutAnswer(res);
  };
}

/**
 * Answers a forward that failed for a reason of ours rather than the
 * origin's, and returns its code; undefined for any other failure. 413 when
 * the body outgrew the limit as it streamed; 408 when it stalled or took too
 * long (RFC 9110 §15.5.9); 503 with Retry-After when the origin's connections
 * and queue are full (§15.6.4). A body left unread is not drained: the
 * connection closes. A client that stopped reading its answer gets nothing
 * more (the code is for the log); once an answer has started, only a cut
 * connection can tell the client. Shared by the HTTPS handler and port 80's
 * ACME path.
 */
export function refuseFailure(
  err: unknown,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
  maxBodyBytes: number,
): HttpErrorCode | undefined {
  const refusal = ownFailureRefusal((err as { code?: string }).code, maxBodyBytes);
  if (refusal === undefined) return undefined;
  if (res.headersSent || res.destroyed || refusal.status === 0) cutAnswer(res);
  else {
    if (!req.complete) res.setHeader('connection', 'close');
    answer(res, refusal, headers);
  }
  return refusal.code;
}

/** Our answer to a failure of ours (forward.ts's HttpFailure codes); undefined for any other. Shared with HTTP/2 (proxy/http2/). */
export function ownFailureRefusal(code: string | undefined, maxBodyBytes: number): Refusal | undefined {
  if (code === 'KEYEDGE_HTTP_BODY_TOO_LARGE') return { status: 413, code, body: `request body over ${maxBodyBytes} bytes\n`, headers: { connection: 'close' } };
  if (code === 'KEYEDGE_HTTP_BODY_TIMEOUT') return { status: 408, code, body: 'request body timed out\n', headers: { connection: 'close' } };
  if (code === 'KEYEDGE_HTTP_ORIGIN_BUSY')
    return { status: 503, code, body: 'origin busy, retry later\n', headers: { 'retry-after': String(BUSY_RETRY_AFTER_SECONDS) } };
  if (code === 'KEYEDGE_HTTP_SEND_TIMEOUT') return { status: 0, code, body: '' };
  return undefined;
}

/**
 * Sends our answer; returns its body's length (for the access line). To a
 * request whose body is still unread it says `Connection: close`, and the
 * connection lingers a bounded time after it, then closes, unless the body is
 * small and declared and nothing else closes the connection: then it is read
 * and dropped (linger.ts). Node would otherwise read and drop an endless body
 * until its request timeout.
 */
export function answer(res: ServerResponse, { status, code, body, headers: own }: Refusal, headers: Readonly<Record<string, string>>): number {
  const length = Buffer.byteLength(body);
  // Before closeIfBodyUnread: a refusal that closes the connection itself (413, 408) is not one that keeps it.
  if (own?.connection !== undefined) res.setHeader('connection', own.connection);
  // An answer that closes the connection: nothing pipelined after its request is processed (RFC 9112 §9.6), its
  // body read or not (linger.ts); Node's parser reads on, and such a request would reach its origin unanswered.
  if (!closeIfBodyUnread(res.req, res) && own?.connection === 'close') closeAfterAnswer(res.req, res);
  res.writeHead(status, {
    ...headers,
    ...own,
    'content-type': 'text/plain; charset=utf-8',
    'content-length': length,
    'x-keyedge-error': code,
  });
  res.end(body);
  return res.req?.method === 'HEAD' ? 0 : length;
}
