/**
 * Signing on worker threads, one token session each.
 *
 * Why threads and not pkcs11js's async C_Sign: C_SignInit has no async form,
 * and with a token object SoftHSM2 makes it the dearer half (it re-reads the
 * key object from the token's files), so on the event loop alone it capped the
 * whole key server at one core's worth of C_SignInit. On a thread C_SignInit
 * and C_Sign run back to back. Requests travel to a thread in batches
 * (sign-thread.ts), so under load the hand-off is amortised.
 *
 * Fairness: signs waiting for a thread are queued per connection (the flow is
 * the request's `signal`, one per connection) and taken in turn across
 * connections (sign-queue.ts), each batch drawn that way, not first come first
 * served: a connection that pipelines a backlog of signs (one RSA-2048 sign is
 * 0.6-0.8 ms of a thread on SoftHSM2) delays another connection's sign by about
 * one of its signs per turn, plus the batches already posted to the threads
 * (sign-thread.ts: small, and never more than WINDOW a thread). Per connection,
 * not per client identity: on the unix socket every local client has the same
 * identity (admission.ts), so turns by identity would make the proxy and a
 * local flooder one flow; a client that opens many connections gets a turn for
 * each (its connections are capped per identity, admission.ts). Each take is
 * O(1); the threads take batches as they have room (`#flush`), and a batch is
 * spread over the threads with room (`#batchSize`).
 *
 * Each thread (sign-thread.ts) has a token session of its own and uses the
 * key handles opened here (PKCS#11 handles belong to the process).
 *
 * While the event loop has time to spare, a signature is made right on it
 * instead, ECDSA and RSA alike: at handshake rates (one request at a time)
 * the hand-off wakes a thread and then the loop for every request, which
 * measured 150-250 µs of main-thread CPU per sign on a busy core, more than an
 * ECDSA sign itself. So that the loop never stalls on the token under load,
 * inline signing may use at most INLINE_SHARE of the loop's time (a token
 * bucket of INLINE_BURST_MS, refilled at that share of the time passing, the
 * signing's own included: back to back, inline signs run about
 * INLINE_BURST_MS ÷ (1 − INLINE_SHARE), some 8 ms or a dozen RSA-2048 signs of
 * about 0.6 ms, before the bucket is empty, longer on a loop slowed between
 * them); past that, requests are queued for the threads. A request never
 * waits behind the threads' queue while the loop could sign it.
 *
 * Keys are signed through their session copies (session-keys.ts), which
 * spares the token re-reading its stored object on every C_SignInit. A sign
 * holds the handle it took from the time it is asked for until it settles, so
 * a copy dropped by a recheck meanwhile is not destroyed under a sign queued or
 * posted with it.
 *
 * A thread that fails is logged and restarted with a backoff (sign-thread.ts);
 * its unanswered jobs go to another thread or inline (or are skipped, their
 * deadline past: a signature has no side effect, so signing again is safe).
 * With no thread left, the queue is signed inline within the inline budget, a
 * bucket's worth a turn of the event loop, until a thread is back
 * (`#signQueuedInline`): signed all at once, a queue of thousands of signs
 * held the loop (answers, /healthz, /metrics) for seconds.
 * A request whose `signal` aborted (its connection closed) while it waited to
 * be sent to a thread is dropped, and rejects with 'dropped'; one whose
 * deadline passed while it waited is dropped too, with 'expired' (see
 * `droppedUnsent`): a client cannot leave work queued ahead of others', and a
 * backlog of signs nobody waits for any more (their deadline answered) costs
 * no batch slot on a thread ahead of fresh ones.
 * While no thread is up, every sign is made inline, whatever the budget: a
 * slower event loop beats refusing signs the token can make. But while a
 * thread is stuck in the token (stuck-signs.ts: on a batch of signs, or in its
 * start, C_Initialize), nothing is signed inline: a
 * token that holds one call is likely to hold the next, and a call held on the
 * event loop holds everything (no answers, /healthz, /metrics or signal
 * handling); signs go to the threads not stuck, and while every thread is,
 * they are refused at once (the client sees SIGN_FAILED), not queued behind
 * calls that do not come back. An inline call the token holds anyway is seen
 * by the watch over the event loop (loop-watch.ts), which logs it and, past a
 * bound, ends the process. `ready()`
 * resolves once every thread has loaded or failed its first start, so the
 * server says it is ready when the threads are.
 *
 * A sign operation a failed C_Sign left active is ended when the session's
 * next C_SignInit meets it (sign.ts `signInit`), inline and on the threads:
 * else that session answered every later C_SignInit CKR_OPERATION_ACTIVE.
 *
 * An RSA signature is checked against the key's public key where it was made,
 * on its thread or inline (sign-verify.ts), before `sign()` gives it back.
 *
 * Contract: the constructor opens every session (the inline one, one a thread) before it starts a thread, so one the
 * token refuses fails it with nothing left open or running. `sign()` returns the raw signature (signed inline) or a promise of
 * it (signed on a thread); either way a failure is a TokenError with the
 * token's CKR_ reason (thrown, or a rejection), or, for an RSA signature that
 * does not verify, KEYEDGE_ERR_TOKEN_SIGNATURE (sign-verify.ts
 * `isSignatureRefused`). A request whose deadline
 * passed before a worker got to it is skipped (rejects with 'deadline') and
 * costs the token nothing. One
 * request runs at a time per worker. `close()` waits for what was sent, then
 * stops the workers (a sign that never comes back from the token holds it: it
 * is logged and counted, stuck-signs.ts; `stuck()` says how many); the Token is closed after that by its owner. Signs are
 * refused after `close()`, and while every thread up is stuck in the token
 * (`refusingSigns`, which /healthz answers 503 for).
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import type pkcs11js from 'pkcs11js';
import { TokenError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import type { TokenKey } from './keys.js';
import { ownBytes, ownsItsBytes } from '../shared/own-bytes.js';
import { checkSigned, signInit, signPlan, type SignRequest } from './sign.js';
import { signatureRefused } from './sign-verify.js';
import { SessionKeys } from './session-keys.js';
import { BATCH_MAX, DEADLINE_SKIPPED, type Job, type JobResult, SignThread, type ThreadOwner } from './sign-thread.js';
import { FairQueue } from './sign-queue.js';
import { type StuckSigns, StuckWatch } from './stuck-signs.js';
import type { Token } from './token.js';

/** Inline signs may take at most this share of the event loop's time... */
const INLINE_SHARE = 0.75;
/** ...from a bucket of this much signing time (bursts run longer: it refills as they sign, above). */
const INLINE_BURST_MS = 2;
/** `ready()` waits at most this long for the threads' first start: inline signing serves meanwhile. */
const READY_WAIT_MS = 10_000;

