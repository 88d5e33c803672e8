/**
 * One HTTP/2 stream forwarded to one of its domain's HTTP/1.1 origins, over
 * the same pools, admission gates, body reading and stall timeout as
 * HTTP/1.1 requests (proxy/http/), with undici's `dispatch()` as
 * forward.ts does: the exchange is undici's handler, so undici hands it the
 * request's abort function and every chunk of the answer, with no Readable,
 * signal or pipe in between. From forward.ts it takes only its pure,
 * exported parts (the origin's request head, failure classes, the retry
 * rule), so that module can change inside without this one.
 *
 * Why not `request()` and a pipe: its body Readable and its signal are two
 * more parties that must each learn that the client left, and a stream can
 * end in ways that tell neither. A stream whose connection closes while its
 * answer is held back by flow control may close without 'aborted' (Node
 * emits it only while the writable side is open) and after a 'finish' (Node
 * ends the writable side itself as it closes, and a pipe takes 'finish' as
 * the end and stops); the origin request was then left open, holding an
 * origin connection. Here one rule covers every end: a stream that closes,
 * or a connection that ends (sessions.ts calls `abandonStream`), before the
 * origin's answer was read whole aborts the origin request; undici then
 * closes that origin connection.
 *
 * Flow control is the backpressure: a request body is read as the origin
 * takes it, and nghttp2 grants the client more window only as it is read
 * (Node consumes the window on read); the origin is read only as the
 * client's window and the socket take the answer (a refused write pauses
 * undici until 'drain'), so a large download is never held whole, and a
 * client that stops reading is cut after `sendTimeoutMs` (send-stall.ts)
 * with RST_STREAM.
 *
 * Answers: `:status` and the origin's end-to-end fields (headers.ts); trailers
 * when the origin declared them (RFC 9110 §6.6.2 Trailer field). An answer
 * sent before the request body was all read is followed by RST_STREAM
 * NO_ERROR (RFC 9113 §8.1): the client stops sending, the connection lives on.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { RequestBody } from '../http/body.js';
import { ClientGone, HttpFailure } from '../http/errors.js';
import { mayRetry, originFailure } from '../http/forward.js';
import { originRequestHeaderList } from '../http/forward-headers.js';
import type { OriginGate } from '../http/origin-gate.js';
import { type OriginPools, type OriginTarget, requestServername } from '../http/origins.js';
import { SendStallClock } from '../http/send-stall.js';
import type { TrustedPeers } from '../http/trusted-peers.js';
import { answerFields, http2Answer, type Http1Request } from './headers.js';

export interface StreamForwardOptions {
  /** Set on the answer after the origin's fields (HSTS). */
  readonly extraHeaders: Record<string, string>;
  readonly maxBodyBytes: number;
  readonly trusted?: TrustedPeers;
  /** The client's address, for X-Forwarded-For. */
  readonly peer: string | undefined;
  /** Told each origin tried, before the attempt (for the access log). */
  readonly onOrigin?: (origin: string) => void;
  /** Told the status once the answer's head is sent. */
  readonly onStatus: (status: number) => void;
}

/** Where a stream keeps its exchange, for the module-level listeners and `abandonStream`. */
const EXCHANGE = Symbol('keyedge.http2.exchange');
type Tracked = ServerHttp2Stream & { [EXCHANGE]?: StreamExchange };

/** What undici is told when the client has left: one object, never thrown, so no stack is captured per abort. */
const CLIENT_LEFT = new ClientGone('the client left before the answer was whole');

/** One forwarded stream: undici's handler (its legacy callbacks, as forward.ts's Exchange) and the state its attempts share. */
class StreamExchange implements Dispatcher.DispatchHandler {
  readonly stream: ServerHttp2Stream;
  readonly pools: OriginPools;
  readonly options: StreamForwardOptions;
  body: RequestBody | null = null;
  upload = false;
  /** The attempt in flight: its origin, its gate (admitted until left), undici's abort and resume. */
  target: OriginTarget | undefined = undefined;
  gate: OriginGate | undefined = undefined;
  abortOrigin: ((err: Error) => void) | undefined = undefined;
  resumeOrigin: (() => void) | undefined = undefined;
  resolve: (() => void) | undefined = undefined;
  reject: ((err: Error) => void) | undefined = undefined;
  /** undici is holding the origin's answer back until the stream's 'drain'. */
  paused = false;
  /** The origin's answer was read whole: nothing is left to abort. */
  complete = false;
  /** The client left before the origin's answer was read whole. */
  gone = false;
  /** Fired when the client leaves while the request waits at the gate; made only then. */
  abandon: EventEmitter | undefined = undefined;
  stall: SendStallClock | undefined = undefined;
  trailers: Record<string, string | string[]> | undefined = undefined;

