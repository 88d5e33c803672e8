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
 * Per client, the same half: one client (`client`, its address as
 * limits.maxConnectionsPerClient counts it, tls/connection-limits.ts) holds at
 * most half the places, and at most half the queue waits for it. A client
 * that reads nothing of its answers holds each place until
 * limits.sendTimeoutMs (answers are relayed, not buffered): with 128 HTTP/2
 * streams, or 16 connections of 4 pipelined requests, it held every place
 * of the origin for a minute at a time, and every other client of the origin
 * got 503. Its requests past its share wait (a browser's burst of streams is
 * served as its own requests end); the other half stays for other clients.
 * Of its share, at most half may be long-held (its tunnels and uploads), so
 * its own short requests keep the rest: a client behind one address (a NAT,
 * many tabs of a chat application) whose WebSockets took its whole share had
 * every other request wait and end in 503, free places or not.
 * A request without a client (a trusted proxy's, which carries many; or no
 * per-client cap configured) has no share.
 *
 * Invariant: no waiter could be admitted (each `leave` admits whoever fits),
 * so a request that fits now goes ahead of waiters without unfairness: those
 * are waiting for an upload slot or a share of their own it does not need.
 * Single-threaded.
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
  readonly client: string | undefined;
  readonly admitted: () => void;
  readonly timer: NodeJS.Timeout;
}

export class OriginGate {
  readonly connections: number;
  readonly maxQueue: number;
  readonly waitMs: number;
  readonly #maxUploads: number;
  /** Places one client may hold, long-held ones of them, and requests of one client that may wait. */
  readonly #clientShare: number;
  readonly #clientUploads: number;
  readonly #clientQueue: number;
  #active = 0;
  #uploads = 0;
  readonly #waiting: Waiter[] = [];
  /** Places held, and requests waiting, per client: an entry only while it is not 0. */
  readonly #held = new Map<string, number>();
  readonly #heldUploads = new Map<string, number>();
  readonly #queued = new Map<string, number>();

  constructor(connections: number, maxQueue: number, waitMs: number) {
    this.connections = connections;
    this.maxQueue = maxQueue;
    this.waitMs = waitMs;
    this.#maxUploads = Math.max(1, Math.floor(connections / 2));
    this.#clientShare = Math.max(1, Math.floor(connections / 2));
    this.#clientUploads = Math.max(1, Math.floor(this.#clientShare / 2));
    this.#clientQueue = Math.max(1, Math.floor(maxQueue / 2));
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
  tryEnter(upload: boolean, client?: string): boolean {
    if (!this.#fits(upload, client)) return false;
    this.#admit(upload, client);
    return true;
  }

  enter(upload: boolean, abandon?: EventEmitter, client?: string): true | Promise<void> {
    if (this.#fits(upload, client)) {
      this.#admit(upload, client);
      return true;
    }
    if (this.#waiting.length >= this.maxQueue)
      return Promise.reject(new OriginBusyError(`origin busy: ${this.#active} requests running and ${this.#waiting.length} waiting`));
    if (client !== undefined && (this.#queued.get(client) ?? 0) >= this.#clientQueue)
      return Promise.reject(
        new OriginBusyError(`origin busy: this client holds ${this.#held.get(client) ?? 0} places and ${this.#clientQueue} of its requests wait`),
      );
    return new Promise((admitted, refused) => {
      const giveUp = (err: Error): void => {
        const at = this.#waiting.indexOf(waiter);
        if (at >= 0) {
          this.#waiting.splice(at, 1);
          if (client !== undefined) count(this.#queued, client, -1);
        }
        clearTimeout(waiter.timer);
        abandon?.off('abort', onAbandon);
        refused(err);
      };
      const onAbandon = (): void => giveUp(new ClientGone('the client left while its request waited for an origin connection'));
      const waiter: Waiter = {
        upload,
        client,
        admitted: () => {
          abandon?.off('abort', onAbandon);
          admitted();
        },
        timer: setTimeout(() => giveUp(new OriginBusyError(this.#busyWaiting(upload, client))), this.waitMs),
      };
      abandon?.once('abort', onAbandon);
      this.#waiting.push(waiter);
      if (client !== undefined) count(this.#queued, client, 1);
    });
  }

  /** Ends an admission: `upload` and `client` as it was entered with. */
  leave(upload: boolean, client?: string): void {
    this.#active--;
    if (upload) this.#uploads--;
    if (client !== undefined) {
      count(this.#held, client, -1);
      if (upload) count(this.#heldUploads, client, -1);
    }
    for (let i = 0; i < this.#waiting.length && this.#active < this.connections; ) {
      const waiter = this.#waiting[i]!;
      if (!this.#fits(waiter.upload, waiter.client)) {
        i++;
        continue;
      }
      this.#waiting.splice(i, 1);
      if (waiter.client !== undefined) count(this.#queued, waiter.client, -1);
      clearTimeout(waiter.timer);
      this.#admit(waiter.upload, waiter.client);
      waiter.admitted();
    }
  }

  /** Requests running and waiting, for tests and metrics. */
  get load(): { readonly active: number; readonly uploads: number; readonly waiting: number } {
    return { active: this.#active, uploads: this.#uploads, waiting: this.#waiting.length };
  }

  /** Places `client` holds, and its requests waiting, for tests. */
  clientLoad(client: string): { readonly held: number; readonly waiting: number } {
    return { held: this.#held.get(client) ?? 0, waiting: this.#queued.get(client) ?? 0 };
  }

  #fits(upload: boolean, client: string | undefined): boolean {
    return (
      this.#active < this.connections &&
      (!upload || this.#uploads < this.#maxUploads) &&
      (client === undefined || ((this.#held.get(client) ?? 0) < this.#clientShare && (!upload || (this.#heldUploads.get(client) ?? 0) < this.#clientUploads)))
    );
  }

  /** Why a wait ended unadmitted: no place free, or none of the client's share (places may be free). */
  #busyWaiting(upload: boolean, client: string | undefined): string {
    const held = client === undefined ? 0 : (this.#held.get(client) ?? 0);
    if (this.#active < this.connections && client !== undefined && held >= this.#clientShare)
      return `origin busy: this client held its share of the places (${held} of ${this.connections}) for ${this.waitMs} ms`;
    if (this.#active < this.connections && upload) return `origin busy: no place for a streamed upload or tunnel free within ${this.waitMs} ms`;
    return `origin busy: no connection free within ${this.waitMs} ms`;
  }

  #admit(upload: boolean, client: string | undefined): void {
    this.#active++;
    if (upload) this.#uploads++;
    if (client !== undefined) {
      count(this.#held, client, 1);
      if (upload) count(this.#heldUploads, client, 1);
    }
  }
}

/** Adds `by` to `client`'s count, dropping the entry at 0: memory bounded by the clients with a place or a wait. */
function count(counts: Map<string, number>, client: string, by: number): void {
  const now = (counts.get(client) ?? 0) + by;
  if (now === 0) counts.delete(client);
  else counts.set(client, now);
}
