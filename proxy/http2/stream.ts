/**
 * One HTTP/2 request: routed by its `:authority`, answered by us (421, 404,
 * 413, 400, `OPTIONS *`) or forwarded (exchange.ts), with one access line
 * and one count per stream, as HTTP/1.1 requests get (proxy/http/handler.ts,
 * whose routing and refusals it shares).
 *
 * Connection coalescing (RFC 9113 §9.1.1, RFC 9110 §7.4.2): a browser sends
 * requests for every name the connection's certificate covers over one
 * connection, so each stream is routed by its own authority, never by the
 * connection's SNI; an authority the certificate does not cover gets 421
 * (RFC 9110 §15.5.20), which makes the browser open a new connection for it.
 *
 * Cost per stream (bench/results/2026-12-04-h2-layers.md): the access line
 * and counts go through HTTP/1.1's accounts (http/access.ts: metric children
 * made once, no redaction pass), one 'close' listener serves both the line
 * and the connection's bookkeeping, the HSTS header is one object per domain.
 */
import type { IncomingHttpHeaders as Http2Headers, OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { constants } from 'node:http2';
import type { ServerResponse } from 'node:http';
import type { HttpErrorCode } from '../../config/codes.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { AccessAccounts } from '../http/access.js';
import type { ProxyMetrics } from '../metrics.js';
import type { NameIndex } from '../tls/names.js';
import { CLIENT_CLOSED_STATUS, type Domain, hostName, originRefusal, ownFailureRefusal, type Refusal, routeRequest } from '../http/handler.js';
import { originFailure, type OriginPools } from '../http/forward.js';
import { stalledSend } from '../http/send-stall.js';
import type { TrustedPeers } from '../http/trusted-peers.js';
import { answeredWhole, bodyPending, forwardStream } from './exchange.js';
import { http1Request, http2Answer } from './headers.js';

/** What a stream needs to know of its connection: read once, after the handshake. */
export interface Http2Connection {
  /** The SNI name the client sent, if any. */
  readonly servername: string | undefined;
  /** The names the served certificate covers: what the connection may be coalesced for. */
  readonly certificateNames: readonly string[];
  readonly peer: string | undefined;
  readonly tlsVersion: string | undefined;
  readonly resumed: boolean | undefined;
}

export interface StreamHandlerOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  readonly maxBodyBytes: number;
  readonly hstsMaxAgeSeconds: number;
  readonly trustedPeers?: TrustedPeers;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
}

/** What the connection's owner (sessions.ts) gives each stream besides the options: made once per worker, or per connection. */
export interface StreamContext {
  /** The HSTS header of a domain (http/handler.ts hstsHeaders: one frozen object per domain). */
  readonly hstsOf: (domain: Domain | undefined) => Readonly<Record<string, string>>;
  /** The access line and request counts, shared with HTTP/1.1's (metric children made once, no redaction pass). */
  readonly accounts: AccessAccounts;
  /** Called first when the stream closes, however it ends (one 'close' listener per stream does both). */
  readonly onClosed: (stream: ServerHttp2Stream) => void;
}