/** Whether a sign's rejection says a worker skipped it, its deadline past before the worker got to it (nothing reached the token). */
export function skippedPastDeadline(err: unknown): boolean {
  return err instanceof TokenError && err.message === DEADLINE_SKIPPED;
}

/** A sign's rejection when it was dropped unsent: its signal aborted, or its deadline passed. */
const DROPPED = { closed: 'dropped', deadline: 'expired' } as const;

/** Why a sign was dropped before reaching a thread (nothing reached the token): its signal aborted, or its deadline passed; undefined for any other rejection. */
export function droppedUnsent(err: unknown): keyof typeof DROPPED | undefined {
  if (!(err instanceof TokenError)) return undefined;
  if (err.message === DROPPED.closed) return 'closed';
  if (err.message === DROPPED.deadline) return 'deadline';
  return undefined;
}

/** What watches for signs that do not come back from the token (stuck-signs.ts). */
export interface StuckOptions {
  /** A thread on one batch longer than this is stuck. */
  readonly stuckAfterMs: number;
  /** The change in stuck threads, for a gauge. */
  readonly onStuck?: (delta: number) => void;
}

/** A sign's refusal while every signing thread is stuck in the token. */
const NOT_ANSWERING = 'the token is not answering: every signing thread is held by a call that has not come back; not signed';

