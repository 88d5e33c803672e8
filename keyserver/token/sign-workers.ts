/**
 * Signing on worker threads, one token session each.
 *
 * Why threads and not pkcs11js's async C_Sign: C_SignInit has no async form,
 * and with a token object SoftHSM2 makes it the dearer half (it re-reads the
 * key object from the token's files), so on the event loop alone it capped the
 * whole key server at one core's worth of C_SignInit. On a thread C_SignInit
 * and C_Sign run back to back. Requests reaching a worker in the same tick
 * travel as one message, so under load the hand-off is amortised.
 *
 * PKCS#11 handles belong to the process (v2.40 §5.2): sessions and key
 * handles opened by the main thread's Token are used as they are. A worker
 * loads the same module, whose C_Initialize answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED (expected), and never calls C_Finalize.
 *
 * While the event loop has time to spare, a signature is made right on it
 * instead, ECDSA and RSA alike: at handshake rates (one request at a time)
 * the hand-off wakes a thread and then the loop for every request, which
 * measured 150-250 µs of main-thread CPU per sign on a busy core, more than an
 * ECDSA sign itself. So that the loop never stalls on the token under load,
 * inline signing may use at most INLINE_SHARE of the loop's time, in bursts of
 * at most INLINE_BURST_MS (a token bucket; one RSA-2048 sign is about 0.6 ms);
 * past that, requests go to the threads, batched per tick. A request never
 * waits behind the threads' queue while the loop could sign it.
 *
 * Keys are signed through their session copies (session-keys.ts), which
 * spares the token re-reading its stored object on every C_SignInit.
 *
 * Contract: `sign()` returns the raw signature (signed inline) or a promise of
 * it (signed on a thread); either way a failure is a TokenError with the
 * token's CKR_ reason (thrown, or a rejection). A request whose deadline
 * passed before a worker got to it is skipped (rejects with 'deadline') and
 * costs the token nothing. One
 * request runs at a time per worker. `close()` waits for what was sent, then
 * stops the workers; the Token is closed after that by its owner.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type pkcs11js from 'pkcs11js';
import { TokenError } from '../shared/errors.js';
import type { TokenKey } from './keys.js';
import { type SignPlan, signPlan, type SignRequest } from './sign.js';
import { SessionKeys } from './session-keys.js';
import type { Token } from './token.js';

/** Inline signs may take at most this share of the event loop's time... */
const INLINE_SHARE = 0.75;
/** ...in bursts of at most this much signing (about three RSA-2048 signs). */
const INLINE_BURST_MS = 2;

interface Job {
  readonly id: number;
  readonly key: Buffer;
  readonly mechanism: pkcs11js.Mechanism;
  readonly input: Buffer;
  readonly outputBytes: number;
  readonly deadline: number;
}

/** A job's error when the worker skipped it, its deadline already past. */
const DEADLINE_SKIPPED = 'deadline';

/** Whether a sign's rejection says a worker skipped it, its deadline past before the worker got to it (nothing reached the token). */
export function skippedPastDeadline(err: unknown): boolean {
  return err instanceof TokenError && err.message === DEADLINE_SKIPPED;
}

type JobResult = { readonly id: number; readonly signature: Uint8Array } | { readonly id: number; readonly error: string };

/** The worker's whole program: CommonJS, so it runs the same from sources (tests) and from dist/. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const pkcs11js = require(workerData.pkcs11js);
const pkcs11 = new pkcs11js.PKCS11();
pkcs11.load(workerData.modulePath);
try {
  pkcs11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
} catch (err) {
  if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test(err.message)) throw err;
}
const session = Buffer.from(workerData.session);
parentPort.on('message', (jobs) => {
  const results = [];
  for (const job of jobs) {
    if (Date.now() > job.deadline) {
      results.push({ id: job.id, error: '${DEADLINE_SKIPPED}' });
      continue;
    }
    try {
      pkcs11.C_SignInit(session, job.mechanism, Buffer.from(job.key));
      const signature = pkcs11.C_Sign(session, Buffer.from(job.input), Buffer.allocUnsafe(job.outputBytes));
      results.push({ id: job.id, signature });
    } catch (err) {
      results.push({ id: job.id, error: String(err.message).split('\\n')[0] });
    }
  }
  parentPort.postMessage(results);
});
`;

interface Lane {
  readonly worker: Worker;
  readonly session: pkcs11js.Handle;
  /** Jobs sent and not yet answered, plus those batched for the next send. */
  load: number;
  batch: Job[];
}

interface Pending {
  readonly lane: Lane;
  resolve(signature: Buffer): void;
  reject(err: Error): void;
}

