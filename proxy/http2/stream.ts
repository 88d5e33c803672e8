/**
 * One HTTP/2 request: routed by its `:authority`, answered by us (421, 404,
 * 413, 431, 400, `OPTIONS *`) or forwarded (exchange.ts), with one access line
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
 *
 * The answers given before routing are own-answers.ts's; how an answer ends
 * when we end it (our refusal, a reset, a stalled end's cut), stream-end.ts's.
 */
import { constants, type IncomingHttpHeaders as Http2Headers, type ServerHttp2Stream } from 'node:http2';
import type { ServerResponse } from 'node:http';
import type { HttpErrorCode } from '../../config/codes.js';
import type { AccessAccounts, StreamAccess } from '../http/access.js';
import type { NameIndex } from '../tls/names.js';
import {
  CLIENT_CLOSED_STATUS,
  type Domain,
  type HandlerOptions,
  hostName,
  originRefusal,
  ownFailureRefusal,
  type Refusal,
  routeRequest,
} from '../http/handler.js';
import { originFailure } from '../http/forward.js';
import { stalledSend } from '../http/send-stall.js';
import type { TrustedPeers } from '../http/trusted-peers.js';
import { answeredWhole, forwardStream, noteEndSent, type StreamForwardOptions } from './exchange.js';
import { type Http1Request, http1Request } from './headers.js';
import { streamEnded } from './origin-handler.js';
import { HEADERS_TOO_LARGE, headersOverLimit, ownAnswer } from './own-answers.js';
import { answer, cut, destroyedClosed, stalledEnd } from './stream-end.js';
import { boundUnreadChunks, tinyFramesReset } from './unread-chunks.js';

/** What a stream needs to know of its connection: read once, after the handshake. */
export interface Http2Connection {
  /** The SNI name the client sent, if any. */
  readonly servername: string | undefined;
  /** The names the served certificate covers: what the connection may be coalesced for. */
  readonly certificateNames: readonly string[];
  readonly peer: string | undefined;
  /** Who the connection counts as for per-client shares (tls/connection.ts). */
  readonly client: string | undefined;
  readonly tlsVersion: string | undefined;
  readonly resumed: boolean | undefined;
}

/** HTTP/1.1's (http/handler.ts), and the header list's bound. */
export interface StreamHandlerOptions extends HandlerOptions {
  /** `maxHeaderBytes`: the request header list's bound (RFC 9113 §6.5.2), checked here too (`headersOverLimit`). */
  readonly limits?: { readonly maxHeaderBytes: number };
}

/** What the connection's owner (sessions.ts) gives each stream besides the options: made once per worker, or per connection. */
export interface StreamContext {
  /** The HSTS header of a domain (http/handler.ts hstsHeaders: one frozen object per domain). */
  readonly hstsOf: (domain: Domain | undefined) => Readonly<Record<string, string>>;
  /** The access line and request counts, shared with HTTP/1.1's (metric children made once, no redaction pass). */
  readonly accounts: AccessAccounts;
  /** Called first when the stream closes, however it ends (one 'close' listener per stream does both). */
  readonly onClosed: (stream: ServerHttp2Stream) => void;
  /** The connection's last route, reused while its streams ask for the same host under the same configuration. */
  lastRoute?: RouteMemo;
}

type Route = ReturnType<typeof routeRequest>;
interface RouteMemo {
  readonly host: string | undefined;
  /** Weakly: an idle connection must not keep a replaced configuration's whole domain index until its next stream. */
  readonly domains: WeakRef<NameIndex<Domain>>;
  readonly route: Route;
}

/**
 * The route of `host` on this connection: a browser's streams on one
 * connection nearly all name the same host, so the last answer is kept (the
 * certificate's names are the connection's own; a reload makes a new domain
 * index, which misses). Routes are read, never changed. Cost: a WeakRef per
 * miss, its deref() per stream; what the memo holds past a reload is the one
 * route (its domain object), not the old index.
 */
function routeOf(options: StreamHandlerOptions, context: StreamContext, host: string | undefined, certificateNames: readonly string[]): Route {
  const domains = options.domains();
  const memo = context.lastRoute;
  if (memo !== undefined && memo.host === host && memo.domains.deref() === domains) return memo.route;
  const route = routeRequest({ domains: () => domains }, host, certificateNames);
  context.lastRoute = { host, domains: new WeakRef(domains), route };
  return route;
}

