/**
 * One signing thread of sign-workers.ts, kept alive: it loads pkcs11js, says
 * so (THREAD_UP), then signs the batches of jobs it is sent on its own token
 * session, one job at a time, skipping those whose deadline passed.
 *
 * PKCS#11 handles belong to the process (v2.40 §5.2): the session, opened by
 * the main thread's Token, is used as it is. The thread loads the same module,
 * whose C_Initialize answers CKR_CRYPTOKI_ALREADY_INITIALIZED (expected), and
 * never calls C_Finalize.
 *
 * A thread that fails (an error or an exit of its own, such as EMFILE while
 * it loads pkcs11js) is logged with its error's message and code (nothing of
 * its data: session handle, module path), reported to the owner (whose jobs
 * on it are unanswered), and started again on a fresh session (it may have
 * died between C_SignInit and C_Sign) after RESTART_MIN_MS, doubling on each
 * failure in a row up to RESTART_MAX_MS.
 *
 * Jobs wait on the main thread, in the owner's queue (sign-queue.ts), and
 * come in batches of at most BATCH_MAX, at most WINDOW batches unanswered:
 * enough that the thread never waits for the loop to send more, while the rest
 * stay where they can still be dropped (a job whose connection closed or whose
 * deadline passed costs the token nothing, and takes no place in a batch) and
 * where the owner decides whose turn it is. A batch posted cannot be taken
 * back, nor overtaken: a sign queued now waits behind up to WINDOW batches on
 * the thread that takes it, so they are kept small.
 *
 * A sign operation a failed C_Sign left active is ended when the session's next C_SignInit meets it, as sign.ts's
 * `signInit` does inline: a C_Sign answered CKR_BUFFER_TOO_SMALL leaves it active (PKCS#11 v2.40 §5.2), and the
 * session answered every later C_SignInit CKR_OPERATION_ACTIVE.
 *
 * An RSA signature is checked against the key's public key on the thread, right after C_Sign (sign-verify.ts), so
 * the event loop spends nothing on it: one that does not verify comes back as `refused` with the reason, never its
 * bytes.
 *
 * Contract: `started` resolves once the first start is over, up or failed;
 * `up` says whether jobs may be sent; `inToken()` how many signs were sent
 * and not answered, how long the thread has been on its current batch, and
 * which PKCS#11 function it is in (a shared slot it writes around each call:
 * a call that does not come back is named in the log, never its arguments),
 * a thread still starting counting as in C_Initialize: its start, too, may
 * be held by a token that does not answer, and `stop()` cannot end a thread
 * inside native code (worker.terminate() waits for it to come back to JS);
 * `load` (jobs sent, not yet answered) is the owner's bookkeeping of jobs on this thread; `takesBatch` says
 * whether it is up with room in its window, `post()` sends it a batch, and the owner's `ready()` hears when it
 * may take more (it came up, or answered a batch); `stop()` ends it for good.
 */
import { Worker } from 'node:worker_threads';
import type pkcs11js from 'pkcs11js';
import type { Logger } from '../shared/log.js';
import { END_SIGN_BYTES, OPERATION_ACTIVE } from './sign.js';
import { CHECK_SOURCE, type RefusalReason, type VerifySpec } from './sign-verify.js';
import type { Token } from './token.js';

/** A failed thread is started again after this long, doubling on each failure in a row... */
const RESTART_MIN_MS = 100;
/** ...up to this; a thread that served this long before failing starts over from RESTART_MIN_MS. */
const RESTART_MAX_MS = 10_000;
/**
 * Jobs per message to a thread: 8 RSA-2048 signs are about 5 ms of its time, two messages (there and back) per 8
 * signs. Not more: a sign queued behind another connection's backlog still waits for the batches already posted
 * (up to WINDOW of them on its thread), whoever they came from; 32 a batch made that 40 ms.
 */
export const BATCH_MAX = 8;
/** ...and it holds at most this many unanswered, so one is always waiting when it finishes another. */
const WINDOW = 2;
/** What a thread posts once pkcs11js is loaded and it takes jobs. */
const THREAD_UP = 'up';

export interface Job {
  readonly id: number;
  readonly key: Buffer;
  readonly mechanism: pkcs11js.Mechanism;
  readonly input: Buffer;
  readonly outputBytes: number;
  /** RSA: what the signature is checked against before it is answered (sign-verify.ts). */
  readonly verify: VerifySpec | undefined;
  readonly deadline: number;
}

