/**
 * One HTTP/2 stream forwarded to one of its domain's HTTP/1.1 origins, over
 * the same pools, admission gates, body reading and stall timeout as
 * HTTP/1.1 requests (proxy/http/), with undici's `dispatch()` as forward.ts
 * does; its attempts and retry are origin-exchange.ts's, shared with
 * HTTP/1.1, and the handler that relays the answer and aborts the origin
 * request when the client leaves is origin-handler.ts.
 *
 * Flow control is the backpressure: a request body is read as the origin
 * takes it, and nghttp2 grants the client more window only as it is read
 * (Node consumes the window on read); the origin is read only as the
 * client's window and the socket take the answer, so a large download is
 * never held whole, and a client that stops reading is cut after
 * `sendTimeoutMs` (send-stall.ts) with RST_STREAM.
 *
 * An answer sent before the request body was all read is followed by
 * RST_STREAM NO_ERROR (RFC 9113 §8.1): the client stops sending, the
 * connection lives on.
 */
import type { IncomingMessage } from 'node:http';
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import { originRequestHeaderList } from '../http/forward-headers.js';
import { originTargets } from '../http/origin-exchange.js';
import type { OriginPools, OriginTarget } from '../http/origins.js';
import type { Http1Request } from './headers.js';
import { StreamExchange, type StreamForwardOptions, trackStream } from './origin-handler.js';

export type { StreamForwardOptions } from './origin-handler.js';

/**
 * The stream as body.ts reads a request: it needs IncomingMessage's
 * `complete` (the whole body arrived), which on a stream is its readable end.
 */
function bodySource(stream: ServerHttp2Stream): IncomingMessage {
  Object.defineProperty(stream, 'complete', { get: () => stream.readableEnded || stream.endAfterHeaders });
  return stream as unknown as IncomingMessage;
}

/**
 * Sends the stream's request to one of `domain`'s origins and streams the
 * answer back. `options.onFailure` hears, once, when no origin could be
 * reached or one failed before answering (the caller answers 502/504), when
 * the answer broke off, or of our own failure (body too large or slow,
 * origin busy, send stall); nothing is said when the answer was handed to the
 * stream or the client left.
 *
 * A request without a body admitted at once is sent in this call, with no
 * promise on its way (most requests: GETs); one with a body, or that waits
 * for a place at its origin, continues asynchronously.
 */
export function forwardStream(pools: OriginPools, domain: ProxyDomain, stream: ServerHttp2Stream, request: Http1Request, options: StreamForwardOptions): void {
  const targets = originTargets(pools, domain, options);
  if (targets === undefined) return;
  const exchange = new ForwardedStream(pools, stream, options, targets, request);
  trackStream(stream, exchange);
  if (stream.endAfterHeaders) exchange.attempt();
  else void exchange.readBodyThenAttempt();
}

/** One forwarded stream: its request head and body (its attempts and the answer's relay: origin-exchange.ts, origin-handler.ts). */
class ForwardedStream extends StreamExchange {
  readonly request: Http1Request;

  constructor(pools: OriginPools, stream: ServerHttp2Stream, options: StreamForwardOptions, targets: readonly OriginTarget[], request: Http1Request) {
    super(pools, stream, options, targets, request.method);
    this.request = request;
  }

  get clientGone(): boolean {
    return this.gone;
  }

  protected originRequest(target: OriginTarget): Dispatcher.DispatchOptions {
    const { request, owner } = this;
    return {
      path: request.path,
      method: request.method as Dispatcher.HttpMethod,
      headers: originRequestHeaderList(request.headers, owner.peer, 'https', target, owner.trusted),
      body: this.body,
    };
  }

  async readBodyThenAttempt(): Promise<void> {
    const { stream, request, owner } = this;
    try {
      // RFC 9110 §10.1.1: the client waits for 100 before its body; the body is read at once below, so say so now.
      if (request.headers.expect?.toLowerCase() === '100-continue' && !stream.closed) stream.additionalHeaders({ ':status': 100 });
      const body = await this.pools.bodies.read(bodySource(stream), owner.maxBodyBytes);
      this.body = body;
      this.upload = !Buffer.isBuffer(body);
    } catch (err) {
      return this.finish(err as Error);
    }
    this.attempt();
  }

  /** Answered before the client finished its body: it may stop sending (RFC 9113 §8.1), once the answer is out. */
  protected override answered(): void {
    const stream = this.stream;
    // A request without a body (END_STREAM on its HEADERS) has nothing left to refuse: no 'finish' listener for it.
    if (stream.endAfterHeaders) return;
    if (stream.writableFinished) endUnreadBody(stream);
    else stream.once('finish', () => endUnreadBody(stream));
  }
}

function endUnreadBody(stream: ServerHttp2Stream): void {
  if (bodyPending(stream)) stream.close(constants.NGHTTP2_NO_ERROR);
}

/** The client may still be sending a body this side will not read. */
export function bodyPending(stream: ServerHttp2Stream): boolean {
  return !stream.endAfterHeaders && !stream.readableEnded && !stream.destroyed;
}

/**
 * Whether a closed stream's answer went out whole: its writable side ended
 * with nothing of it left unwritten, and the stream closed without a reset.
 * Not 'finish' alone: when the client's side had ended, nghttp2 closes the
 * stream as our END_STREAM goes out, and Node may destroy it before its
 * shutdown callback runs, so 'close' comes without 'finish' (Node 20): every
 * request with a body was logged as its client's abort
 * (KEYEDGE_HTTP_CLIENT_CLOSED) though its answer went out whole. A session
 * destroyed under it (the TCP connection reset) gives its streams a reset
 * code, though Node may have ended their writable side itself.
 */
export function answeredWhole(stream: ServerHttp2Stream): boolean {
  const written = stream.writableFinished || (stream.writableEnded && (stream.writableLength === 0 || endSent.has(stream)));
  return written && (stream.rstCode ?? constants.NGHTTP2_NO_ERROR) === constants.NGHTTP2_NO_ERROR;
}

/** Streams whose END_STREAM had gone out when Node destroyed them (noteEndSent). */
const endSent = new WeakSet<ServerHttp2Stream>();
let nodeDestroy: ServerHttp2Stream['destroy'] | undefined;

/**
 * Has `stream` remember, as Node destroys it, whether its END_STREAM went
 * out: for a request with a body (called once, as the stream is handed over).
 * Node destroys such a stream, its body read, as soon as nghttp2 closes it,
 * which it does as our END_STREAM goes out; the writes that carried the
 * answer's last bytes are called back only once the connection's socket
 * write holding them completes (later still while other streams keep that
 * socket busy), so 'close' came with those bytes still counted as unwritten,
 * and a whole answer was logged as the client's abort
 * (KEYEDGE_HTTP_CLIENT_CLOSED; test/abuse-http2-review.test.ts). A client's
 * RST_STREAM NO_ERROR while the answer's end waits on its window looks the
 * same from here, its bytes never sent: nghttp2 tells them apart (the
 * stream's local close, read while Node destroys it, its nghttp2 stream
 * still there). A request without a body is destroyed only once its
 * readable side ends, by which time its writes have been called back.
 */
export function noteEndSent(stream: ServerHttp2Stream): void {
  nodeDestroy ??= stream.destroy;
  stream.destroy = destroyNotingEnd;
}

function destroyNotingEnd(this: ServerHttp2Stream, error?: Error): ServerHttp2Stream {
  if (!this.destroyed && this.state.localClose === 1) endSent.add(this);
  return nodeDestroy!.call(this, error);
}