export function handleStream(
  options: StreamHandlerOptions,
  context: StreamContext,
  connection: Http2Connection,
  stream: ServerHttp2Stream,
  headers: Http2Headers,
  rawHeaders?: readonly string[],
): void {
  const request = http1Request(headers, rawHeaders);
  const route = routeOf(options, context, hostName(request.authority), connection.certificateNames);
  const record = new StreamRecord(options, context, connection, stream, request, route.domain);
  (stream as Recorded)[RECORD] = record;
  // Every stream keeps an error listener for its whole life: a reset with a code is an 'error', and one nobody hears kills the worker.
  stream.on('error', ignore);
  stream.on('aborted', onStreamAborted);
  // Node emits 'stream' a tick after the HEADERS: a connection closed in between leaves a stream already closed, with no 'close' to come.
  if (stream.destroyed) {
    record.reset = true;
    return record.closed();
  }
  stream.on('close', onStreamClose);
  // Before anything of its body is read or left unread: a body sent a few bytes a frame is not held as an object a frame.
  // A request without one (END_STREAM on its HEADERS: most, GETs) has nothing to bound, and its stream keeps Node's shape.
  if (!stream.endAfterHeaders) {
    boundUnreadChunks(stream);
    noteEndSent(stream);
  }
  const maxHeaderBytes = options.limits?.maxHeaderBytes;
  if (maxHeaderBytes !== undefined && rawHeaders !== undefined && headersOverLimit(rawHeaders, maxHeaderBytes)) return record.respond(HEADERS_TOO_LARGE);
  const own = ownAnswer(request);
  if (own !== undefined) return record.respond(own);
  if ('refusal' in route) return record.respond(route.refusal);
  const target = route.domain;
  const maxBodyBytes = target.maxBodyBytes ?? options.maxBodyBytes;
  record.maxBodyBytes = maxBodyBytes;
  if (Number(request.headers['content-length'] ?? 0) > maxBodyBytes) return record.respond(ownFailureRefusal('KEYEDGE_HTTP_BODY_TOO_LARGE', maxBodyBytes)!);
  forwardStream(options.pools, target, stream, request, record);
}

const RECORD = Symbol('keyedge.stream-record');
type Recorded = ServerHttp2Stream & { [RECORD]?: StreamRecord };

/**
 * One stream as this module follows it: what its access line says, and the
 * options of its forward (it is both, so a stream makes one object here, and
 * its listeners are module functions that find it on the stream).
 */
class StreamRecord implements StreamForwardOptions, StreamAccess {
  readonly options: StreamHandlerOptions;
  readonly context: StreamContext;
  readonly stream: ServerHttp2Stream;
  readonly started = process.hrtime.bigint();
  readonly request: Http1Request;
  readonly domain: Domain | undefined;
  // StreamAccess: what the access line says.
  seconds = 0;
  readonly method: string;
  readonly tls: string | undefined;
  readonly resumed: boolean | undefined;
  status = CLIENT_CLOSED_STATUS;
  /** The answer's body bytes that went out: 0 until an answer starts, as HTTP/1.1's line says for a client gone before one. */
  bytes = 0;
  origin: string | undefined = undefined;
  code: HttpErrorCode | undefined = undefined;
  aborted = false;
  /** Reset before our answer was whole: Node ends the writable side itself then, so writableFinished cannot tell. */
  reset = false;
  /** Our answer or the origin's head went out. */
  answered = false;
  /** Our answer was handed to nghttp2, and Node has not written since (`flushed`). */
  unsent = false;
  // StreamForwardOptions
  readonly extraHeaders: Readonly<Record<string, string>>;
  maxBodyBytes: number;
  readonly trusted: TrustedPeers | undefined;
  readonly peer: string | undefined;
  readonly client: string | undefined;

  constructor(
    options: StreamHandlerOptions,
    context: StreamContext,
    connection: Http2Connection,
    stream: ServerHttp2Stream,
    request: Http1Request,
    domain: Domain | undefined,
  ) {
    this.options = options;
    this.context = context;
    this.stream = stream;
    this.request = request;
    this.domain = domain;
    this.method = request.method;
    this.tls = connection.tlsVersion;
    this.resumed = connection.resumed;
    this.extraHeaders = context.hstsOf(domain);
    this.maxBodyBytes = options.maxBodyBytes;
    this.trusted = options.trustedPeers;
    this.peer = connection.peer;
    this.client = connection.client;
  }

  /** Without its query string, which often carries tokens. */
  get path(): string {
    const path = this.request.path;
    const query = path.indexOf('?');
    return query === -1 ? path : path.slice(0, query);
  }

  onOrigin(origin: string): void {
    this.origin = origin;
  }

  onStatus(status: number): void {
    this.status = status;
    this.answered = true;
    // Counted as the body is handed over (origin-handler.ts), as HTTP/1.1's: the origin's Content-Length is no count
    // of what went out (none on a chunked answer, the whole of a cut one, the body a HEAD never sent).
    this.bytes = 0;
  }

  respond(refusal: Refusal): void {
    // Closed before our answer (with NO_ERROR, by the client or its session's end): nothing can go out (answer() sends
    // nothing), and the line says what the client got, its leaving unanswered, as for any stream it resets.
    if (this.stream.closed || this.stream.destroyed) return;
    this.code = refusal.code;
    this.status = refusal.status;
    this.answered = true;
    answer(this.stream, refusal, this.extraHeaders);
    if (this.stream.headersSent) {
      this.bytes = this.method === 'HEAD' ? 0 : Buffer.byteLength(refusal.body);
      this.unsent = true;
      setImmediate(flushed, this);
    }
  }

