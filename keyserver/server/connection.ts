/**
 * One client connection (unix or mutual TLS): frames in, answers out.
 *
 * Requests are handled concurrently and answered as each finishes, matched by
 * request id (SPEC.md), up to `maxInFlight` per connection; beyond that a
 * request is answered OVERLOADED at once instead of queueing without bound.
 * When the socket cannot take more output the connection stops reading until
 * it drains, so a client that never reads cannot grow our memory.
 *
 * A bad frame body is answered with an error and the connection carries on; a
 * frame whose length cannot be trusted (FRAME_TOO_LARGE) is answered, then the
 * connection is closed, since the byte stream has lost its framing.
 *
 * Answers finished in the same event-loop turn are written as one batch
 * (cork, uncork on setImmediate): on a busy connection that turns many small
 * writes into one syscall, and over TLS into one record.
 */
import type { Socket } from 'node:net';
import { ProtocolError } from '../errors.js';
import type { Logger } from '../log.js';
import { decodeRequest, encodeResponse, type Response } from '../protocol/codec.js';
import { errorCodeName, ErrorCode } from '../protocol/constants.js';
import { FrameReader } from '../protocol/framer.js';
import type { ClientIdentity } from './authz.js';
import type { KeyserverMetrics } from './metrics.js';
import type { SigningService } from './service.js';

export interface ConnectionLimits {
  readonly maxBodyBytes: number;
  readonly maxInFlightPerConnection: number;
}

export class KeyserverConnection {
  readonly socket: Socket;
  readonly #client: ClientIdentity;
  readonly #service: SigningService;
  readonly #metrics: KeyserverMetrics;
  readonly #log: Logger;
  readonly #limits: ConnectionLimits;
  readonly #reader: FrameReader;
  #inFlight = 0;
  #corked = false;
  #idleWaiters: (() => void)[] = [];

  constructor(socket: Socket, client: ClientIdentity, service: SigningService, metrics: KeyserverMetrics, log: Logger, limits: ConnectionLimits) {
    this.socket = socket;
    this.#client = client;
    this.#service = service;
    this.#metrics = metrics;
    this.#log = log;
    this.#limits = limits;
    this.#reader = new FrameReader({
      maxBodyBytes: limits.maxBodyBytes,
      onFrame: (frame) => this.#onFrame(frame),
      onError: (err) => this.#onFatal(err),
    });
    socket.on('data', (chunk: Buffer) => this.#reader.push(chunk));
    socket.on('drain', () => socket.resume());
    socket.on('close', () => this.#settleIdle());
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Resolves once no request of this connection is running (at once if none is). */
  idle(): Promise<void> {
    if (this.#inFlight === 0 || this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #onFrame(frame: Buffer): void {
    let request;
    try {
      request = decodeRequest(frame, this.#limits.maxBodyBytes);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.#metrics.requests.inc({ op: 'invalid', algorithm: 'none', result: errorCodeName(err.wireCode) });
      this.#log.warn({ client: this.#client.name, transport: this.#client.transport, code: errorCodeName(err.wireCode) }, `bad request: ${err.message}`);
      this.#send({ op: 'error', id: err.requestId ?? 0, code: err.wireCode, detail: err.message });
      return;
    }
    if (this.#inFlight >= this.#limits.maxInFlightPerConnection) {
      this.#metrics.requests.inc({ op: request.op, algorithm: 'none', result: 'OVERLOADED' });
      this.#send({ op: 'error', id: request.id, code: ErrorCode.OVERLOADED, detail: `more than ${this.#limits.maxInFlightPerConnection} requests in flight` });
      return;
    }
    const answer = this.#service.handle(request, this.#client);
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
    });
  }

  #onFatal(err: ProtocolError): void {
    this.#metrics.requests.inc({ op: 'invalid', algorithm: 'none', result: errorCodeName(err.wireCode) });
    this.#log.warn({ client: this.#client.name, transport: this.#client.transport, code: errorCodeName(err.wireCode) }, `closing connection: ${err.message}`);
    this.#send({ op: 'error', id: err.requestId ?? 0, code: err.wireCode, detail: err.message });
    this.socket.end();
  }

  #send(response: Response): void {
    const socket = this.socket;
    if (socket.destroyed || !socket.writable) return;
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      // Once per event-loop turn, not per tick: signatures come back from the
      // workers in separate callbacks, and a tick would hold only one of them.
      setImmediate(() => {
        this.#corked = false;
        socket.uncork();
      });
    }
    if (!socket.write(encodeResponse(response))) socket.pause();
  }

  #settleIdle(): void {
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }
}
