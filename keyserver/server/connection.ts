/**
 * One client connection (unix or mutual TLS): frames in, answers out.
 *
 * Requests are handled concurrently and answered as each finishes, matched by
 * request id (SPEC.md), up to `maxInFlight` per connection; beyond that a
 * request is answered OVERLOADED at once instead of queueing without bound.
 * When the socket cannot take more output the connection stops reading until
 * it drains, so a client that never reads cannot grow our memory: frames
 * already read then wait, unanswered (`#held`, at most one read's worth), and
 * are answered on drain. Stopping the reads alone was not enough: the rest of
 * the chunk being read was still answered, and a 64 KiB read of GET_PUBLIC_KEY
 * requests for an RSA-4096 key made 0.8 MB of answers, per connection.
 *
 * A bad frame body is answered with an error and the connection carries on; a
 * frame whose length cannot be trusted (FRAME_TOO_LARGE) is answered, then the
 * connection is closed, since the byte stream has lost its framing. Closed
 * means ended, then destroyed CLOSE_GRACE_MS later whether or not the client
 * has closed its end: waiting for a client that never does would let it hold a
 * connection slot and a descriptor for as long as it liked. What it sends
 * meanwhile is read and dropped, so the answer is not lost to a reset.
 *
 * Answers are batched into one write (one syscall, and over TLS one record):
 * those made while a chunk is read (signed inline, refusals) go out when the
 * chunk is done, with no extra turn of the event loop; those coming back from
 * the signing threads are corked until the end of the event-loop turn.
 *
 * Frame deadline (SPEC.md, "Connection rules"): once the first byte of a frame
 * is in, the whole frame must follow within `frameTimeoutMs`, else the
 * connection is closed without an answer. Clients write each frame in one go,
 * so a frame pending for seconds is a broken or hostile peer holding a slot;
 * the clock restarts with each frame, so a busy pipelined stream whose reads
 * always end mid-frame is never cut. It stands while the server itself has
 * stopped reading (the client's answers backed up) and starts afresh when
 * reading resumes: the rest of the frame cannot arrive meanwhile, and running
 * on it closed a client that had sent every byte of a burst, its held requests
 * and answers lost, because it read its answers a deadline late (a proxy
 * paused by GC or a busy CPU). A connection with nothing pending is
 * never timed out: the proxy's bridge keeps one open between handshakes and
 * has no ping. Bad-frame and deadline lines go through the LogLimiter, since
 * a client can cause them at will, keyed by client rule (authz.ts) as the
 * service's refusals are: keyed by error code alone, one client's flood
 * spent the burst and another client's lines were dropped. The metrics count
 * every one.
 *
 * `state` (busy: requests in flight; stalled: a partial frame pending, or no
 * frame yet; idle: neither) is reported to `onState` on each change, for the
 * daemon's admission (admission.ts). Requests held and answers unsent while
 * the server has stopped reading count as in flight (SPEC.md, "Connection
 * caps"): counted stalled for the partial frame among them, such a connection
 * was the first a newcomer evicted, its requests and answers lost. Until its
 * client leaves them unread for `frameTimeoutMs` (as long as a frame may take
 * to arrive): then it is stalled, or a client that never reads would hold its
 * connections past any newcomer's need, on the unix socket the proxy's too.
 *
 * Its signs waiting for a signing thread take turns with other connections'
 * (sign-queue.ts; the close signal below names the connection there), so its
 * backlog, at most `maxInFlight`, holds up no other connection's signs. When
 * the client's stream ends or the socket closes, its signs still waiting are
 * dropped (sign-workers.ts): a client cannot queue work, leave, and repeat.
 */
