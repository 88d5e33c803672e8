/**
 * A fixed pool of PKCS#11 sessions for signing.
 *
 * A PKCS#11 session runs one cryptographic operation at a time (v2.40 §5.6),
 * so concurrent signs need one session each. The pool size is the signing
 * concurrency: the key server sizes libuv's thread pool to match, because each
 * async C_Sign occupies one libuv thread for its whole duration.
 *
 * Contract: `acquire()` resolves with a session that the caller owns until it
 * passes it to `release()` (or `discard()` when the token reported the session
 * broken: a fresh one replaces it). Waiters are served in arrival order. A
 * waiter whose `ticket.withdrawn` was set (its deadline passed) is skipped and
 * its promise never settles; a flag rather than an AbortSignal, because this
 * runs once per signature and an AbortController costs several microseconds.
 */
import assert from 'node:assert/strict';
import type pkcs11js from 'pkcs11js';
import { KeyedgeError } from '../errors.js';
import type { Token } from './token.js';

interface Waiter {
  resolve(session: pkcs11js.Handle): void;
  reject(err: Error): void;
  readonly ticket: WaitTicket | undefined;
}

/** Set `withdrawn` to give up waiting for a session. */
export interface WaitTicket {
  withdrawn: boolean;
}

export class SessionPool {
  readonly size: number;
  readonly #token: Token;
  readonly #idle: pkcs11js.Handle[] = [];
  readonly #waiters: Waiter[] = [];
  #out = 0;
  #drainWaiters: (() => void)[] = [];
  #closed = false;

  constructor(token: Token, size: number) {
    assert.ok(size >= 1);
    this.#token = token;
    this.size = Math.min(size, token.maxSessions - 1);
    for (let i = 0; i < this.size; i++) this.#idle.push(token.openSession());
  }

  get waiting(): number {
    return this.#waiters.length;
  }

  acquire(ticket?: WaitTicket): Promise<pkcs11js.Handle> | pkcs11js.Handle {
    if (this.#closed) throw new KeyedgeError('KEYEDGE_ERR_CLOSED', 'the signing session pool is closed');
    const session = this.#idle.pop();
    // Returned synchronously when one is free: the common case pays no promise.
    if (session !== undefined) {
      this.#out++;
      return session;
    }
    return new Promise((resolve, reject) => {
      this.#waiters.push({
        resolve: (s) => {
          this.#out++;
          resolve(s);
        },
        reject,
        ticket,
      });
    });
  }

  release(session: pkcs11js.Handle): void {
    this.#out--;
    if (this.#out === 0) for (const resolve of this.#drainWaiters.splice(0)) resolve();
    if (this.#closed) {
      this.#token.closeSession(session);
      return;
    }
    let waiter = this.#waiters.shift();
    while (waiter?.ticket?.withdrawn) waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter.resolve(session);
    else this.#idle.push(session);
  }

  /** Closes a session the token reported broken and puts a fresh one in its place. */
  discard(session: pkcs11js.Handle): void {
    this.#token.closeSession(session);
    this.#out--;
    if (this.#out === 0) for (const resolve of this.#drainWaiters.splice(0)) resolve();
    if (this.#closed) return;
    let fresh: pkcs11js.Handle;
    try {
      fresh = this.#token.openSession();
    } catch (err) {
      // The token is gone: the waiters cannot be served by this pool any more.
      for (const waiter of this.#waiters.splice(0)) waiter.reject(err as Error);
      throw err;
    }
    this.#out++;
    this.release(fresh);
  }

  /** Resolves once no session is out (every token call has returned), so the token can be closed safely. */
  drained(): Promise<void> {
    if (this.#out === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** Closes idle sessions; sessions still out are closed on release. */
  close(): void {
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new KeyedgeError('KEYEDGE_ERR_CLOSED', 'the signing session pool closed'));
    }
    for (const session of this.#idle.splice(0)) this.#token.closeSession(session);
  }
}