const SERVER_OPTIONS: Refusal = {
  status: 200,
  code: 'KEYEDGE_HTTP_SERVER_OPTIONS',
  body: '',
  headers: { allow: 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS' },
};
const BAD_TARGET: Refusal = { status: 400, code: 'KEYEDGE_HTTP_BAD_TARGET', body: 'bad request target: expected an origin-form :path\n' };

/** `OPTIONS *` (RFC 9113 §8.3.1 allows `*` there) or a `:path` that is not origin-form (CONNECT has none: extended CONNECT is not offered). */
function ownAnswer(method: string, path: string): Refusal | undefined {
  if (method === 'OPTIONS' && path === '*') return SERVER_OPTIONS;
  return method === 'CONNECT' || !path.startsWith('/') ? BAD_TARGET : undefined;
}

export function handleStream(
  options: StreamHandlerOptions,
  context: StreamContext,
  connection: Http2Connection,
  stream: ServerHttp2Stream,
  headers: Http2Headers,
): void {
  const { pools, log } = options;
  const started = process.hrtime.bigint();
  // Every stream keeps an error listener for its whole life: a reset with a code is an 'error', and one nobody hears kills the worker.
  stream.on('error', ignore);
  const request = http1Request(headers);
  const host = hostName(request.authority);
  const route = routeRequest(options, host, connection.certificateNames);
  const domain = route.domain;
  const hsts = context.hstsOf(domain);
  let code: HttpErrorCode | undefined;
  let origin: string | undefined;
  let status: number | undefined;
  let bytes: number | undefined;
  // Reset before our answer was whole: Node ends the writable side itself then, so writableFinished cannot tell.
  let reset = false;
  // 'aborted' and 'close' come once each: `on` spares once()'s wrapper.
  stream.on('aborted', () => (reset = true));
  const onClose = (): void => {
    context.onClosed(stream);
    const aborted = reset || !answeredWhole(stream);
    const ours = code ?? (stalledSend(stream as unknown as ServerResponse) ? 'KEYEDGE_HTTP_SEND_TIMEOUT' : undefined);
    code = aborted && ours === undefined ? 'KEYEDGE_HTTP_CLIENT_CLOSED' : ours;
    context.accounts.countStream({
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      domain,
      method: request.method,
      // The query string is left out: it often carries tokens.
      path: withoutQuery(request.path),
      status: status ?? CLIENT_CLOSED_STATUS,
      bytes,
      origin,
      code,
      tls: connection.tlsVersion,
      resumed: connection.resumed,
      aborted,
    });
  };
  // Node emits 'stream' a tick after the HEADERS: a connection closed in between leaves a stream already closed, with no 'close' to come.
  if (stream.destroyed) {
    reset = true;
    return onClose();
  }
  stream.on('close', onClose);
  const respond = (refusal: Refusal): void => {
    code = refusal.code;
    status = refusal.status;
    answer(stream, refusal, hsts);
  };
  const own = ownAnswer(request.method, request.path);
  if (own !== undefined) return respond(own);
  if ('refusal' in route) return respond(route.refusal);
  const target = route.domain;
  const maxBodyBytes = target.maxBodyBytes ?? options.maxBodyBytes;
  if (Number(request.headers['content-length'] ?? 0) > maxBodyBytes) return respond(ownFailureRefusal('KEYEDGE_HTTP_BODY_TOO_LARGE', maxBodyBytes)!);
  forwardStream(pools, target, stream, request, {
    extraHeaders: hsts,
    maxBodyBytes,
    trusted: options.trustedPeers,
    peer: connection.peer,
    onOrigin: (o) => (origin = o),
    onStatus: (s) => {
      status = s;
      bytes = Number(stream.sentHeaders['content-length'] ?? 0) || undefined;
    },
  }).catch((err: unknown) => {
    const failure = (err as { code?: string }).code;
    const refusal = ownFailureRefusal(failure, maxBodyBytes);
    if (refusal !== undefined) {
      code = refusal.code;
      log.info({ code, domain: target.name, origin, reason: (err as Error).message }, 'request refused');
      // 413 and 408 as they happen mid-body: the rest of the body is refused with the stream (RFC 9113 §8.1).
      if (status === undefined && refusal.status !== 0 && !stream.destroyed) respond(refusal);
      else cut(stream);
      return;
    }
    // The client left (a reset, or the stream closed under the request): no one to answer, and not the origin's failure.
    if (reset || stream.destroyed || stream.closed) return;
    code = status !== undefined ? 'KEYEDGE_HTTP_ORIGIN_ABORTED' : originRefusal(originFailure(err)).code;
    log.warn({ code, domain: target.name, origin, err }, 'origin request failed');
    if (status === undefined) respond(originRefusal(originFailure(err)));
    else cut(stream);
  });
}

function ignore(): void {}

function withoutQuery(path: string): string {
  const query = path.indexOf('?');
  return query === -1 ? path : path.slice(0, query);
}

const cuts = new WeakSet<ServerHttp2Stream>();

/** Once an answer has started, only a reset tells the client it is incomplete (RFC 9113 §8.1). */
function cut(stream: ServerHttp2Stream): void {
  cuts.add(stream);
  if (!stream.destroyed) stream.close(constants.NGHTTP2_INTERNAL_ERROR);
}

/** Whether the stream was reset for a reason of ours (an origin failed mid-answer), not counted against its client. */
export function cutByUs(stream: ServerHttp2Stream): boolean {
  return cuts.has(stream);
}

/** Our answer: a short plain body and a stable code; no connection fields (RFC 9113 §8.2.2), whatever the refusal lists. */
function answer(stream: ServerHttp2Stream, { status, code, body, headers: own }: Refusal, extra: Readonly<Record<string, string>>): void {
  if (stream.destroyed || stream.headersSent) return;
  const head: OutgoingHttpHeaders = http2Answer(
    status,
    { ...extra, ...own },
    {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': String(Buffer.byteLength(body)),
      'x-keyedge-error': code,
    },
  );
  stream.respond(head);
  stream.end(body);
  // A body the client still sends is not read: it may stop (RFC 9113 §8.1).
  stream.once('finish', () => {
    if (bodyPending(stream)) stream.close(constants.NGHTTP2_NO_ERROR);
  });
}
