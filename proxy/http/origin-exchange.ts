/**
 * What every forwarded request shares with undici, whether its client speaks
 * HTTP/1.1 (forward.ts's Exchange) or HTTP/2 (http2/exchange.ts): its
 * attempts on the domain's origins in order (a place at the origin's gate,
 * then undici's `dispatch()`; at most one retry, below), how an attempt
 * settles, how a client that leaves aborts the origin request, and
 * backpressure (a refused write pauses the origin until the client's
 * 'drain', with the stall clock running, send-stall.ts). The subclasses keep
 * only what differs: the request head, where the answer's head and body go,
 * and what a failure becomes.
 *
 * undici's legacy handler callbacks (onConnect, onHeaders, onData,
 * onComplete, onError) are called directly on the object: no Readable, no
 * AbortController or signal (undici hands the abort function to the
 * handler), no pipe between the origin and the client.
 *
 * Cost per request: the one object. A request without a body admitted at
 * once is sent in the call that starts it, with no promise on its way (most
 * requests: GETs); the listeners are module functions that find their
 * exchange on the answer (or stream) under one symbol, and the stall clock
 * exists only once an answer meets backpressure.
 *
 * Retries: a request is sent once, with one exception each way, and never
 * more than one retry. A request that can be repeated safely (an idempotent
 * method, RFC 9110 §9.2.2, without a body: nothing streamed is lost) is tried
 * once more: on the next origin when the first could not be connected to (it
 * cannot have reached it); on a new connection to the same origin when its
 * connection closed or was reset under it before any byte of the answer (the
 * keep-alive race, origin-failure.ts `mayResend`; RFC 9112 §9.3.1), on a
 * connection that had read bytes before, while the origin is not cooling
 * down (`#raced`). That close does not count against the origin: the
 * resend's outcome does (an answer clears it, a failure cools it down), so a
 * healthy origin is not skipped, and one that drops every request still is. The resend takes a connection of its
 * own (origins.ts `dispatch`): another idle one of the pool may be closing
 * too; but not past the origin's bound: with the pool's connections and the
 * other resends' at `limits.originMaxConnections`, it goes through the pool
 * as any request. Its place is taken at the gate again, as any attempt's.
 * Each resend is counted (keyedge_proxy_origin_resends_total). A request refused by a busy origin's gate was not sent, and goes to the
 * next origin whatever its method. An answer begun is never retried.
 */
