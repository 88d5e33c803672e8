/**
 * A watchdog over the calls into the token made on the event loop: signs made
 * inline (sign-workers.ts signs there while the loop has time to spare, the
 * usual case at handshake rates), key scans (on a request for an unknown key,
 * on SIGHUP), the token's opening at start, its checks and reopens, the
 * sessions closed by a stop. A
 * token that stops answering inside one of them is made visible, and the
 * process it holds is ended after a bound so that its supervisor starts it
 * again.
 *
 * Why a thread: a PKCS#11 call that never returns on the event loop holds the
 * loop itself. Nothing on it runs again: no log line, no /healthz or /metrics,
 * no answer to any client, and no SIGTERM handler (Node runs signal handlers
 * on the loop; a worker thread receives none). The signing threads' watch
 * (stuck-signs.ts) runs on that loop too. So every call of the main thread's
 * module (`markCalls`, on each Token's PKCS11) marks itself, entering and
 * leaving, in a SharedArrayBuffer (two atomic adds: a sequence number, odd
 * while inside the token, and which function; no clock, no message), and a
 * thread of its own looks at the mark every CHECK_MS at most, asleep in
 * Atomics.wait in between. The same odd number seen for longer than
 * `stuckAfterMs` (the signing threads' bound: twice the request deadline, at
 * least a second) is a token not answering: the thread writes a warning
 * itself, straight to stdout as a JSON line in the logger's format (the loop
 * that writes the others is the one held), with the function's name and times
 * only, never its arguments (what is signed, with which key, a PIN); again
 * every STUCK_LOG_MS while it lasts, and an info line if the call comes back.
 *
 * What then: once the key server serves (`arm()`), the process is ended, by
 * SIGKILL, when the call has been held `endAfterMs` (limits.tokenStallExitMs,
 * a minute by default; 0: never), after an error line saying why. Not before it
 * serves: a start the token holds only warns (a supervisor's start timeout
 * bounds it, as systemd's TimeoutStartSec does), because a large token's
 * C_Initialize legitimately takes seconds (SoftHSM2: 2.4 s for 3,000 keys on a
 * loaded 2-core machine, growing with the keys) and a kill there would only
 * start the same slow open again, for ever. The bound is far past what a
 * working token's call takes for the same reason: a scan of many keys holds
 * the loop for seconds. Waiting serves no one: while the loop is held the process
 * answers nothing, a supervisor's SIGTERM included, so it is already as good
 * as stopped, and unlike a hung thread it cannot even report its state; a
 * restart opens the token again (new sessions, for a network HSM a new link:
 * the usual cure), and if the token is still gone the new process says so
 * (/healthz 503, `the token cannot be opened`). The grace is the one a stop
 * gives signs hung in threads, counted from the moment the hang is seen.
 * SIGKILL because nothing else ends a process whose main thread is inside
 * native code: process.exit() from a worker ends only the worker, and on the
 * main thread it would join the threads; SIGTERM is caught (and held) by the
 * loop's handler; SIGABRT or SIGQUIT would dump core, and the core of a process
 * running an in-process token (SoftHSM2) holds its keys and the PIN. A
 * supervisor restarts a process killed by a signal (systemd Restart=on-failure,
 * Kubernetes). The lines the logger held when the call began (its batch,
 * written by a timer on the held loop) are written first, by the thread, once
 * the call is seen held (held-lines.ts: copied to shared memory as each call
 * begins), so the kill loses none of the lines that led up to it; the
 * thread's own lines are written synchronously, whole.
 *
 * Contract: `markCalls(pkcs11)` makes every C_ function of that module
 * instance mark its calls (main thread only; the mark is the process's); a
 * `LoopWatch` watches the mark until `stop()`, and may end the process only
 * after `arm()`. One per process (daemon.ts): it
 * outlives a token opened again.
 */
import { Worker } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';
import { BYTES, OFFERED, STATE, TAKEN, WRITTEN } from '../shared/held-lines.js';
import { type HeldLinesHooks, heldLinesOf, type Logger } from '../shared/log.js';

/** The thread looks at the mark this far apart at most, and at an eighth of the bound (it sees a hang soon past it). */
const CHECK_MS = 1_000;
/** A call that stays held is logged again once per this long. */
const STUCK_LOG_MS = 30_000;
/** Slots of the mark: the sequence number (odd while the loop is inside the token), and the function's index in CALLS. */
const SEQ = 0;
const CALL = 1;

/** The module's functions, by index: every C_ function pkcs11js offers. */
const CALLS: readonly string[] = (() => {
  const names = new Set<string>();
  for (let proto = pkcs11js.PKCS11.prototype; proto !== null && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const name of Object.getOwnPropertyNames(proto)) if (name.startsWith('C_')) names.add(name);
  }
  return [...names].sort();
})();

/** The process's mark, written by the main thread only. */
const mark = new Int32Array(new SharedArrayBuffer(8));
/** Calls in progress: a function of pkcs11js that calls another marks once. */
let depth = 0;
/** The logger's held lines, offered to the watch for each call (held-lines.ts); set while a watch runs. */
let heldLines: HeldLinesHooks | undefined;

