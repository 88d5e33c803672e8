/**
 * undici's handler for one forwarded HTTP/2 stream (exchange.ts sends it):
 * the origin's answer head goes to `respond`, each body chunk to the
 * stream's `write` with undici's pause and resume as backpressure (a refused
 * write pauses the origin until the stream's 'drain', with the stall clock
 * running, send-stall.ts), trailers when the origin declared them (RFC 9110
 * §6.6.2). As forward.ts's Exchange for HTTP/1.1: undici's legacy callbacks,
 * no Readable, signal or pipe between the origin and the stream.
 *
 * The one rule for a client that leaves: the stream closes or is reset, or
 * its connection ends (sessions.ts calls `abandonStream`), before the
 * origin's answer was read whole: the origin request is aborted at once and
 * undici closes that origin connection. Nothing else has to hear of it.
 *
 * Cost per stream: one object; listeners are module functions that find it
 * on the stream.
 */
import type { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Dispatcher } from 'undici';
import type { RequestBody } from '../http/body.js';
import { ClientGone, HttpFailure } from '../http/errors.js';
import type { OriginGate } from '../http/origin-gate.js';
import type { OriginPools, OriginTarget } from '../http/origins.js';
import { SendStallClock } from '../http/send-stall.js';
import type { TrustedPeers } from '../http/trusted-peers.js';
import { answerFields, http2Answer } from './headers.js';

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
export class StreamExchange implements Dispatcher.DispatchHandler {
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

/** Makes `exchange` the one `stream`'s ends are told to: 'aborted' (a reset while the answer was open) and 'close' (every end). */
export function trackStream(stream: ServerHttp2Stream, exchange: StreamExchange): void {
  (stream as Tracked)[EXCHANGE] = exchange;
  stream.once('aborted', onStreamEnd);
  stream.once('close', onStreamEnd);
  // Closed before this was called: no 'close' is to come.
  if (stream.destroyed) exchange.clientLeft();
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