export class SigningWorkers {
  readonly size: number;
  readonly #token: Token;
  readonly #lanes: Lane[] = [];
  readonly #pending = new Map<number, Pending>();
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

  constructor(token: Token, modulePath: string, count: number) {
    assert.ok(count >= 1);
    this.#token = token;
    // One session each for: management (the Token's), the inline path, every thread.
    this.size = Math.max(1, Math.min(count, token.maxSessions - 2));
    this.#inlineSession = token.openSession();
    this.#sessionKeys = new SessionKeys(token.pkcs11, this.#inlineSession);
    const pkcs11jsPath = createRequire(import.meta.url).resolve('pkcs11js');
    for (let i = 0; i < this.size; i++) {
      const session = token.openSession();
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { pkcs11js: pkcs11jsPath, modulePath, session } });
      const lane: Lane = { worker, session, load: 0, batch: [] };
      worker.on('message', (results: JobResult[]) => this.#settle(lane, results));
      worker.on('error', (err) => this.#failLane(lane, err));
      worker.unref();
      this.#lanes.push(lane);
    }
  }

  /** Jobs sent to the token and not answered yet. */
  get inFlight(): number {
    return this.#pending.size;
  }

  sign(key: TokenKey, request: SignRequest, deadline: number): Buffer | Promise<Buffer> {
    if (this.#closed) return Promise.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', 'the signing workers are closed'));
    const plan = signPlan(key, request);
    const now = performance.now();
    const handle = this.#sessionKeys.handleFor(key, now);
    if (this.#inlineBudgetLeft(now)) return this.#signInline(handle, plan, now);
    const id = ++this.#nextId;
    const lane = this.#leastLoaded();
    lane.load++;
    lane.batch.push({ id, key: handle, mechanism: plan.mechanism, input: plan.input, outputBytes: plan.outputBytes, deadline });
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      // Everything asked for in this tick goes out as one message per worker.
      process.nextTick(() => this.#flush());
    }
    return new Promise((resolve, reject) => this.#pending.set(id, { lane, resolve, reject }));
  }

  #inlineBudgetLeft(now: number): boolean {
    this.#inlineBudgetMs = Math.min(INLINE_BURST_MS, this.#inlineBudgetMs + (now - this.#inlineCheckedAt) * INLINE_SHARE);
    this.#inlineCheckedAt = now;
    return this.#inlineBudgetMs > 0;
  }

  #signInline(handle: pkcs11js.Handle, plan: SignPlan, started: number): Buffer {
    const pkcs11 = this.#token.pkcs11;
    try {
      pkcs11.C_SignInit(this.#inlineSession, plan.mechanism, handle);
      return pkcs11.C_Sign(this.#inlineSession, plan.input, Buffer.allocUnsafe(plan.outputBytes));
    } catch (err) {
      throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', (err as Error).message.split('\n')[0] ?? 'C_Sign failed');
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
    await this.drained();
    await Promise.all(this.#lanes.map((lane) => lane.worker.terminate()));
    for (const lane of this.#lanes) this.#token.closeSession(lane.session);
    this.#sessionKeys.clear();
    this.#token.closeSession(this.#inlineSession);
  }

  #leastLoaded(): Lane {
    let best = this.#lanes[0]!;
    for (const lane of this.#lanes) if (lane.load < best.load) best = lane;
    return best;
  }

  #flush(): void {
    this.#flushScheduled = false;
    for (const lane of this.#lanes) {
      if (lane.batch.length === 0) continue;
      lane.worker.postMessage(lane.batch);
      lane.batch = [];
    }
  }

  #settle(lane: Lane, results: JobResult[]): void {
    lane.load -= results.length;
    for (const result of results) {
      const pending = this.#pending.get(result.id);
      if (pending === undefined) continue;
      this.#pending.delete(result.id);
      if ('signature' in result) pending.resolve(Buffer.from(result.signature.buffer, result.signature.byteOffset, result.signature.byteLength));
      else pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', result.error));
    }
    if (this.#pending.size === 0) for (const resolve of this.#drainWaiters.splice(0)) resolve();
  }

  /** A worker that died takes its jobs with it: they fail, the other workers carry on. */
  #failLane(lane: Lane, err: Error): void {
    this.#lanes.splice(this.#lanes.indexOf(lane), 1);
    for (const [id, pending] of this.#pending) {
      if (pending.lane !== lane) continue;
      pending.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', `signing worker failed: ${err.message}`));
      this.#pending.delete(id);
    }
    if (this.#lanes.length === 0) this.#closed = true;
    if (this.#pending.size === 0) for (const resolve of this.#drainWaiters.splice(0)) resolve();
  }
}
