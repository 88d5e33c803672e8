/**
 * Signs that do not come back from the token: a watch over the signing
 * threads that makes a token that stopped answering (an HSM hung, a network
 * HSM's link silent) visible.
 *
 * Why: a C_Sign that never returns holds its thread for ever. Its client is
 * answered DEADLINE_EXCEEDED, but a token reopen and the shutdown wait for the
 * signs already in the token before C_Finalize (calling it while another
 * thread is inside the module is undefined, PKCS#11 v2.40 §5.4), so without
 * this the key server sat unready, or unstopped, with nothing in its log
 * (the stop waits at most its grace, a reopen at most limits.tokenStallExitMs
 * before it ends the process: daemon.ts, live-token.ts).
 *
 * A thread is stuck once it has been on one batch longer than `stuckAfterMs`
 * (jobs past their deadline are skipped, so a healthy batch ends within the
 * request deadline plus one sign), or in its start longer than START_STUCK_MS
 * (or `stuckAfterMs`, if longer). A start is loading the module and
 * C_Initialize, which a token that does not answer holds as well: a thread
 * held there has no sign out, yet it is inside the module all the same, and
 * before it counted only once a reopen or a stop waited for it. It has a bound
 * of its own because its length has nothing to do with the request deadline:
 * it is timed from the thread's creation, so it includes the thread's own
 * start-up and pkcs11js's load, which a loaded machine slows (measured: 80 ms
 * idle, up to 0.8 s with both cores busy), and a module may take its time in
 * C_Initialize. Held to a sign's bound (1 s at a deadline of 500 ms or less),
 * a slow restart was taken for a token not answering: warned about, and
 * while every thread was restarting, every sign refused, where the event
 * loop could sign them.
 * The first check that finds one logs a
 * warning naming how many threads and signs and for how long (never what is
 * signed, nor with which key; the PKCS#11 functions they are in, by name);
 * while it lasts, once a STUCK_LOG_MS more; once
 * it ends, an info line. `onStuck` gets the change in stuck threads, for a
 * gauge. `isStuck(thread)` says whether the last check found that thread
 * stuck and it still is: one that answered since is not, and takes signs
 * again at once (its owner hears of its answer, not of the next check).
 * `anyStuck` says whether the last check found any (the owner stops signing
 * on the event loop meanwhile: a token that holds one call is likely to hold
 * the next, and the loop must stay free to answer; sign-workers.ts).
 */
import type { Logger } from '../shared/log.js';

/** A thread in its start longer than this (or than `stuckAfterMs`, if longer) is stuck: several times a slow start. */
export const START_STUCK_MS = 5_000;
/** How often the threads are looked at: at most this late past `stuckAfterMs`... */
const CHECK_MS = 1_000;
/** ...and a token that stays stuck is logged again once per this long. */
const STUCK_LOG_MS = 30_000;
/** The warning's opening words, for an operator's alert to match. */
const STUCK = "calls into the token on the signing threads (signs, or a thread's start) are not coming back: the token is not answering;";

/** A signing thread as the watch sees it: `busyMs` is how long it has been inside the module (its batch, or its start: `starting`), 0 while idle. */
export interface InToken {
  inToken(now: number): { readonly signs: number; readonly busyMs: number; readonly call?: string; readonly starting?: true };
}

export interface StuckSigns {
  /** Threads on one batch, or in their start, longer than the bound. */
  readonly threads: number;
  /** Signs sent to those threads and not answered. */
  readonly signs: number;
  /** The longest a stuck thread has been on its batch, or in its start. */
  readonly longestMs: number;
  /** The PKCS#11 functions the stuck threads are in (C_Initialize, C_SignInit, C_Sign), by name only. */
  readonly calls: readonly string[];
}

export class StuckWatch {
  readonly #lanes: readonly InToken[];
  readonly #stuckAfterMs: number;
  readonly #startStuckAfterMs: number;
  readonly #log: Logger;
  readonly #onStuck: (delta: number) => void;
  readonly #timer: NodeJS.Timeout;
  #stuckThreads = 0;
  /** The threads the last check found stuck. */
  #stuckLanes = new Set<InToken>();
  #loggedAt = -Infinity;
  /** Set once the owner waits for the signs in the token before closing it (a reopen or the shutdown). */
  closing = false;

  constructor(lanes: readonly InToken[], stuckAfterMs: number, log: Logger, onStuck: (delta: number) => void) {
    this.#lanes = lanes;
    this.#stuckAfterMs = stuckAfterMs;
    this.#startStuckAfterMs = Math.max(START_STUCK_MS, stuckAfterMs);
    this.#log = log;
    this.#onStuck = onStuck;
    this.#timer = setInterval(() => this.#check(), Math.min(CHECK_MS, stuckAfterMs)).unref();
  }

  /** The threads stuck now, their signs and the longest wait. */
  stuck(now = performance.now()): StuckSigns {
    let threads = 0;
    let signs = 0;
    let longestMs = 0;
    const calls = new Set<string>();
    for (const lane of this.#lanes) {
      if (!this.#isStuckNow(lane, now)) continue;
      const held = lane.inToken(now);
      threads++;
      signs += held.signs;
      longestMs = Math.max(longestMs, held.busyMs);
      if (held.call !== undefined) calls.add(held.call);
    }
    return { threads, signs, longestMs: Math.round(longestMs), calls: [...calls] };
  }

  /** Whether the last check found this thread stuck and it still is (it has not answered since). */
  isStuck(lane: InToken): boolean {
    return this.#stuckLanes.has(lane) && this.#isStuckNow(lane, performance.now());
  }

  /** Whether the last check found any thread stuck. */
  get anyStuck(): boolean {
    return this.#stuckLanes.size > 0;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#onStuck(-this.#stuckThreads);
    this.#stuckThreads = 0;
    this.#stuckLanes = new Set();
  }

  #isStuckNow(lane: InToken, now: number): boolean {
    // Not `signs > 0`: a thread held in its start has none, and is inside the module as much as a sign is.
    const held = lane.inToken(now);
    return held.busyMs > (held.starting ? this.#startStuckAfterMs : this.#stuckAfterMs);
  }

  #check(): void {
    const now = performance.now();
    const stuck = this.stuck(now);
    this.#stuckLanes = new Set(this.#lanes.filter((lane) => this.#isStuckNow(lane, now)));
    const was = this.#stuckThreads;
    this.#onStuck(stuck.threads - was);
    this.#stuckThreads = stuck.threads;
    if (stuck.threads === 0) {
      if (was > 0) this.#log.info('the calls into the token came back: no signing thread is stuck any more');
      return;
    }
    if (was > 0 && now - this.#loggedAt < STUCK_LOG_MS) return;
    this.#loggedAt = now;
    const fields = { ...stuck, stuckAfterMs: this.#stuckAfterMs, startStuckAfterMs: this.#startStuckAfterMs };
    if (this.closing)
      this.#log.warn(
        fields,
        `${STUCK} closing it waits for them (C_Finalize while a call runs is undefined, PKCS#11 v2.40 §5.4; a reopen ends the process once one is held limits.tokenStallExitMs), and until then signs are refused`,
      );
    else this.#log.warn(fields, `${STUCK} their threads are held until it does`);
  }
}
