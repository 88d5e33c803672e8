/**
 * The open token and what is built on it (signing workers, key store), opened
 * again when the token behind it is no longer the one opened.
 *
 * Why: a token deleted and initialised again under the same label while the
 * key server ran (softhsm2-util --delete-token, then --init-token) left it
 * serving nothing until a restart. SoftHSM2 (2.6) keeps the old sessions valid
 * with an empty object list, fails C_GetTokenInfo of the old slot with
 * CKR_GENERAL_ERROR, and shows the new token (in another slot) and its keys
 * only once the module is initialised again: every sign was UNKNOWN_KEY, a
 * SIGHUP rescan included. Other modules report such a loss on the session
 * (CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_REMOVED...).
 *
 * Triggers: `suspect(cause)` (a key scan that finds keys gone or fails,
 * SIGHUP) checks that the token in the slot is still the one opened (same
 * label and serial, Token.isSame) and reopens it if not, once CONFIRM_CHECKS
 * more checks over a second agree (the token is served meanwhile: one failed
 * check may be another process's login); `suspect(cause, true)`
 * (a sign refused for a lost session or token, `tokenLost`) reopens at once.
 * At most one check or attempt per RETRY_MS, so no client can make the key
 * server churn its token.
 *
 * Reopening: the old signing workers finish what they were sent (a dead
 * token answers with errors at once; a hung one holds the reopen, logged by
 * the workers' watch, stuck-signs.ts, with /healthz 503) and stop, the module
 * is finalised, then the token is found again by its label or serial (its slot id may have
 * changed), logged in with the PIN read again (never one the token refused:
 * refused-pin.ts), and new sessions, threads and a key scan follow, all in
 * `open`, with a single attempt. Meanwhile, and while
 * the token cannot be opened, `parts` is undefined: requests that need the
 * token are refused SIGN_FAILED (retry, SPEC.md) on connections that stay
 * open, and each such request may start the next attempt, within RETRY_MS.
 * A failed attempt also schedules the next one itself, RETRY_MS later: a key
 * server whose /healthz answers 503 may get no requests at all (a load
 * balancer or readiness probe takes it out of service), and it must still
 * come back once the token does. Every reopen is logged and counted
 * (`onAttempt`: opened or failed); a failure to open is logged when its
 * reason changes, else once a FAILURE_LOG_MS.
 *
 * A sign hung in the token (a hung HSM, a network HSM's silent link) would
 * hold the reopen for ever, the key server refusing every sign meanwhile.
 * So the wait is bounded (it covers a thread held in its start, C_Initialize,
 * too: stopping it would wait as long): once a thread of the old workers has
 * been inside the module for `stall.afterMs` (limits.tokenStallExitMs, the bound a call held
 * on the event loop gets, loop-watch.ts; 0: no bound; a thread in its start is
 * held to the start's own bound, 5 s, where that is longer: stallLeftMs), an error line names
 * the PKCS#11 function the threads are in and how long (never an argument),
 * and `stall.end()` ends the process (SIGKILL, daemon.ts) for its supervisor
 * to start it again. Not the threads abandoned and the token reopened
 * under them: the module cannot be finalised while a thread is inside it
 * (C_Finalize with another call running is undefined, PKCS#11 v2.40 §5.4:
 * a module may free what the call uses, or wait on a lock it holds), and
 * without a C_Finalize SoftHSM2 never sees a token re-created; a thread
 * inside native code cannot be ended either (worker.terminate() waits for it
 * to come back to JS, and Node joins every thread on a normal exit). A new
 * process opens the module afresh: the usual cure, as for a call held on the
 * event loop.
 */
import type { Logger } from '../shared/log.js';
import type { InToken, SigningWorkers } from '../token/sign-workers.js';
import { START_STUCK_MS } from '../token/stuck-signs.js';
import type { Token } from '../token/token.js';
import type { KeyStore } from './keystore.js';

export interface TokenParts {
  readonly token: Token;
  readonly signers: SigningWorkers;
  readonly keys: KeyStore;
}

/** At most one check of the token, or attempt to open it, per this long. */
const RETRY_MS = 1_000;
/**
 * A failed check is confirmed by this many more, this far apart, before the token is opened again: a
 * check fails at times while another process logs in to the token (SoftHSM2 reads its token file as
 * that login rewrites it: measured, a third to a half of back-to-back checks during a stream of
 * logins, none once they stop), and a reopen costs every sign for its duration and the threads'
 * restart. A token really re-created fails every check: it is opened again a second later.
 */
const CONFIRM_CHECKS = 10;
const CONFIRM_PAUSE_MS = 100;
/** A token that stays unopenable is logged once per this long, not on every attempt. */
const FAILURE_LOG_MS = 60_000;

/** PKCS#11 refusals that concern the session or the token as a whole, not one key (v2.40 §5.1). */
const LOST =
  /^CKR_(SESSION_HANDLE_INVALID|SESSION_CLOSED|TOKEN_NOT_PRESENT|TOKEN_NOT_RECOGNIZED|DEVICE_REMOVED|CRYPTOKI_NOT_INITIALIZED|USER_NOT_LOGGED_IN|SLOT_ID_INVALID)\b/;