/** A thread is stuck past twice the request deadline (its jobs' deadlines are long past), and never under a second. */
export function stuckAfterMs(requestTimeoutMs: number): number {
  return Math.max(1_000, 2 * requestTimeoutMs);
}

/**
 * Signs sent to the threads and not answered: how many; the threads inside the module (those signs', and any still
 * starting), the longest one has been there, and the PKCS#11 functions they are in.
 */
export interface InToken {
  readonly signs: number;
  readonly threads: number;
  readonly longestMs: number;
  /** The longest a thread has been on its current batch of signs, 0 if none. */
  readonly longestSignMs: number;
  /** The longest a thread still in its start (C_Initialize) has been there, 0 if none: a start has a bound of its own (stuck-signs.ts). */
  readonly longestStartMs: number;
  readonly calls: readonly string[];
}

/** The flow of signs made with no `signal`: they take their turns as one connection. */
const NO_CONNECTION = {};

interface Pending {
  /** The thread it was sent to; undefined while it waits in the queue. */
  lane: SignThread | undefined;
  readonly job: Job;
  readonly signal: AbortSignal | undefined;
  resolve(signature: Buffer): void;
  reject(err: Error): void;
}

export class SigningWorkers {
  readonly size: number;
  readonly #token: Token;
  readonly #lanes: SignThread[] = [];
  /** Every sign not answered yet: queued, or sent to a thread. */
  readonly #pending = new Map<number, Pending>();
  /** Signs waiting for a thread, in turns by connection. */
  readonly #queue = new FairQueue<Pending>();
  #nextId = 0;
  #flushScheduled = false;
  #drainWaiters: (() => void)[] = [];
  #closed = false;
  /** The event loop's own session, for signs while no thread is busy; it also owns the key copies. */
  readonly #inlineSession: pkcs11js.Handle;
  readonly #sessionKeys: SessionKeys;
  /** Token bucket of inline signing time (ms): refills at INLINE_SHARE of the time passing, up to INLINE_BURST_MS. */
  #inlineBudgetMs = INLINE_BURST_MS;
  #inlineCheckedAt = 0;
  /** A later turn of `#signQueuedInline` is due. */
  #inlineTurn: NodeJS.Timeout | undefined;
  readonly #watch: StuckWatch;

  constructor(token: Token, modulePath: string, count: number, log: Logger, stuck: StuckOptions) {
    assert.ok(count >= 1);
    this.#token = token;
    // One session each for: management (the Token's), the inline path, every thread.
    this.size = Math.max(1, Math.min(count, token.maxSessions - 2));
    // Every session is opened before any thread starts: a token that refuses one (at its session limit) fails the build
    // with nothing left behind. Started first, the threads before it kept running, sessions and all, on every failed
    // build, and a reopen retries the build about once a second.
    const sessions: pkcs11js.Handle[] = [];
    try {
      for (let index = 0; index <= this.size; index++) sessions.push(token.openSession());
    } catch (err) {
      for (const session of sessions) token.closeSession(session);
      throw err;
    }
    this.#inlineSession = sessions[0]!;
    this.#sessionKeys = new SessionKeys(token.pkcs11, this.#inlineSession);
    const owner: ThreadOwner = {
      token,
      log,
      workerData: { pkcs11js: createRequire(import.meta.url).resolve('pkcs11js'), modulePath },
      results: (lane, results) => this.#settle(lane, results),
      failed: (lane) => this.#failed(lane),
      ready: () => this.#flush(),
    };
    for (let index = 0; index < this.size; index++) this.#lanes.push(new SignThread(index, owner, sessions[index + 1]!));
    this.#watch = new StuckWatch(this.#lanes, stuck.stuckAfterMs, log, stuck.onStuck ?? (() => {}));
  }