/** The call a thread is making, in its `calling` slot (0: none), named for the log when it does not come back. */
const SIGN_INIT = 1;
const SIGN = 2;
const CALL_NAMES = ['', 'C_SignInit', 'C_Sign'] as const;
/** What a thread not up yet is in: loading the module and C_Initialize, which a token that does not answer may hold. */
const STARTING = 'C_Initialize';

/** A job's error when the worker skipped it, its deadline already past. */
export const DEADLINE_SKIPPED = 'deadline';

export type JobResult =
  | { readonly id: number; readonly signature: Uint8Array }
  | { readonly id: number; readonly error: string }
  /** The token signed, and the signature did not verify: the bytes stay on the thread. */
  | { readonly id: number; readonly refused: RefusalReason };

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
parentPort.postMessage('${THREAD_UP}');
const session = Buffer.from(workerData.session);
const calling = new Int32Array(workerData.calling);
const checkSignature = (${CHECK_SOURCE})(require('node:crypto'));
parentPort.on('message', (jobs) => {
  const results = [];
  for (const job of jobs) {
    if (Date.now() > job.deadline) {
      results.push({ id: job.id, error: '${DEADLINE_SKIPPED}' });
      continue;
    }
    try {
      Atomics.store(calling, 0, ${SIGN_INIT});
      const key = Buffer.from(job.key);
      try {
        pkcs11.C_SignInit(session, job.mechanism, key);
      } catch (err) {
        // An operation a failed C_Sign left active (sign.ts signInit): ended by a C_Sign, then once more.
        if (!${OPERATION_ACTIVE}.test(err.message)) throw err;
        Atomics.store(calling, 0, ${SIGN});
        try {
          pkcs11.C_Sign(session, Buffer.from(job.input), Buffer.allocUnsafe(${END_SIGN_BYTES}));
        } catch {}
        Atomics.store(calling, 0, ${SIGN_INIT});
        pkcs11.C_SignInit(session, job.mechanism, key);
      }
      Atomics.store(calling, 0, ${SIGN});
      const input = Buffer.from(job.input);
      const signature = pkcs11.C_Sign(session, input, Buffer.allocUnsafe(job.outputBytes));
      Atomics.store(calling, 0, 0);
      const refused = job.verify === undefined ? undefined : checkSignature(job.verify, input, signature);
      results.push(refused === undefined ? { id: job.id, signature } : { id: job.id, refused });
    } catch (err) {
      results.push({ id: job.id, error: String(err.message).split('\\n')[0] });
    } finally {
      Atomics.store(calling, 0, 0);
    }
  }
  parentPort.postMessage(results);
});
`;

/** A thread's signs sent and not answered, how long it has been on its current batch, and the call it is in (the function's name only). */
export interface InTokenNow {
  readonly signs: number;
  readonly busyMs: number;
  readonly call?: string;
  /** In its start, not on a batch: `busyMs` is how long it has been starting (held to a start's bound, stuck-signs.ts). */
  readonly starting?: true;
}

export interface ThreadOwner {
  readonly token: Token;
  readonly log: Logger;
  /** pkcs11js's entry and the PKCS#11 module's path, for the thread to load. */
  readonly workerData: { readonly pkcs11js: string; readonly modulePath: string };
  results(thread: SignThread, results: JobResult[]): void;
  /** The thread died: the jobs it held are unanswered. */
  failed(thread: SignThread): void;
  /** The thread may take a batch: it came up, or answered one. */
  ready(thread: SignThread): void;
}

export class SignThread {
  readonly index: number;
  /** Resolves once the first start is over, up or failed. */
  readonly started: Promise<void>;
  /** Loaded and taking jobs. */
  up = false;
  /** Jobs sent and not yet answered. */
  load = 0;
  /** Jobs in each batch sent and not yet answered, oldest first (at most WINDOW). */
  #sent: number[] = [];
  /** When the thread took up the oldest unanswered batch: it was sent, or the one before it answered. */
  #busySince = 0;
  readonly #owner: ThreadOwner;
  /** Undefined while a failed thread waits for its restart, and once stopped. */
  #worker: Worker | undefined;
  #session: pkcs11js.Handle;
  #upSince = 0;
  /** Failures in a row, for the restart's backoff. */
  #failures = 0;
  /** What the thread threw, reported when it exits. */
  #error: Error | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  #startedResolve: (() => void) | undefined;
  #stopped = false;
  /** Since when the thread has been starting (loading the module, C_Initialize); undefined once up or failed. */
  #startingSince: number | undefined;
  /** Which PKCS#11 function the thread is in (SIGN_INIT, SIGN; 0: none), written by the thread. */
  readonly #calling = new Int32Array(new SharedArrayBuffer(4));

  /** `session`: opened by the owner for this thread (closed by `stop()`); a restart opens a fresh one. */
  constructor(index: number, owner: ThreadOwner, session: pkcs11js.Handle) {
    this.index = index;
    this.#owner = owner;
    this.#session = session;
    this.started = new Promise((resolve) => (this.#startedResolve = resolve));
    this.#start();
  }

  /** Up, with fewer than WINDOW batches unanswered: `post()` may send one. */
  get takesBatch(): boolean {
    return this.#worker !== undefined && this.up && this.#sent.length < WINDOW;
  }

  /** Batches sent and not yet answered. */
  get batchesOut(): number {
    return this.#sent.length;
  }

  /** Sends a batch of at most BATCH_MAX jobs; only while `takesBatch`. */
  post(batch: Job[]): void {
    this.#worker!.postMessage(batch);
    if (this.#sent.length === 0) this.#busySince = performance.now();
    this.#sent.push(batch.length);
  }

  /**
   * Signs sent to the thread and not answered, and how long it has been on its current batch (0 when idle).
   * Jobs past their deadline are skipped (never started), so a healthy batch ends within the request
   * deadline plus one sign: far longer means a call is not coming back from the token.
   */
  inToken(now: number): InTokenNow {
    // Inside the module as much as a sign is (it must not be finalized under it), and no worker.terminate() ends it there.
    if (this.#startingSince !== undefined) return { signs: 0, busyMs: now - this.#startingSince, call: STARTING, starting: true };
    if (this.#sent.length === 0) return { signs: 0, busyMs: 0 };
    const call = CALL_NAMES[Atomics.load(this.#calling, 0)] || undefined;
    return { signs: this.#sent.reduce((sum, jobs) => sum + jobs, 0), busyMs: now - this.#busySince, call };
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.up = false;
    clearTimeout(this.#restartTimer);
    // Detached first, so its exit reads as stopped, not failed.
    const worker = this.#worker;
    this.#worker = undefined;
    await worker?.terminate();
    this.#owner.token.closeSession(this.#session);
  }

  #start(): void {
    let worker: Worker;
    try {
      Atomics.store(this.#calling, 0, 0);
      worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ...this.#owner.workerData, session: this.#session, calling: this.#calling.buffer } });
    } catch (err) {
      this.#failed(err as Error);
      return;
    }
    this.#worker = worker;
    this.#startingSince = performance.now();
    worker.on('message', (message: JobResult[] | typeof THREAD_UP) => {
      if (message === THREAD_UP) return this.#up();
      this.#sent.shift();
      this.#busySince = performance.now();
      this.#owner.results(this, message);
      this.#owner.ready(this);
    });
    worker.on('error', (err) => (this.#error = err));
    worker.on('exit', (code) => {
      if (this.#worker !== worker) return;
      this.#worker = undefined;
      this.#failed(this.#error ?? new Error(`the thread exited with code ${code}`));
    });
    worker.unref();
  }

  #up(): void {
    this.#startingSince = undefined;
    this.up = true;
    this.#upSince = performance.now();
    if (this.#failures > 0) this.#owner.log.info({ thread: this.index, failures: this.#failures }, 'signing thread restarted');
    this.#startedResolve?.();
    this.#owner.ready(this);
  }

  #failed(err: Error): void {
    this.#startingSince = undefined;
    const served = this.up ? performance.now() - this.#upSince : 0;
    this.up = false;
    this.#error = undefined;
    this.#failures = served >= RESTART_MAX_MS ? 1 : this.#failures + 1;
    const delay = Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** (this.#failures - 1));
    this.#owner.log.error(
      { thread: this.index, error: err.message, code: (err as NodeJS.ErrnoException).code, jobs: this.load, restartInMs: delay },
      'signing thread failed; restarting it, meanwhile signs go to the other threads or the event loop',
    );
    this.#startedResolve?.();
    if (!this.#stopped) this.#restartTimer = setTimeout(() => this.#restart(), delay).unref();
    this.#sent = [];
    this.#owner.failed(this);
    this.load = 0;
  }

  #restart(): void {
    this.#restartTimer = undefined;
    if (this.#stopped) return;
    try {
      // A fresh session: the dead thread may have died between C_SignInit and C_Sign.
      this.#owner.token.closeSession(this.#session);
      this.#session = this.#owner.token.openSession();
    } catch (err) {
      this.#failed(err as Error);
      return;
    }
    this.#start();
  }
}