import { EventEmitter } from 'node:events';
import { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { RequestBody } from './body.js';
import { ClientGone, HttpFailure } from './errors.js';
import { keptAlive, mayResend, mayRetry, originFailure } from './origin-failure.js';
import type { OriginGate } from './origin-gate.js';
import { type OriginPools, type OriginTarget, requestServername } from './origins.js';
import { SendStallClock } from './send-stall.js';
import { tailGone } from './unsent-tails.js';

/** Where an answer (or an HTTP/2 stream) keeps its exchange, for the module-level listeners below. */
export const EXCHANGE = Symbol('keyedge.exchange');
/** An answer or a stream that carries its exchange. */
export type Carrier = EventEmitter & { [EXCHANGE]?: OriginExchange };

/** What undici is told when the client has left: one object, never thrown, so no stack is captured per abort. */
const CLIENT_LEFT = new ClientGone('the client left before the answer was whole');

/** Who started an exchange, and hears of it (the request's record: handler.ts, http2/stream.ts). */
export interface ExchangeOwner {
  /** Told each origin tried, before the attempt (for the access log). */
  onOrigin(origin: string): void;
  /**
   * Told, once and outside undici's callbacks, why the request could not be
   * forwarded or its answer broke off: no origin reached, one failed before
   * answering or mid-answer, or a failure of ours (body too large or slow,
   * origin busy, send stall). Not told when the answer was handed over whole
   * or the client left (its answer's end accounts for it).
   */
  onFailure(err: Error): void;
}

export abstract class OriginExchange<Owner extends ExchangeOwner = ExchangeOwner> implements Dispatcher.DispatchHandler {
  readonly pools: OriginPools;
  readonly owner: Owner;
  /** The domain's origins, tried in order. */
  readonly targets: readonly OriginTarget[];
  /** The request's method, for the retry rule. */
  readonly method: string;
  /** Who the request counts as at the origin's gate (its share of the places, origin-gate.ts); undefined: no share. */
  readonly client: string | undefined;
  body: RequestBody | null = null;
  upload = false;
  /** Attempts made before the one in flight. */
  attempts = 0;
  /** An attempt is at the origin: its settling decides what comes next. */
  dispatched = false;
  /** A byte of the attempt's answer came (undici's onResponseStarted: its parser began a message, an interim one too). */
  answerBegun = false;
  /** The attempt is the resend after the connection closed under the first: on a new connection where the origin's bound leaves room (origins.ts `dispatch`). */
  resend = false;
  finished = false;
  /** The attempt in flight: its origin, its gate (admitted until left), undici's abort and resume. */
  target: OriginTarget | undefined = undefined;
  gate: OriginGate | undefined = undefined;
  abortOrigin: ((err: Error) => void) | undefined = undefined;
  resumeOrigin: (() => void) | undefined = undefined;
  /** undici is holding the origin's answer back until the client's 'drain'. */
  paused = false;
  /** The client left before the answer was whole. */
  gone = false;
  /** Fired when the client leaves while the request waits at the gate; made only then. */
  abandon: EventEmitter | undefined = undefined;
  stall: SendStallClock | undefined = undefined;
  /** A 'drain' came while the client's socket still needed one (onAnswerDrain): the socket's own is awaited. */
  awaitsSocketDrain = false;
  /** Ended with bytes unsent, in unsent-tails.ts's sets until its 'close' (HTTP/1.1 answers, forward.ts). */
  tailPending = false;

  constructor(pools: OriginPools, owner: Owner, targets: readonly OriginTarget[], method: string, client: string | undefined) {
    this.pools = pools;
    this.owner = owner;
    this.targets = targets;
    this.method = method;
    this.client = client;
  }

  /** Whether the answer's head went to the client (a failure after it cannot become a 502). */
  abstract get headersSent(): boolean;
  /** The client left, or its connection is gone: nothing more is sent for it, and a failure then is not the origin's. */
  abstract get clientGone(): boolean;
  /** The request as `target` is sent it: path, method, head and `this.body`. */
  protected abstract originRequest(target: OriginTarget): Dispatcher.DispatchOptions;
  abstract onHeaders(statusCode: number, rawHeaders: Buffer[] | string[] | null, resume: () => void): boolean;
  abstract onData(chunk: Buffer): boolean;
  abstract onComplete(trailers: Buffer[] | string[] | null): void;

  /**
   * The next attempt, on `target`: a place at its gate (waited for only when there is none free), then the request to
   * its pool. Not for a client already gone: an HTTP/2 client's RST_STREAM NO_ERROR ends its stream's body as if whole
   * (Node pushes its end), so the body's read resolved, truncated, after the reset told us it left; such a request
   * joined the origin's wait queue, where nothing would ever abandon it (`abandon` is made only as it enters), and
   * held a waiting place for `limits.originQueueTimeoutMs`: a few filled the queue, and every other request got 503.
   */
  attempt(target: OriginTarget | undefined = this.targets[this.attempts]): void {
    if (this.clientGone) return this.finish(new ClientGone('the client left before its request was sent'));
    try {
      if (target === undefined) throw new Error('no origin configured');
      this.owner.onOrigin(target.url.origin);
      const gate = this.pools.gate(target);
      if (gate.tryEnter(this.upload, this.client)) return this.dispatch(target, gate);
      this.abandon ??= new EventEmitter();
      waitAdmitted(gate.enter(this.upload, this.abandon, this.client), gate, this).then(
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
    if (this.clientGone) {
      gate.leave(this.upload, this.client);
      return this.finish(new ClientGone('the client left before its request was sent'));
    }
    this.gate = gate;
    this.target = target;
    try {
      const request: Dispatcher.DispatchOptions & { servername?: string } = this.originRequest(target);
      // undici takes `servername` per request at run time, though its types omit it.
      if (target.tls !== undefined) request.servername = requestServername(target);
      this.dispatched = true;
      this.answerBegun = false;
      // A failure of undici's (arguments it refuses, a handler that threw) comes to onError, hence settle.
      this.pools.dispatch(target, request, this, this.resend);
    } catch (err) {
      // Called from a promise's callback too: nothing may escape as an unheard rejection.
      this.dispatched = false;
      this.leaveGate();
      this.finish(err as Error);
    }
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

  /** undici's parser began the answer: from here on the attempt is not sent again. */
  onResponseStarted(): void {
    this.answerBegun = true;
  }

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
    // undici's HTTPParserError carries what it had read past the error (up to 64 KiB of the origin's answer: its
    // content, cookies) as `data`, which the failure's log line would print whole; its message says what broke.
    if ((err as { data?: unknown }).data !== undefined) delete (err as { data?: unknown }).data;
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
    gate?.leave(this.upload, this.client);
  }

  /**
   * Whether a close under the request is taken for the keep-alive race (origin-failure.ts): not on a connection that
   * never read a byte, and only while the origin is not cooling down. An origin that drops every request on new
   * connections was sent each one twice, for ever: it is not. One that resets every request, or writes a byte (an
   * empty line, which undici skips before a status line) and closes, has its first resend fail, is cooled down, and
   * is not resent to until the cool-down ends.
   */
  #raced(err: Error): boolean {
    return keptAlive(err) !== false && this.pools.healthy(this.target!);
  }

  /** The attempt at the origin settled (onComplete, onError): done, or failed, or retried once (on the next target, or resent to this one). */
  settle(err: Error | undefined): void {
    if (!this.dispatched) return;
    this.dispatched = false;
    if (err === undefined || this.headersSent) return this.finish(err);
    // A client that left is not the origin's failure.
    const failure = this.clientGone ? 'not-origin' : originFailure(err);
    if (this.attempts === 0 && failure === 'broken' && !this.answerBegun && mayResend(this.method, this.body !== null, err) && this.#raced(err)) {
      // The keep-alive race: not counted against the origin; the resend on a new connection says how it is.
      const target = this.target!;
      this.attempts++;
      this.resend = true;
      queueMicrotask(() => this.attempt(target));
      return;
    }
    if (failure !== 'not-origin') this.pools.failed(this.target!);
    if (this.attempts === 0 && this.targets.length > 1 && mayRetry(this.method, this.body !== null, failure)) {
      this.attempts++;
      // Out of undici's callback: the next attempt dispatches on another pool.
      queueMicrotask(() => this.attempt());
      return;
    }
    this.finish(err);
  }

  /**
   * Once: the body goes back, and the failure, if any, to the owner, outside
   * undici's callbacks. A client that left before its request was sent is
   * no failure to tell: its answer's end says so (499, client closed).
   */
  finish(err: Error | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.pools.bodies.release(this.body);
    if (err === undefined) this.answered();
    else if (!(err instanceof ClientGone && this.clientGone)) queueMicrotask(() => this.owner.onFailure(err));
  }

  /** The exchange ended with the answer handed over (or the client gone after its head). */
  protected answered(): void {}
}

/**
 * `domain`'s origins in the order to try them, or undefined when they cannot
 * be had (a domain not prepared ahead whose CA file cannot be read now,
 * origins.ts): `owner` is then told, as of any other failure, and nothing is
 * thrown into the server's request or stream listener, where it would end
 * the worker.
 */
export function originTargets(pools: OriginPools, domain: ProxyDomain, owner: ExchangeOwner): readonly OriginTarget[] | undefined {
  try {
    return pools.targets(domain);
  } catch (err) {
    queueMicrotask(() => owner.onFailure(err as Error));
    return undefined;
  }
}

/** Once admitted, a request whose client left or whose streamed body failed while it waited gives its place back and fails. */
async function waitAdmitted(entered: true | Promise<void>, gate: OriginGate, exchange: OriginExchange): Promise<void> {
  await entered;
  const failed = exchange.upload ? (exchange.body as Readable).errored : null;
  if (failed === null && !exchange.clientGone) return;
  gate.leave(exchange.upload, exchange.client);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}

/** The answer (or stream) closed, or was reset while open: its stall clock stops and its exchange hears the client left. */
export function onAnswerEnd(this: Carrier): void {
  const exchange = this[EXCHANGE];
  if (exchange === undefined) return;
  exchange.stall?.stop();
  if (exchange.tailPending) {
    exchange.tailPending = false;
    tailGone(exchange);
  }
  exchange.clientLeft();
}

/**
 * The client took what was waiting. undici's resume runs its parser at once,
 * so it is deferred: Node emits 'drain' synchronously, even from inside
 * another answer's write (a queued pipelined answer's buffered bytes), and
 * so possibly from inside another connection's parser, which undici refuses.
 *
 * Node 20's server emits that 'drain' whenever a queued answer buffers
 * output, whether or not the socket took anything: a 'drain' on an HTTP/1.1
 * answer whose socket still needs one is no progress. Taken for one, it
 * cleared the stall clock and resumed the origin; the answer then ended
 * behind a socket the client never emptied, and a client that pipelined
 * requests and read nothing held every origin place for ever. It is ignored,
 * and the socket's own 'drain' heard instead (Node, having sent its 'drain',
 * relays no other to the answer).
 */
function onAnswerDrain(this: Carrier): void {
  const exchange = this[EXCHANGE];
  if (exchange === undefined) return;
  const socket = this instanceof ServerResponse ? this.socket : null;
  if (socket?.writableNeedDrain === true) {
    if (!exchange.awaitsSocketDrain) {
      exchange.awaitsSocketDrain = true;
      socket.once('drain', () => {
        exchange.awaitsSocketDrain = false;
        onAnswerDrain.call(this);
      });
    }
    return;
  }
  exchange.stall?.flowing();
  if (!exchange.paused) return;
  exchange.paused = false;
  process.nextTick(resumeOrigin, exchange);
}

function resumeOrigin(exchange: OriginExchange): void {
  exchange.resumeOrigin?.();
}
