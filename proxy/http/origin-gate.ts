/**
 * Admission to one origin's connections in one worker: at most `connections`
 * requests run at a time (the undici Pool has as many connections, so undici's
 * own queue, which has no bound, stays empty); at most `maxQueue` more wait,
 * each at most `waitMs`. A request past either bound is refused with
 * KEYEDGE_HTTP_ORIGIN_BUSY (503 with Retry-After, RFC 9110 §15.6.4): a
 * quick refusal the client may retry beats a wait that ends in a timeout.
 *
 * Places held as long as a client likes, requests whose body streams
 * (larger than the buffer, body.ts) and WebSocket tunnels (upgrade.ts), may
 * be at most half the connections (`upload` here): a client can keep an
 * upload going for as long as the body timeouts allow, a tunnel for as long
 * as it carries a byte now and then, and the other half stays for everyone else.
 *
 * Invariant: no waiter could be admitted (each `leave` admits whoever fits),
 * so a request that fits now goes ahead of waiters without unfairness: those
 * are waiting for an upload slot it does not need. Single-threaded.
 */

import type { EventEmitter } from 'node:events';
import { ClientGone } from './errors.js';

/** Seconds a refused client is told to wait (Retry-After): a busy origin usually drains within seconds. */
export const BUSY_RETRY_AFTER_SECONDS = 5;

export class OriginBusyError extends Error {
  readonly code = 'KEYEDGE_HTTP_ORIGIN_BUSY';
}

interface Waiter {
  readonly upload: boolean;
  readonly admitted: () => void;
  readonly timer: NodeJS.Timeout;
}

export class OriginGate {
  readonly connections: number;
  readonly maxQueue: number;
  readonly waitMs: number;
  readonly #maxUploads: number;
  #active = 0;
  #uploads = 0;
  readonly #waiting: Waiter[] = [];

  constructor(connections: number, maxQueue: number, waitMs: number) {
    this.connections = connections;
    this.maxQueue = maxQueue;
    this.waitMs = waitMs;
    this.#maxUploads = Math.max(1, Math.floor(connections / 2));
  }

  /**
   * `true` when the request is admitted now (no allocation on this path);
   * otherwise a promise that resolves once it is admitted, or rejects with
   * OriginBusyError when the queue is full or the wait too long. A waiter
   * whose `abandon` emits 'abort' (its client left) gives up its place at
   * once, rejecting with ECONNRESET: a client that opens and drops requests
   * must not hold the queue for others. Each admission is ended by exactly
   * one `leave(upload)`.
   */
  /** Admits the request if it fits now (no allocation); `false`: call `enter` to wait. */
  tryEnter(upload: boolean): boolean {
    if (!this.#fits(upload)) return false;
    this.#admit(upload);
    return true;
  }

  enter(upload: boolean, abandon?: EventEmitter): true | Promise<void> {
    if (this.#fits(upload)) {
      this.#admit(upload);
      return true;
    }
    if (this.#waiting.length >= this.maxQueue)
      return Promise.reject(new OriginBusyError(`origin busy: ${this.#active} requests running and ${this.#waiting.length} waiting`));
    return new Promise((admitted, refused) => {
      const giveUp = (err: Error): void => {
        const at = this.#waiting.indexOf(waiter);
        if (at >= 0) this.#waiting.splice(at, 1);
        clearTimeout(waiter.timer);
        abandon?.off('abort', onAbandon);
        refused(err);
      };
      const onAbandon = (): void => giveUp(new ClientGone('the client left while its request waited for an origin connection'));
      const waiter: Waiter = {
        upload,
        admitted: () => {
          abandon?.off('abort', onAbandon);
          admitted();
        },
        timer: setTimeout(() => giveUp(new OriginBusyError(`origin busy: no connection free within ${this.waitMs} ms`)), this.waitMs),
      };
      abandon?.once('abort', onAbandon);
      this.#waiting.push(waiter);
    });
  }

  leave(upload: boolean): void {
    this.#active--;
    if (upload) this.#uploads--;
    for (let i = 0; i < this.#waiting.length && this.#active < this.connections; ) {
      const waiter = this.#waiting[i]!;
      if (!this.#fits(waiter.upload)) {
        i++;
        continue;
      }
      this.#waiting.splice(i, 1);
      clearTimeout(waiter.timer);
      this.#admit(waiter.upload);
      waiter.admitted();
    }
  }

  /** Requests running and waiting, for tests and metrics. */
  get load(): { readonly active: number; readonly uploads: number; readonly waiting: number } {
    return { active: this.#active, uploads: this.#uploads, waiting: this.#waiting.length };
  }

  #fits(upload: boolean): boolean {
    return this.#active < this.connections && (!upload || this.#uploads < this.#maxUploads);
  }

  #admit(upload: boolean): void {
    this.#active++;
    if (upload) this.#uploads++;
  }
}