  /**
   * Our answer was handed to nghttp2 while it read the frames its request came
   * in (most of ours are: Node emits the stream as it reads its HEADERS), and a
   * reset in the same read closed the stream: nghttp2 dropped our HEADERS
   * unsent. The line says what the client got, its leaving before any answer
   * head, as for any stream it resets unanswered (499, aborted, 0 bytes), not
   * our status with bytes that never went out.
   */
  unanswered(): void {
    this.unsent = false;
    this.answered = false;
    this.status = CLIENT_CLOSED_STATUS;
    this.code = undefined;
    this.bytes = 0;
  }

  /** Once, however the stream ended: its connection's bookkeeping, then its access line and counts. */
  closed(): void {
    const { stream } = this;
    this.context.onClosed(stream);
    this.seconds = Number(process.hrtime.bigint() - this.started) / 1e9;
    // Reset (by the client, or by us in the same read: tiny frames) before Node wrote our answer: nghttp2 dropped its
    // HEADERS unsent (RFC 9113 §5.1). A stream closed cleanly as it went out (its END_STREAM) has no reset code, and is
    // destroyed as its writes are called back; one the client reset with NO_ERROR is destroyed by its connection's
    // check (sessions.ts), its writes never called back (one we closed, its answer finished, is whole).
    if (this.unsent && ((stream.rstCode ?? constants.NGHTTP2_NO_ERROR) !== constants.NGHTTP2_NO_ERROR || (destroyedClosed(stream) && !stream.writableFinished)))
      this.unanswered();
    this.aborted = this.reset || !answeredWhole(stream);
    const ours = this.code ?? (stalledSend(stream as unknown as ServerResponse) || stalledEnd(stream) ? 'KEYEDGE_HTTP_SEND_TIMEOUT' : ourReset(stream));
    this.code = this.aborted && ours === undefined ? 'KEYEDGE_HTTP_CLIENT_CLOSED' : ours;
    if (!this.answered && resetByUs(this.code)) this.status = RESET_BY_US_STATUS;
    this.context.accounts.countStream(this);
  }

  onFailure(err: Error): void {
    const { stream, options } = this;
    const failure = (err as { code?: string }).code;
    const refusal = ownFailureRefusal(failure, this.maxBodyBytes);
    const domain = this.domain?.name;
    if (refusal !== undefined) {
      this.code = refusal.code;
      options.log.info({ code: this.code, domain, origin: this.origin, reason: err.message }, 'request refused');
      // 413 and 408 as they happen mid-body: the rest of the body is refused with the stream (RFC 9113 §8.1).
      if (!this.answered && refusal.status !== 0 && !stream.destroyed) this.respond(refusal);
      else cut(stream);
      return;
    }
    // The client left (a reset, or the stream closed under the request): no one to answer, and not the origin's failure.
    if (this.reset || stream.destroyed || stream.closed) return;
    this.code = this.answered ? 'KEYEDGE_HTTP_ORIGIN_ABORTED' : originRefusal(originFailure(err)).code;
    options.log.warn({ code: this.code, domain, origin: this.origin, err }, 'origin request failed');
    if (!this.answered) this.respond(originRefusal(originFailure(err)));
    else cut(stream);
  }
}

/**
 * Node writes what nghttp2 holds in its check phase (a native immediate, run
 * before this one): by now our answer head has gone out, unless its stream was
 * reset first. A stream already closed keeps `unsent` for `closed` to judge:
 * its END_STREAM went out, we closed it (stream-end.ts), or a reset in the
 * read that carried its request closed it (one with NO_ERROR is left
 * undestroyed until its connection's check, sessions.ts).
 */
function flushed(record: StreamRecord): void {
  if (!record.stream.closed) record.unsent = false;
}

/** 'aborted' (a reset while the answer was open) and 'close' (every end): each comes once, and `on` spares once()'s wrapper. */
function onStreamAborted(this: Recorded): void {
  const record = this[RECORD];
  if (record !== undefined) record.reset = true;
  streamEnded(this);
}

function onStreamClose(this: Recorded): void {
  this[RECORD]?.closed();
  streamEnded(this);
}

/**
 * The status logged for a stream we reset before any answer head went out:
 * nginx's 444 (NGX_HTTP_CLOSE: it closed the request without a response, its
 * own doing), not 499 (the client closed the request), which dashboards count
 * as clients leaving. 4xx still: what made us reset it was the client's.
 */
export const RESET_BY_US_STATUS = 444;

/** Codes of our own resets and cuts that carry no answer (a refusal of ours with a status answers instead). */
function resetByUs(code: HttpErrorCode | undefined): boolean {
  return code === 'KEYEDGE_HTTP_TINY_FRAMES' || code === 'KEYEDGE_HTTP_SEND_TIMEOUT';
}

/** A reset of ours that is not an answer's cut: its own code, so the access line does not call it the client's leaving. */
function ourReset(stream: ServerHttp2Stream): HttpErrorCode | undefined {
  return tinyFramesReset(stream) ? 'KEYEDGE_HTTP_TINY_FRAMES' : undefined;
}

function ignore(): void {}
