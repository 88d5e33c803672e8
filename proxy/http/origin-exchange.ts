/**
 * What every forwarded request shares with undici, whether its client speaks
 * HTTP/1.1 (forward.ts's Exchange) or HTTP/2 (http2/origin-handler.ts): the
 * attempt in flight (its origin, its place at the origin's gate, undici's
 * abort and resume), how an attempt settles, how a client that leaves aborts
 * the origin request, and backpressure (a refused write pauses the origin
 * until the client's 'drain', with the stall clock running, send-stall.ts).
 * The subclasses keep only what differs: where the answer's head and body go.
 *
 * undici's legacy handler callbacks (onConnect, onHeaders, onData,
 * onComplete, onError) are called directly on the object: no Readable, no
 * AbortController or signal (undici hands the abort function to the
 * handler), no pipe between the origin and the client.
 *
 * Cost per request: the one object; the listeners are module functions that
 * find their exchange on the answer (or stream) under one symbol, and the
 * stall clock exists only once an answer meets backpressure.
 */
import type { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { RequestBody } from './body.js';
import { ClientGone, HttpFailure } from './errors.js';
import type { OriginGate } from './origin-gate.js';
import type { OriginPools, OriginTarget } from './origins.js';
import { SendStallClock } from './send-stall.js';

/** Where an answer (or an HTTP/2 stream) keeps its exchange, for the module-level listeners below. */
export const EXCHANGE = Symbol('keyedge.exchange');
/** An answer or a stream that carries its exchange. */
export type Carrier = EventEmitter & { [EXCHANGE]?: OriginExchange };

/** What undici is told when the client has left: one object, never thrown, so no stack is captured per abort. */
const CLIENT_LEFT = new ClientGone('the client left before the answer was whole');

export abstract class OriginExchange implements Dispatcher.DispatchHandler {
  readonly pools: OriginPools;
  body: RequestBody | null = null;
  upload = false;
  /** The attempt in flight: its origin, its gate (admitted until left), undici's abort and resume. */
  target: OriginTarget | undefined = undefined;
  gate: OriginGate | undefined = undefined;
  abortOrigin: ((err: Error) => void) | undefined = undefined;
  resumeOrigin: (() => void) | undefined = undefined;
  /** Settles the attempt in flight. */
  resolve: (() => void) | undefined = undefined;
  reject: ((err: Error) => void) | undefined = undefined;
  /** undici is holding the origin's answer back until the client's 'drain'. */
  paused = false;
  /** The client left before the answer was whole. */
  gone = false;
  /** Fired when the client leaves while the request waits at the gate; made only then. */
  abandon: EventEmitter | undefined = undefined;
  stall: SendStallClock | undefined = undefined;

  constructor(pools: OriginPools) {
    this.pools = pools;
  }

  /** Whether the answer's head went to the client (a failure after it cannot become a 502). */
  abstract get headersSent(): boolean;
  abstract onHeaders(statusCode: number, rawHeaders: Buffer[] | string[] | null, resume: () => void): boolean;
  abstract onData(chunk: Buffer): boolean;
  abstract onComplete(trailers: Buffer[] | string[] | null): void;

  /** One attempt on `target`: resolves when the answer is handed to the client (or the client left), rejects with undici's failure. */
  send(target: OriginTarget, request: Dispatcher.DispatchOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      this.pools.pool(target).dispatch(request, this);
    });
  }

  /** The client left before the answer was whole: a request waiting at the gate gives up, one at the origin is aborted. */
  protected leftBeforeEnd(): void {
    this.gone = true;
    this.abandon?.emit('abort');
    // Before undici connected the request, onConnect aborts it.
    this.abortOrigin?.(CLIENT_LEFT);
  }

  /** The client left; each subclass says when that is too late to matter. */
  abstract clientLeft(): void;

  onConnect(abort: (err?: Error) => void): void {
    if (this.gone) abort(CLIENT_LEFT);
    else this.abortOrigin = abort;
  }

  /**
   * `answer` refused a chunk (the client's socket, or its HTTP/2 window, is
   * full): undici stops reading the origin until 'drain'. Returns false, for
   * onData to hand to undici.
   */
  protected waitForDrain(answer: Carrier): false {
    if (this.stall === undefined) {
      // An HTTP/2 stream stands in for the answer: the clock uses only its socket, 'socket' and destroy.
      this.stall = new SendStallClock(answer as ServerResponse, this.pools.sendTimeoutMs);
      answer.on('drain', onAnswerDrain);
    }
    this.stall.waiting();
    this.paused = true;
    return false;
  }

  onError(err: Error): void {
    this.leaveGate();
    if (this.stall?.stalled === true)
      this.settle(new HttpFailure('KEYEDGE_HTTP_SEND_TIMEOUT', `the client took nothing of the answer for ${this.pools.sendTimeoutMs} ms`));
    // The client left: nothing to tell it, and not the origin's failure.
    else if (this.gone && this.headersSent) this.settle(undefined);
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

/** The answer (or stream) closed, or was reset while open: its stall clock stops and its exchange hears the client left. */
export function onAnswerEnd(this: Carrier): void {
  const exchange = this[EXCHANGE];
  if (exchange === undefined) return;
  exchange.stall?.stop();
  exchange.clientLeft();
}

/**
 * The client took what was waiting. undici's resume runs its parser at once,
 * so it is deferred: Node emits 'drain' synchronously, even from inside
 * another answer's write (a queued pipelined answer's buffered bytes), and
 * so possibly from inside another connection's parser, which undici refuses.
 */
function onAnswerDrain(this: Carrier): void {
  const exchange = this[EXCHANGE];
  if (exchange === undefined) return;
  exchange.stall?.flowing();
  if (!exchange.paused) return;
  exchange.paused = false;
  process.nextTick(resumeOrigin, exchange);
}

function resumeOrigin(exchange: OriginExchange): void {
  exchange.resumeOrigin?.();
}