  constructor(pools: OriginPools, stream: ServerHttp2Stream, options: StreamForwardOptions) {
    this.pools = pools;
    this.stream = stream;
    this.options = options;
  }

  /** One attempt on `target`: resolves once the origin's answer is handed to the stream (or the client left), rejects with undici's failure. */
  send(target: OriginTarget, request: Dispatcher.DispatchOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      this.pools.pool(target).dispatch(request, this);
    });
  }

  /** The client left (the stream or its connection ended) before the origin's answer was read whole: the origin request is aborted. */
  clientLeft(): void {
    if (this.gone || this.complete) return;
    this.gone = true;
    this.abandon?.emit('abort');
    // Before undici connected the request, onConnect aborts it.
    this.abortOrigin?.(CLIENT_LEFT);
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.gone) abort(CLIENT_LEFT);
    else this.abortOrigin = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[] | string[] | null, resume: () => void): boolean {
    // 1xx: an interim answer the client was not asked about (100 went out already when it was).
    if (statusCode < 200) return true;
    const stream = this.stream;
    // Closed (by its connection's end) without a word to this exchange yet: the client left.
    if (stream.destroyed || stream.closed) {
      this.clientLeft();
      return false;
    }
    // The origin answered, whatever the status: a 5xx is the application's, not the connection's.
    this.pools.succeeded(this.target!);
    this.resumeOrigin = resume;
    const fields = answerFields(rawHeaders ?? []);
    const declaresTrailers = fields.trailer !== undefined;
    // A head Node refuses to send (a value with bytes RFC 9110 §5.5 forbids, a stream already closed) throws here: undici aborts and calls onError.
    stream.respond(http2Answer(statusCode, fields, this.options.extraHeaders), { waitForTrailers: declaresTrailers });
    this.options.onStatus(statusCode);
    if (declaresTrailers) stream.once('wantTrailers', () => sendTrailers(stream, this.trailers ?? {}));
    return true;
  }

  onData(chunk: Buffer): boolean {
    const stream = this.stream;
    // HEAD, 204, 304: Node ended the stream with the head (RFC 9110 §6.4.1); nothing of a body is sent.
    if (stream.writableEnded && !stream.closed) return true;
    if (stream.destroyed || stream.closed) {
      this.clientLeft();
      return false;
    }
    if (stream.write(chunk)) return true;
    // The client's window or the socket is full: undici stops reading the origin until 'drain'.
    if (this.stall === undefined) {
      this.stall = new SendStallClock(stream as unknown as ServerResponse, this.pools.sendTimeoutMs);
      stream.on('drain', onStreamDrain);
    }
    this.stall.waiting();
    this.paused = true;
    return false;
  }

  onComplete(trailers: Buffer[] | string[] | null): void {
    this.complete = true;
    this.leaveGate();
    if (trailers !== null && trailers.length > 0) this.trailers = answerFields(trailers);
    const stream = this.stream;
    if (!stream.destroyed && !stream.writableEnded) stream.end();
    this.settle(undefined);
  }

  onError(err: Error): void {
    this.leaveGate();
    if (this.stall?.stalled === true)
      this.settle(new HttpFailure('KEYEDGE_HTTP_SEND_TIMEOUT', `the client took nothing of the answer for ${this.pools.sendTimeoutMs} ms`));
    // The client left: nothing to tell it, and not the origin's failure.
    else if (this.gone && this.stream.headersSent) this.settle(undefined);
    else this.settle(err);
  }

  leaveGate(): void {
    const gate = this.gate;
    this.gate = undefined;
    this.abortOrigin = undefined;
    // undici's resume restarts the connection's parser, which may be carrying another request by now.
    this.resumeOrigin = undefined;
    gate?.leave(this.upload);
  }

  settle(err: Error | undefined): void {
    const { resolve, reject } = this;
    this.resolve = this.reject = undefined;
    if (err === undefined) resolve?.();
    else reject?.(err);
  }
}

/** 'aborted' (a reset while the answer was open) or 'close' (every end, whatever came before it). */
function onStreamEnd(this: Tracked): void {
  const exchange = this[EXCHANGE];
  if (exchange === undefined) return;
  exchange.stall?.stop();
  exchange.clientLeft();
}

/** The client took what was waiting; undici's resume runs its parser at once, so it is deferred out of Node's 'drain'. */
function onStreamDrain(this: Tracked): void {
  const exchange = this[EXCHANGE];
  if (exchange === undefined) return;
  exchange.stall?.flowing();
  if (!exchange.paused) return;
  exchange.paused = false;
  process.nextTick(resumeOrigin, exchange);
}

function resumeOrigin(exchange: StreamExchange): void {
  exchange.resumeOrigin?.();
}

/**
 * Aborts the origin request of `stream`, if one is still being read: for its
 * connection's end (sessions.ts), which Node reports to a stream held by flow
 * control only when it destroys it, some time later.
 */