import type { Socket } from 'node:net';
import { ProtocolError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { decodeRequest, encodeResponse, type Request, type Response } from '../protocol/codec.js';
import { errorCodeName, ErrorCode } from '../protocol/constants.js';
import { FrameReader } from '../protocol/framer.js';
import type { ConnectionState } from './admission.js';
import type { ClientIdentity } from './authz.js';
import type { LogLimiter } from '../shared/log-limiter.js';
import type { KeyserverMetrics } from './metrics.js';
import type { SignPlace, SigningService } from './service.js';

/** How long a connection closed for a fatal frame fault waits for the client's end before it is destroyed. */
const CLOSE_GRACE_MS = 1_000;

export interface ConnectionLimits {
  readonly maxBodyBytes: number;
  readonly maxInFlightPerConnection: number;
  readonly frameTimeoutMs: number;
}

export interface ConnectionContext {
  readonly service: SigningService;
  readonly metrics: KeyserverMetrics;
  readonly log: Logger;
  readonly limiter: LogLimiter;
  readonly limits: ConnectionLimits;
  readonly onState: (state: ConnectionState) => void;
}

export class KeyserverConnection {
  readonly socket: Socket;
  readonly client: ClientIdentity;
  readonly #service: SigningService;
  readonly #metrics: KeyserverMetrics;
  readonly #log: Logger;
  readonly #limiter: LogLimiter;
  readonly #limits: ConnectionLimits;
  readonly #onState: (state: ConnectionState) => void;
  readonly #reader: FrameReader;
  #inFlight = 0;
  /**
   * Signs answered DEADLINE_EXCEEDED that the token is not yet done with (service.ts SignPlace): with those in
   * flight, what limits.maxInFlightPerConnection bounds, so a connection's queued signs stay within it.
   */
  #outlived = 0;
  /** This connection as the place of each of its signs (service.ts): one object, not one per request. */
  readonly #place: SignPlace = {
    outlive: () => {
      this.#outlived++;
      return this.#outlivedDone;
    },
  };
  readonly #outlivedDone = (): void => {
    this.#outlived--;
  };
  #frames = 0;
  #state: ConnectionState = 'stalled';
  #deadline: NodeJS.Timeout | undefined;
  /** Runs while the client's answers are backed up (reading paused); when it fires they have been unread too long (`state`). */
  #unreadTimer: NodeJS.Timeout | undefined;
  #unreadTooLong = false;
  /** Set once the connection is ended for a fatal fault: destroys it if the client has not closed by then. */
  #closeTimer: NodeJS.Timeout | undefined;
  #corked = false;
  /** True while a chunk is being read: answers made meanwhile ride on its cork. */
  #reading = false;
  #idleWaiters: (() => void)[] = [];
  /**
   * Complete frames read while the client's answers were backed up, oldest first, each with when it was read:
   * answered once the socket drains, a sign's deadline counted from its read (SPEC.md, "Deadlines"), not from then.
   */
  #held: { frame: Buffer; readAt: number }[] = [];
  /** Aborted when the socket closes: signs of this connection not yet sent to a thread are dropped then. It also names the connection in the signs' turns (sign-queue.ts). */
  readonly #closed = new AbortController();

  constructor(socket: Socket, client: ClientIdentity, context: ConnectionContext) {
    this.socket = socket;
    this.client = client;
    this.#service = context.service;
    this.#metrics = context.metrics;
    this.#log = context.log;
    this.#limiter = context.limiter;
    this.#limits = context.limits;
    this.#onState = context.onState;
    this.#reader = new FrameReader({
      maxBodyBytes: context.limits.maxBodyBytes,
      onFrame: (frame) => this.#onFrame(frame),
      onError: (err) => this.#onFatal(err),
    });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => {
      // The client reads: its bound on leaving answers unread starts over at the next pause.
      clearTimeout(this.#unreadTimer);
      this.#unreadTimer = undefined;
      this.#unreadTooLong = false;
      this.#answerHeld();
      // Not while the last held frame's answer backed the socket up again: every frame read then would be held, with
      // no pause to come (only an answer pauses), for as long as the client writes and reads nothing. The next drain resumes.
      if (this.#held.length === 0 && !socket.writableNeedDrain) {
        socket.resume();
        // Reading was paused on our side: the frame begun before the pause has its whole deadline from here.
        if (this.#reader.bufferedBytes > 0 && !this.#reader.failed) this.#startFrameClock();
      }
    });
    // The client's end of stream ends the connection (SPEC.md, "End of stream"): its side is ended too, so nothing is
    // answered after it, and what was not started is dropped now. Not at the close alone: that waits for the answers
    // already written, which a client that ended its side and reads no more may never take, its signs made meanwhile.
    socket.on('end', () => {
      this.#held = [];
      this.#closed.abort();
    });
    socket.on('close', () => {
      clearTimeout(this.#deadline);
      clearTimeout(this.#unreadTimer);
      clearTimeout(this.#closeTimer);
      this.#held = [];
      this.#closed.abort();
      this.#settleIdle();
    });
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** Resolves once no request of this connection is running (at once if none is). */
  idle(): Promise<void> {
    if (this.#inFlight === 0 || this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #onData(chunk: Buffer): void {
    const framesBefore = this.#frames;
    const socket = this.socket;
    this.#reading = true;
    socket.cork();
    try {
      this.#reader.push(chunk);
    } finally {
      this.#reading = false;
      socket.uncork();
    }
    // Paused (an answer of this chunk backed the socket up): no clock until reading resumes, on drain.
    if (this.#reader.bufferedBytes === 0 || this.#reader.failed || socket.isPaused()) {
      this.#stopFrameClock();
    } else if (this.#deadline === undefined) {
      this.#startFrameClock();
    } else if (this.#frames !== framesBefore) {
      // A frame completed and the next one started in this chunk: its clock starts now.
      this.#deadline.refresh();
    }
    this.#updateState();
  }

  #startFrameClock(): void {
    clearTimeout(this.#deadline);
    this.#deadline = setTimeout(() => this.#onFrameTimeout(), this.#limits.frameTimeoutMs);
  }

  #stopFrameClock(): void {
    clearTimeout(this.#deadline);
    this.#deadline = undefined;
  }

  #onFrameTimeout(): void {
    this.#metrics.connectionDropped('frame_timeout');
    this.#limiter.warn(
      this.#log,
      `frame_timeout:${this.client.rule}`,
      { client: this.client.name, transport: this.client.transport, bufferedBytes: this.#reader.bufferedBytes },
      `closing connection: a frame was still incomplete ${this.#limits.frameTimeoutMs} ms after its first byte`,
    );
    this.socket.destroy();
  }

  #updateState(): void {
    // Requests held, or answers not yet taken by the client: in flight, until left unread too long.
    const backedUp = this.#held.length > 0 || this.socket.writableNeedDrain;
    const state =
      this.#inFlight > 0 || (backedUp && !this.#unreadTooLong) ? 'busy' : backedUp || this.#frames === 0 || this.#reader.bufferedBytes > 0 ? 'stalled' : 'idle';
    if (state === this.#state) return;
    this.#state = state;
    this.#onState(state);
  }

  /** `readAt`: when a held frame was read (none: now). */
  #onFrame(frame: Buffer, readAt?: number): void {
    if (this.#held.length > 0 || this.socket.writableNeedDrain) {
      this.#held.push({ frame, readAt: readAt ?? Date.now() });
      return;
    }
    this.#frames++;
    let request: Request;
    try {
      request = decodeRequest(frame, this.#limits.maxBodyBytes);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.#badFrame(err, 'bad request');
      this.#send({ op: 'error', id: err.requestId ?? 0, code: err.wireCode, detail: err.message });
      return;
    }
    if (this.#inFlight + this.#outlived >= this.#limits.maxInFlightPerConnection) {
      this.#metrics.requests.inc({ op: request.op, algorithm: 'none', result: 'OVERLOADED' });
      this.#send({ op: 'error', id: request.id, code: ErrorCode.OVERLOADED, detail: `more than ${this.#limits.maxInFlightPerConnection} requests in flight` });
      return;
    }
    const answer = this.#service.handle(request, this.client, this.#closed.signal, readAt, this.#place);
    if (!(answer instanceof Promise)) {
      this.#send(answer);
      return;
    }
    this.#inFlight++;
    this.#metrics.inFlight.inc();
    void answer.then((response) => {
      this.#inFlight--;
      this.#metrics.inFlight.dec();
      this.#send(response);
      if (this.#inFlight === 0) this.#settleIdle();
      this.#updateState();
    });
  }

  #onFatal(err: ProtocolError): void {
    this.#badFrame(err, 'closing connection');
    this.#send({ op: 'error', id: err.requestId ?? 0, code: err.wireCode, detail: err.message });
    this.socket.end();
    this.#closeTimer = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
    // Paused for backpressure or not, the client's bytes are read and dropped (the reader has failed) until then.
    this.socket.resume();
  }

  /** Counts every bad frame; logs it within the rate limit of its error code. */
  #badFrame(err: ProtocolError, what: string): void {
    const code = errorCodeName(err.wireCode);
    this.#metrics.requests.inc({ op: 'invalid', algorithm: 'none', result: code });
    this.#limiter.warn(
      this.#log,
      `bad_frame:${code}:${this.client.rule}`,
      { client: this.client.name, transport: this.client.transport, code },
      `${what}: ${err.message}`,
    );
  }

  #send(response: Response): void {
    const socket = this.socket;
    if (socket.destroyed || !socket.writable) return;
    if (!this.#reading && !this.#corked) {
      this.#corked = true;
      socket.cork();
      // Once per event-loop turn, not per tick: signatures come back from the
      // workers in separate callbacks, and a tick would hold only one of them.
      setImmediate(() => {
        this.#corked = false;
        socket.uncork();
      });
    }
    if (!socket.write(encodeResponse(response))) {
      socket.pause();
      // No more of a pending frame can arrive until the drain resumes reading (the frame deadline, above).
      this.#stopFrameClock();
      this.#unreadTimer ??= setTimeout(() => {
        this.#unreadTooLong = true;
        this.#updateState();
      }, this.#limits.frameTimeoutMs);
      this.#updateState();
    }
  }

  /** Answers held frames, in order, until the socket backs up again or none is left. */
  #answerHeld(): void {
    const held = this.#held;
    this.#held = [];
    let next = 0;
    this.#reading = true;
    this.socket.cork();
    try {
      while (next < held.length && !this.socket.writableNeedDrain) {
        const { frame, readAt } = held[next++]!;
        this.#onFrame(frame, readAt);
      }
    } finally {
      this.#reading = false;
      this.socket.uncork();
      // Frames not reached wait again, ahead of any held meanwhile (none can be: reading is paused).
      this.#held = held.slice(next).concat(this.#held);
    }
    this.#updateState();
  }

  #settleIdle(): void {
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }
}
