/**
 * One HTTP/2 stream forwarded to one of its domain's HTTP/1.1 origins, over
 * the same pools, admission gates, body reading and stall timeout as
 * HTTP/1.1 requests (proxy/http/), with undici's `dispatch()` as forward.ts
 * does; the handler that relays the answer and aborts the origin request
 * when the client leaves is origin-handler.ts. From forward.ts it takes only
 * its pure, exported parts (the origin's request head, failure classes, the
 * retry rule), so that module can change inside without this one.
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
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import { ClientGone } from '../http/errors.js';
import { mayRetry, originFailure } from '../http/forward.js';
import { originRequestHeaderList } from '../http/forward-headers.js';
import type { OriginGate } from '../http/origin-gate.js';
import { type OriginPools, type OriginTarget, requestServername } from '../http/origins.js';
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
  const exchange = new ForwardedStream(pools, stream, options, pools.targets(domain), request);
  trackStream(stream, exchange);
  if (stream.endAfterHeaders) exchange.attempt();
  else void exchange.readBodyThenAttempt();
}

/** One forwarded stream's attempts, on its domain's targets in order (at most one retry, as forward.ts). */
class ForwardedStream extends StreamExchange {
  readonly targets: readonly OriginTarget[];
  readonly request: Http1Request;
  attempts = 0;
  /** An attempt is at the origin: its settling decides what comes next. */
  dispatched = false;
  finished = false;

  constructor(pools: OriginPools, stream: ServerHttp2Stream, options: StreamForwardOptions, targets: readonly OriginTarget[], request: Http1Request) {
    super(pools, stream, options);
    this.targets = targets;
    this.request = request;
  }

  async readBodyThenAttempt(): Promise<void> {
    const { stream, request, options } = this;
    try {
      // RFC 9110 §10.1.1: the client waits for 100 before its body; the body is read at once below, so say so now.
      if (request.headers.expect?.toLowerCase() === '100-continue' && !stream.closed) stream.additionalHeaders({ ':status': 100 });
      const body = await this.pools.bodies.read(bodySource(stream), options.maxBodyBytes);
      this.body = body;
      this.upload = !Buffer.isBuffer(body);
    } catch (err) {
      return this.finish(err as Error);
    }
    this.attempt();
  }

  /** The next attempt: a place at the target's gate (waited for only when there is none free), then the request to its pool. */
  attempt(): void {
    try {
      const target = this.targets[this.attempts];
      if (target === undefined) throw new Error('no origin configured');
      this.options.onOrigin(target.url.origin);
      const gate = this.pools.gate(target);
      if (gate.tryEnter(this.upload)) return this.dispatch(target, gate);
      this.abandon ??= new EventEmitter();
      waitAdmitted(gate.enter(this.upload, this.abandon), gate, this).then(
        () => this.dispatch(target, gate),
        (err: Error) => {
          // Nothing was sent: a busy origin's request may go to the next one whatever its method.
          if (this.attempts === 0 && this.targets.length > 1 && (err as { code?: string }).code === 'KEYEDGE_HTTP_ORIGIN_BUSY') {
            this.attempts++;
            return this.attempt();
          }
          this.finish(err);
        },
      );
    } catch (err) {
      this.finish(err as Error);
    }
  }

  dispatch(target: OriginTarget, gate: OriginGate): void {
    // Gone while the body was read or a place awaited: nothing is sent.
    if (this.gone) {
      gate.leave(this.upload);
      return this.finish(new ClientGone('the client left before its request was sent'));
    }
    this.gate = gate;
    this.target = target;
    const { request, options } = this;
    try {
      const dispatch: Dispatcher.DispatchOptions & { servername?: string } = {
        path: request.path,
        method: request.method as Dispatcher.HttpMethod,
        headers: originRequestHeaderList(request.headers, options.peer, 'https', target, options.trusted),
        body: this.body,
      };
      // undici takes `servername` per request at run time, though its types omit it.
      if (target.tls !== undefined) dispatch.servername = requestServername(target);
      this.dispatched = true;
      // A failure of undici's (arguments it refuses, a handler that threw) comes to onError, hence settle.
      this.pools.pool(target).dispatch(dispatch, this);
    } catch (err) {
      // Called from a promise's callback too: nothing may escape as an unheard rejection.
      this.dispatched = false;
      this.leaveGate();
      this.finish(err as Error);
    }
  }

  /** The attempt at the origin settled (onComplete, onError): done, or failed, or retried once on the next target. */
  override settle(err: Error | undefined): void {
    if (!this.dispatched) return;
    this.dispatched = false;
    if (err === undefined || this.stream.headersSent) return this.finish(err);
    // A client that left is not the origin's failure.
    const failure = this.gone ? 'not-origin' : originFailure(err);
    if (failure !== 'not-origin') this.pools.failed(this.target!);
    if (this.attempts === 0 && this.targets.length > 1 && mayRetry(this.request.method, this.body !== null, failure)) {
      this.attempts++;
      // Out of undici's callback: the next attempt dispatches on another pool.
      queueMicrotask(() => this.attempt());
      return;
    }
    this.finish(err);
  }

  /** Once: the body goes back, and the failure, if any, to the stream's owner, outside undici's callbacks. */
  finish(err: Error | undefined): void {
    if (this.finished) return;
    this.finished = true;
    const { stream, body } = this;
    this.pools.bodies.release(body);
    if (err !== undefined) {
      queueMicrotask(() => this.options.onFailure(err));
      return;
    }
    // Answered before the client finished its body: it may stop sending (RFC 9113 §8.1), once the answer is out.
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
 * Whether a closed stream's answer went out whole: its writable side finished
 * and the stream closed without a reset. A session destroyed under it (the
 * TCP connection reset) gives its streams a reset code, though Node may have
 * ended their writable side itself.
 */
export function answeredWhole(stream: ServerHttp2Stream): boolean {
  return stream.writableFinished && (stream.rstCode ?? constants.NGHTTP2_NO_ERROR) === constants.NGHTTP2_NO_ERROR;
}

/** As forward.ts: once admitted, a request whose client left or whose streamed body failed gives its place back. */
async function waitAdmitted(entered: true | Promise<void>, gate: OriginGate, exchange: StreamExchange): Promise<void> {
  await entered;
  const failed = exchange.upload ? (exchange.body as Readable).errored : null;
  if (failed === null && !exchange.gone) return;
  gate.leave(exchange.upload);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}