/** Whether a sign's refusal (its CKR_ name) says the token or its session is gone. */
export function tokenLost(reason: string): boolean {
  return LOST.test(reason);
}

/** How long the old threads' signs are waited for before a reopen, and what ends the process past that. */
export interface StallExit {
  /** limits.tokenStallExitMs: a thread on one batch this long is not coming back; 0: waited for without a bound. */
  readonly afterMs: number;
  /** Ends the process (the error line is written already). */
  end(): void;
}

/** The wait for signs in the token is looked at this often at most. */
const STALL_CHECK_MS = 1_000;

/** How an attempt to open the token again ended (a metric label: bounded). */
export type ReopenResult = 'opened' | 'failed';

export class LiveToken {
  #parts: TokenParts | undefined;
  readonly #open: () => TokenParts;
  readonly #log: Logger;
  readonly #onAttempt: (result: ReopenResult) => void;
  readonly #stall: StallExit;
  #retryTimer: NodeJS.Timeout | undefined;
  #checkedAt = 0;
  #failureLoggedAt = -Infinity;
  #failureLogged = '';
  #reopening: Promise<void> | undefined;
  /** A failed check being confirmed (#confirm) before the token is opened again. */
  #confirming = false;
  #closed = false;
  /** The parts being closed for a reopen: their signs in the token are waited for before C_Finalize. */
  #closing: TokenParts | undefined;

  /** `open`: opens the token again and builds its parts (throws if it cannot; it owns what it opened until it returns). */
  constructor(
    parts: TokenParts,
    open: () => TokenParts,
    log: Logger,
    onAttempt: (result: ReopenResult) => void = () => {},
    stall: StallExit = { afterMs: 0, end: () => {} },
  ) {
    this.#parts = parts;
    this.#open = open;
    this.#log = log;
    this.#onAttempt = onAttempt;
    this.#stall = stall;
  }

  /** The open token's parts; undefined while it is being opened again, or could not be. */
  get parts(): TokenParts | undefined {
    return this.#reopening === undefined ? this.#parts : undefined;
  }