export function abandonStream(stream: ServerHttp2Stream): void {
  (stream as Tracked)[EXCHANGE]?.clientLeft();
}

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
 * answer back. Resolves when the answer is handed to the stream or the client
 * has gone; rejects with the failure when no origin could be reached or one
 * failed before answering (the caller answers 502/504), when the answer broke
 * off, or with our own failure (body too large or slow, origin busy, send stall).
 */
export async function forwardStream(
  pools: OriginPools,
  domain: ProxyDomain,
  stream: ServerHttp2Stream,
  request: Http1Request,
  options: StreamForwardOptions,
): Promise<void> {
  const exchange = new StreamExchange(pools, stream, options);
  const tracked = stream as Tracked;
  tracked[EXCHANGE] = exchange;
  stream.once('aborted', onStreamEnd);
  stream.once('close', onStreamEnd);
  // Closed before this was called: no 'close' is to come.
  if (stream.destroyed) exchange.clientLeft();
  const hasBody = !stream.endAfterHeaders;
  // RFC 9110 §10.1.1: the client waits for 100 before its body; the body is read at once below, so say so now.
  if (hasBody && request.headers.expect?.toLowerCase() === '100-continue' && !stream.closed) stream.additionalHeaders({ ':status': 100 });
  const body = hasBody ? await pools.bodies.read(bodySource(stream), options.maxBodyBytes) : null;
  exchange.body = body;
  exchange.upload = body !== null && !Buffer.isBuffer(body);
  try {
    await attempts(exchange, pools.targets(domain), request);
  } finally {
    pools.bodies.release(body);
  }
  // Answered before the client finished its body: it may stop sending (RFC 9113 §8.1), once the answer is out.
  if (stream.writableFinished) endUnreadBody(stream);
  else stream.once('finish', () => endUnreadBody(stream));
}

function endUnreadBody(stream: ServerHttp2Stream): void {
  if (bodyPending(stream)) stream.close(constants.NGHTTP2_NO_ERROR);
}

/** The attempts of `forwardStream`, on `targets` in order, once the body (if any) is at hand. */
async function attempts(exchange: StreamExchange, targets: readonly OriginTarget[], request: Http1Request): Promise<void> {
  const { pools, stream, body, upload, options } = exchange;
  for (let attempt = 0; ; attempt++) {
    const target = targets[attempt];
    if (target === undefined) throw new Error('no origin configured');
    options.onOrigin?.(target.url.origin);
    const gate = pools.gate(target);
    if (!gate.tryEnter(upload)) {
      try {
        exchange.abandon ??= new EventEmitter();
        await waitAdmitted(gate.enter(upload, exchange.abandon), gate, exchange);
      } catch (err) {
        // Nothing was sent: a busy origin's request may go to the next one whatever its method.
        if (attempt === 0 && targets.length > 1 && (err as { code?: string }).code === 'KEYEDGE_HTTP_ORIGIN_BUSY') continue;
        throw err;
      }
    }
    // Gone while the body was read or a place awaited: nothing is sent.
    if (exchange.gone) {
      gate.leave(upload);
      throw new ClientGone('the client left before its request was sent');
    }
    exchange.gate = gate;
    exchange.target = target;
    const dispatch: Dispatcher.DispatchOptions & { servername?: string } = {
      path: request.path,
      method: request.method as Dispatcher.HttpMethod,
      headers: originRequestHeaderList(request.headers, options.peer, 'https', target, options.trusted),
      body,
    };
    // undici takes `servername` per request at run time, though its types omit it.
    if (target.tls !== undefined) dispatch.servername = requestServername(target);
    try {
      await exchange.send(target, dispatch);
      return;
    } catch (err) {
      if (stream.headersSent) throw err;
      // A client that left is not the origin's failure.
      const failure = exchange.gone ? 'not-origin' : originFailure(err);
      if (failure !== 'not-origin') pools.failed(target);
      if (attempt === 0 && targets.length > 1 && mayRetry(request.method, body !== null, failure)) continue;
      throw err;
    }
  }
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

/** The origin's trailers with what HTTP/2 forbids dropped; a trailer section Node refuses ends the stream with a reset instead. */
function sendTrailers(stream: ServerHttp2Stream, trailers: Record<string, string | string[]>): void {
  const fields = http2Answer(0, trailers, {});
  delete fields[':status'];
  try {
    stream.sendTrailers(fields);
  } catch {
    stream.close(constants.NGHTTP2_INTERNAL_ERROR);
  }
}

/** As forward.ts: once admitted, a request whose client left or whose streamed body failed gives its place back. */
async function waitAdmitted(entered: true | Promise<void>, gate: OriginGate, exchange: StreamExchange): Promise<void> {
  await entered;
  const failed = exchange.upload ? (exchange.body as Readable).errored : null;
  if (failed === null && !exchange.gone) return;
  gate.leave(exchange.upload);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}