/** Makes every C_ function of this module instance mark its calls for the watch; returns it. */
export function markCalls(pkcs11: pkcs11js.PKCS11): pkcs11js.PKCS11 {
  const instance = pkcs11 as unknown as Record<string, (...args: unknown[]) => unknown>;
  CALLS.forEach((name, index) => {
    const call = instance[name];
    if (typeof call !== 'function') return;
    instance[name] = (...args: unknown[]): unknown => {
      if (depth++ === 0) {
        heldLines?.offer();
        Atomics.store(mark, CALL, index);
        Atomics.add(mark, SEQ, 1);
      }
      try {
        return call.apply(pkcs11, args);
      } finally {
        if (--depth === 0) {
          Atomics.add(mark, SEQ, 1);
          heldLines?.reclaim();
        }
      }
    };
  });
  return pkcs11;
}

/** The thread's whole program: CommonJS, so it runs the same from sources (tests) and from dist/. */
const WATCH_SOURCE = `
const { workerData } = require('node:worker_threads');
const { writeSync } = require('node:fs');
const { mark, stop, armed, calls, checkMs, stuckAfterMs, endAfterMs, stuckLogMs, name, minLevel, heldHeader, heldData } = workerData;
const nap = new Int32Array(new SharedArrayBuffer(4));
function writeAll(bytes) {
  // stdout may be a non-blocking pipe: a few tries, never a hang of its own; a short write goes on where it stopped.
  let done = 0;
  for (let tries = 0; done < bytes.length && tries < 50; ) {
    try {
      done += writeSync(1, bytes, done, bytes.length - done);
    } catch (err) {
      if (err.code !== 'EAGAIN') return;
      tries++;
      Atomics.wait(nap, 0, 0, 20);
    }
  }
}
// The lines the logger held when the call began (held-lines.ts), written once, before any line of ours.
function takeHeld() {
  if (heldHeader === undefined || Atomics.compareExchange(heldHeader, ${STATE}, ${OFFERED}, ${TAKEN}) !== ${OFFERED}) return;
  writeAll(heldData.subarray(0, Atomics.load(heldHeader, ${BYTES})));
  Atomics.store(heldHeader, ${STATE}, ${WRITTEN});
}
function line(level, fields, msg) {
  if (level < minLevel) return;
  writeAll(Buffer.from(JSON.stringify({ level, time: new Date().toISOString(), pid: process.pid, name, ...fields, msg }) + '\\n'));
}
let seen = 0;
let since = 0;
let loggedAt = -Infinity;
while (Atomics.load(stop, 0) === 0) {
  Atomics.wait(stop, 0, 0, checkMs);
  const seq = Atomics.load(mark, ${SEQ});
  const now = performance.now();
  if (seq % 2 === 0 || seq !== seen) {
    if (loggedAt > -Infinity) line(30, { heldMs: Math.round(now - since) }, 'the call into the token on the event loop came back');
    loggedAt = -Infinity;
    seen = seq;
    since = now;
    continue;
  }
  // Inside the same call since at least \`since\` (the first look that saw it).
  const heldMs = Math.round(now - since);
  const fields = { call: calls[Atomics.load(mark, ${CALL})] ?? 'unknown', heldMs, stuckAfterMs, endAfterMs };
  if (endAfterMs > 0 && heldMs >= endAfterMs && Atomics.load(armed, 0) === 1) {
    takeHeld();
    line(50, fields, 'a call into the token on the event loop has not come back past its bound: the key server answers nothing meanwhile (its SIGTERM handler included); ending the process (SIGKILL) for its supervisor to start it again');
    process.kill(process.pid, 'SIGKILL');
  } else if (heldMs >= stuckAfterMs && now - loggedAt >= stuckLogMs) {
    loggedAt = now;
    takeHeld();
    line(40, fields, 'a call into the token on the event loop is not coming back: the token is not answering, and the key server answers nothing (no /healthz, /metrics or signal handling) until it does; the process ends at endAfterMs');
  }
}
`;

export class LoopWatch {
  readonly #stop = new Int32Array(new SharedArrayBuffer(4));
  readonly #armed = new Int32Array(new SharedArrayBuffer(4));
  readonly #worker: Worker;
  readonly #heldLines: HeldLinesHooks | undefined;

  /** `stuckAfterMs`: a call held this long is logged; `endAfterMs` (0: never): this long, once armed, the process is ended. */
  constructor(log: Logger, stuckAfterMs: number, endAfterMs: number) {
    const held = heldLinesOf(log);
    this.#heldLines = held;
    heldLines = held;
    const workerData = {
      heldHeader: held?.shared.header,
      heldData: held?.shared.data,
      mark,
      stop: this.#stop,
      armed: this.#armed,
      calls: CALLS,
      checkMs: Math.min(CHECK_MS, Math.ceil(stuckAfterMs / 8)),
      stuckAfterMs,
      endAfterMs,
      stuckLogMs: STUCK_LOG_MS,
      name: (log.bindings() as { name?: string }).name ?? 'keyserver',
      // The lowest level written (pino's number; Infinity when silent).
      minLevel: log.levelVal,
    };
    this.#worker = new Worker(WATCH_SOURCE, { eval: true, workerData });
    // It must never keep the process alive, nor end it on an error of its own.
    this.#worker.on('error', (err) => log.error({ err }, 'the watch over calls into the token on the event loop failed; such a call that hangs goes unseen'));
    this.#worker.unref();
  }

  /** From now on (the key server serves) a call held `endAfterMs` ends the process. */
  arm(): void {
    Atomics.store(this.#armed, 0, 1);
  }

  async stop(): Promise<void> {
    if (heldLines === this.#heldLines) heldLines = undefined;
    Atomics.store(this.#stop, 0, 1);
    Atomics.notify(this.#stop, 0);
    await this.#worker.terminate();
  }
}