  /** Something looks wrong with the token (`cause`, for the log); `lost`: the token said it is gone. */
  suspect(cause: string, lost = false): void {
    if (this.#closed || this.#reopening !== undefined || (this.#confirming && !lost)) return;
    const now = Date.now();
    if (now - this.#checkedAt < RETRY_MS && !(this.#confirming && lost)) {
      // Too soon; a token not open is still tried once the time is up, whoever asked (a timer may fire a little early).
      if (this.#parts === undefined) this.#retryIn(RETRY_MS - (now - this.#checkedAt));
      return;
    }
    this.#checkedAt = now;
    const parts = this.#parts;
    if (parts === undefined || lost) return this.#startReopen(cause, parts);
    if (parts.token.isSame()) return;
    // Served as it is while the check is confirmed: one failure may be another process's login (Token.isSame).
    this.#confirming = true;
    void this.#confirm(parts.token).then((same) => {
      this.#confirming = false;
      this.#checkedAt = Date.now();
      if (!same && !this.#closed && this.#reopening === undefined && this.#parts === parts) this.#startReopen(cause, parts);
    });
  }

  #startReopen(cause: string, parts: TokenParts | undefined): void {
    // Never a rejection left unhandled (it would end the key server): a step that throws is logged, and tried again later.
    const reopen = this.#reopen(cause, parts).catch((err: unknown) => {
      this.#log.error({ cause, reason: err instanceof Error ? err.message : String(err) }, 'opening the token again failed; trying again');
    });
    this.#reopening = reopen.finally(() => {
      this.#reopening = undefined;
      this.#checkedAt = Date.now();
      // Not left to the next request: there may be none while /healthz answers 503. Counted from here, where the
      // rate limit in `suspect` counts from (a timer set at the failure fired within it on a loaded machine, and was dropped).
      if (this.#parts === undefined) this.#retryIn(RETRY_MS);
    });
  }

  /** The next attempt at opening a token not open, `ms` from now (replacing one already scheduled). */
  #retryIn(ms: number): void {
    if (this.#closed) return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.suspect('the last attempt to open the token failed'), ms + 10).unref();
  }

  /** Whether any of CONFIRM_CHECKS more checks, CONFIRM_PAUSE_MS apart, finds the token the same; stops early once closed. */
  async #confirm(token: Token): Promise<boolean> {
    for (let check = 0; check < CONFIRM_CHECKS; check++) {
      await new Promise((resolve) => setTimeout(resolve, CONFIRM_PAUSE_MS).unref());
      if (this.#closed || token.closed || token.isSame()) return true;
    }
    return false;
  }

  /** Resolves once the signs sent to the token's threads are answered (those of parts being closed for a reopen too). */
  async drained(): Promise<void> {
    await Promise.all([this.#parts?.signers.drained(), this.#closing?.signers.drained()]);
  }

  /** What the signing threads hold inside the module (SigningWorkers.inToken), the parts being closed for a reopen included. */
  inToken(): InToken {
    const none = { signs: 0, threads: 0, longestMs: 0, longestSignMs: 0, longestStartMs: 0, calls: [] };
    const all = [this.#parts, this.#closing].map((parts) => parts?.signers.inToken() ?? none);
    return {
      signs: all.reduce((n, held) => n + held.signs, 0),
      threads: all.reduce((n, held) => n + held.threads, 0),
      longestMs: Math.max(...all.map((held) => held.longestMs)),
      longestSignMs: Math.max(...all.map((held) => held.longestSignMs)),
      longestStartMs: Math.max(...all.map((held) => held.longestStartMs)),
      calls: [...new Set(all.flatMap((held) => held.calls))],
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    await this.#reopening;
    const parts = this.#parts;
    this.#parts = undefined;
    if (parts !== undefined) await closeParts(parts);
  }

  async #reopen(cause: string, old: TokenParts | undefined): Promise<void> {
    this.#parts = undefined;
    if (old !== undefined) {
      // The signs already in the token are waited for (never C_Finalize under a running call): a hung one is logged by its watch.
      const { signs } = old.signers.inToken();
      this.#log.warn(
        { cause, token: old.token.label, signsInToken: signs },
        'the token is no longer the one opened (re-created, removed, or its sessions lost): opening it again once the signs in it are answered',
      );
      this.#closing = old;
      const stuck = await this.#signsBack(old);
      if (stuck !== undefined) {
        this.#log.error(
          { cause, calls: stuck.calls, threads: stuck.threads, signsInToken: stuck.signs, heldMs: stuck.longestMs, tokenStallExitMs: this.#stall.afterMs },
          "calls into the token on the signing threads (signs, or a thread's start) have not come back past limits.tokenStallExitMs and the token must be opened again: it cannot be while they are in it (C_Finalize under a running call is undefined, PKCS#11 v2.40 §5.4); ending the process (SIGKILL) for its supervisor to start it again",
        );
        // Left as it is (no C_Finalize under the hung call), and nothing more is tried while the process ends (its log is
        // flushed first): a new module instance opened meanwhile would be initialised under the hung call too.
        this.#closed = true;
        return this.#stall.end();
      }
      try {
        await closeParts(old);
      } finally {
        this.#closing = undefined;
      }
    }
    if (this.#closed) return;
    try {
      const parts = this.#open();
      this.#parts = parts;
      this.#failureLoggedAt = -Infinity;
      this.#failureLogged = '';
      // Opened on a request's attempt: the next one scheduled after a failure would only look at the token (C_GetTokenInfo) for nothing.
      clearTimeout(this.#retryTimer);
      this.#onAttempt('opened');
      this.#log.info({ token: parts.token.label, keys: parts.keys.size, sessions: parts.signers.size }, 'token opened again');
    } catch (err) {
      this.#onAttempt('failed');
      // A new reason is news (the token came back with another PIN, say); the same one, once a FAILURE_LOG_MS.
      const reason = err instanceof Error ? err.message : String(err);
      if (reason === this.#failureLogged && Date.now() - this.#failureLoggedAt < FAILURE_LOG_MS) return;
      this.#failureLoggedAt = Date.now();
      this.#failureLogged = reason;
      this.#log.error({ err }, 'the token cannot be opened: requests for keys are refused SIGN_FAILED; trying again every second');
    }
  }

  /**
   * Waits for the signs sent to the old threads; undefined once answered, or what holds them once a thread has
   * been on one batch for the stall bound (never, with no bound).
   */
  async #signsBack(old: TokenParts): Promise<InToken | undefined> {
    let answered = false;
    const drained = old.signers.drained().then(() => void (answered = true));
    const { afterMs } = this.#stall;
    for (;;) {
      const held = old.signers.inToken();
      // Every sign answered, and no thread left inside the module (one may be held in its start).
      if (answered && held.threads === 0) return undefined;
      const leftMs = afterMs > 0 ? stallLeftMs(held, afterMs) : STALL_CHECK_MS;
      if (leftMs <= 0) return held;
      let timer: NodeJS.Timeout | undefined;
      const waitMs = Math.min(STALL_CHECK_MS, leftMs);
      const later = new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs).unref()));
      await (answered ? later : Promise.race([drained, later]));
      clearTimeout(timer);
    }
  }
}

/**
 * How long until a thread of `held` is past its bound: `afterMs` for one on a batch of signs; for one in its start,
 * the start's own bound if longer (stuck-signs.ts: a start slowed by a loaded machine or a slow C_Initialize is not a
 * token that stopped answering, and ending the process for it would only start the same slow start again).
 */
function stallLeftMs(held: InToken, afterMs: number): number {
  return Math.min(afterMs - held.longestSignMs, Math.max(afterMs, START_STUCK_MS) - held.longestStartMs);
}

async function closeParts(parts: TokenParts): Promise<void> {
  try {
    await parts.signers.close();
  } finally {
    parts.token.close();
  }
}