  /** Signs sent to the threads and not answered, the threads holding them, the longest any has been on its current batch, and the calls they are in. */
  inToken(): InToken {
    const now = performance.now();
    let signs = 0;
    let threads = 0;
    let longestMs = 0;
    let longestSignMs = 0;
    let longestStartMs = 0;
    const calls = new Set<string>();
    for (const lane of this.#lanes) {
      const held = lane.inToken(now);
      // A thread with no sign out may still be inside the module: in its start (C_Initialize).
      if (held.signs === 0 && held.call === undefined) continue;
      threads++;
      signs += held.signs;
      longestMs = Math.max(longestMs, held.busyMs);
      if (held.starting) longestStartMs = Math.max(longestStartMs, held.busyMs);
      else longestSignMs = Math.max(longestSignMs, held.busyMs);
      if (held.call !== undefined) calls.add(held.call);
    }
    return {
      signs,
      threads,
      longestMs: Math.round(longestMs),
      longestSignMs: Math.round(longestSignMs),
      longestStartMs: Math.round(longestStartMs),
      calls: [...calls],
    };
  }

  /** Threads whose call into the token has not come back for longer than the bound, and their signs. */
  stuck(): StuckSigns {
    return this.#watch.stuck();
  }

  /** Resolves once every thread has loaded or failed its first start (then it is restarting), at most READY_WAIT_MS. */
  async ready(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    // Not unref'd: the threads are, and until the listeners open nothing else keeps the process alive.
    const wait = new Promise<void>((resolve) => (timer = setTimeout(resolve, READY_WAIT_MS)));
    await Promise.race([Promise.all(this.#lanes.map((lane) => lane.started)), wait]);
    clearTimeout(timer);
  }

  /** Threads loaded and taking jobs. */
  get threadsUp(): number {
    return this.#lanes.filter((lane) => lane.up).length;
  }

  /** Whether every sign is refused at once: every thread up is stuck in the token (the loop must not be next). */
  get refusingSigns(): boolean {
    return this.#watch.anyStuck && !this.#anyTakesJobs();
  }

  /** Jobs sent to the token and not answered yet. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /**
   * `signal`: the connection's, aborted once nobody waits for the answer (it closed); a request not yet sent to a thread
   * is then dropped. It also names the connection the request takes its turns with in the queue for the threads.
   */
  sign(key: TokenKey, request: SignRequest, deadline: number, signal?: AbortSignal): Buffer | Promise<Buffer> {
    if (this.#closed) return Promise.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', 'the signing workers are closed'));
    const plan = signPlan(key, request);
    const now = performance.now();
    // Held until the sign settles, however it does: a copy dropped meanwhile is destroyed after it (session-keys.ts).
    const keys = this.#sessionKeys;
    const held = keys.take(key, now);
    const stuck = this.#watch.anyStuck;
    const inline = !stuck && this.#inlineBudgetLeft(now);
    if (inline || !this.#anyTakesJobs()) {
      try {
        // Every thread up is stuck in the token: the loop must not be next.
        if (stuck) throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', NOT_ANSWERING);
        // No thread up: the loop signs, over budget or not, rather than refuse what the token can do.
        return this.#signInline({ key: held.handle, ...plan }, now);
      } finally {
        keys.release(held);
      }
    }
    const job = {
      id: ++this.#nextId,
      key: held.handle,
      mechanism: plan.mechanism,
      // Copied, on an ArrayBuffer of its own: a view of the client's read (up to 64 KiB) or of Node's 8 KiB pool would be
      // kept while the sign waits, and posting it copies its whole ArrayBuffer (structured clone). Not inline: nothing
      // keeps or posts it there, and the copy (about 1 µs) would be on every handshake's sign.
      input: ownsItsBytes(plan.input) ? plan.input : ownBytes(plan.input),
      outputBytes: plan.outputBytes,
      verify: plan.verify,
      deadline,
    };
    return new Promise((resolve, reject) => {
      // Every way a queued sign ends (answered, dropped, skipped, signed again inline) goes through these; released
      // once even were one called twice, since a second release would free a copy another sign still holds.
      let holding = true;
      const release = (): void => {
        if (holding) keys.release(held);
        holding = false;
      };
      const pending: Pending = {
        job,
        lane: undefined,
        signal,
        resolve: (signature) => {
          release();
          resolve(signature);
        },
        reject: (err) => {
          release();
          reject(err);
        },
      };
      this.#pending.set(job.id, pending);
      this.#queue.push(signal ?? NO_CONNECTION, pending);
      this.#scheduleFlush();
    });
  }

  #scheduleFlush(): void {
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      // Everything asked for in this tick is queued before a batch goes out.
      process.nextTick(() => this.#flush());
    }
  }

  #inlineBudgetLeft(now: number): boolean {
    this.#inlineBudgetMs = Math.min(INLINE_BURST_MS, this.#inlineBudgetMs + (now - this.#inlineCheckedAt) * INLINE_SHARE);
    this.#inlineCheckedAt = now;
    return this.#inlineBudgetMs > 0;
  }

  /** Signs on the event loop, the check of an RSA signature included (and charged to the inline budget with the sign). */
  #signInline(job: Pick<Job, 'key' | 'mechanism' | 'input' | 'outputBytes' | 'verify'>, started: number): Buffer {
    const pkcs11 = this.#token.pkcs11;
    try {
      let signature: Buffer;
      try {
        signInit(pkcs11, this.#inlineSession, job.mechanism, job.key, job.input);
        signature = pkcs11.C_Sign(this.#inlineSession, job.input, Buffer.allocUnsafe(job.outputBytes));
      } catch (err) {
        throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', (err as Error).message.split('\n')[0] ?? 'C_Sign failed');
      }
      checkSigned(job, signature);
      return signature;
    } finally {
      this.#inlineBudgetMs -= performance.now() - started;
    }
  }

  /** Resolves once every job sent has been answered. */
  drained(): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#watch.closing = true;
    // Never C_Finalize while a thread is inside the module (v2.40 §5.4): a sign that hangs in the token holds this (the watch logs it).
    await this.drained();
    this.#watch.stop();
    await Promise.all(this.#lanes.map((lane) => lane.stop()));
    this.#sessionKeys.clear();
    this.#token.closeSession(this.#inlineSession);
  }

  /**
   * A thread that died: the jobs it held are made again elsewhere, back at the head of their connection's turn. With
   * no thread left to take them, the queued ones too (inline within its budget, or refused while the threads are
   * stuck): none waits for a restart that may be seconds away.
   */
  #failed(lane: SignThread): void {
    // Newest first: each is put back at the head of its connection's queue, so they are made again oldest first.
    for (const pending of [...this.#pending.values()].reverse()) if (pending.lane === lane) this.#retry(pending);
    if (!this.#anyTakesJobs()) this.#signQueuedInline();
    this.#drainedCheck();
  }

  /**
   * With no thread taking jobs, the queued signs in their turns: refused at once while a thread is stuck in the token
   * (as in `#retry`), else signed inline while the budget lasts, the rest on later turns of the event loop, once it
   * has refilled, until the queue is empty or a thread is back (its `ready()` takes them).
   */
  #signQueuedInline(): void {
    this.#inlineTurn = undefined;
    if (this.#anyTakesJobs()) return;
    while (this.#queue.size > 0 && (this.#watch.anyStuck || this.#inlineBudgetLeft(performance.now()))) {
      // Those whose connection closed, or whose deadline passed, dropped: signed here, for nobody, they would hold the
      // answers of connections still open.
      const pending = this.#queue.shift((queued) => this.#dropped(queued));
      if (pending === undefined) break;
      this.#pending.delete(pending.job.id);
      if (this.#watch.anyStuck) {
        pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', NOT_ANSWERING));
        continue;
      }
      try {
        pending.resolve(this.#signInline(pending.job, performance.now()));
      } catch (err) {
        pending.reject(err as Error);
      }
    }
    // Not one turn more than the budget needs to refill past the last sign's overrun (at least a millisecond).
    if (this.#queue.size > 0) this.#inlineTurn ??= setTimeout(() => this.#signQueuedInline(), Math.max(1, -this.#inlineBudgetMs / INLINE_SHARE));
    this.#drainedCheck();
  }

  /**
   * A job unanswered whose thread died: queued again to be signed elsewhere (a signature has no side effect; with no
   * thread left, on the event loop, `#signQueuedInline`), or skipped past its deadline, or dropped once its connection
   * closed: with no thread left it would be signed on the event loop, for nobody, ahead of the answers of connections
   * still open.
   */
  #retry(pending: Pending): void {
    const { job } = pending;
    if (pending.signal?.aborted === true) {
      this.#pending.delete(job.id);
      return pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', DROPPED.closed));
    }
    if (Date.now() > job.deadline) {
      this.#pending.delete(job.id);
      return pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', DEADLINE_SKIPPED));
    }
    pending.lane = undefined;
    this.#queue.unshift(pending.signal ?? NO_CONNECTION, pending);
    this.#scheduleFlush();
  }

  /** A queued job whose signal aborted or whose deadline passed: answered as dropped instead of sent. */
  #dropped(pending: Pending): boolean {
    const reason = pending.signal?.aborted === true ? DROPPED.closed : Date.now() > pending.job.deadline ? DROPPED.deadline : undefined;
    if (reason === undefined) return false;
    this.#pending.delete(pending.job.id);
    pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', reason));
    this.#drainedCheck();
    return true;
  }

  #drainedCheck(): void {
    if (this.#pending.size === 0) for (const resolve of this.#drainWaiters.splice(0)) resolve();
  }

  /** Whether a thread is up and not stuck in the token: a sign may wait for it. */
  #anyTakesJobs(): boolean {
    return this.#lanes.some((lane) => lane.up && !this.#watch.isStuck(lane));
  }

  /** Sends queued jobs, a batch at a time, to the thread with room and the fewest batches out, until none has room or nothing is queued. */
  #flush(): void {
    this.#flushScheduled = false;
    while (this.#queue.size > 0) {
      let best: SignThread | undefined;
      let room = 0;
      for (const lane of this.#lanes) {
        if (!lane.takesBatch || this.#watch.isStuck(lane)) continue;
        room++;
        if (best === undefined || lane.batchesOut < best.batchesOut) best = lane;
      }
      if (best === undefined) return;
      this.#sendBatch(best, this.#batchSize(room));
    }
  }

  /** Jobs in the next batch: the queue spread over the threads with room, at most BATCH_MAX (a few signs go to two threads, not one). */
  #batchSize(threadsWithRoom: number): number {
    return Math.min(BATCH_MAX, Math.ceil(this.#queue.size / threadsWithRoom));
  }

  /**
   * Takes up to `size` jobs from the queue, in turns, into one batch for `lane`; those dropped (closed, expired) take
   * no place in it, nor a turn: a flow's turn drops all those at its head (sign-queue.ts).
   */
  #sendBatch(lane: SignThread, size: number): void {
    const batch: Job[] = [];
    while (batch.length < size) {
      const pending = this.#queue.shift((queued) => this.#dropped(queued));
      if (pending === undefined) break;
      pending.lane = lane;
      batch.push(pending.job);
    }
    if (batch.length === 0) return;
    lane.load += batch.length;
    lane.post(batch);
  }

  #settle(lane: SignThread, results: JobResult[]): void {
    lane.load -= results.length;
    for (const result of results) {
      const pending = this.#pending.get(result.id);
      if (pending === undefined) continue;
      this.#pending.delete(result.id);
      if ('signature' in result) pending.resolve(Buffer.from(result.signature.buffer, result.signature.byteOffset, result.signature.byteLength));
      else if ('refused' in result) pending.reject(signatureRefused(result.refused));
      else pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', result.error));
    }
    this.#drainedCheck();
  }
}
