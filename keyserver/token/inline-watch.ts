/**
 * A watchdog over the signs made on the event loop itself (sign-workers.ts
 * signs inline while the loop has time to spare: the usual case at handshake
 * rates): a token that stops answering inside one of them is made visible, and
 * the process it holds is ended after a bound so that its supervisor starts it
 * again.
 *
 * Why a thread: a C_Sign that never returns on the event loop holds the loop
 * itself. Nothing on it runs again: no log line, no /healthz or /metrics, no
 * answer to any client, and no SIGTERM handler (Node runs signal handlers on
 * the loop; a worker thread receives none). The signing threads' watch
 * (stuck-signs.ts) runs on that loop too. So the loop only marks each inline
 * call into the token, entering and leaving, in a SharedArrayBuffer (two
 * atomic adds per sign: a sequence number, odd while inside the token; no
 * clock, no message), and a thread of its own looks at the mark every CHECK_MS
 * at most, asleep in Atomics.wait in between. The same odd number seen for
 * longer than `stuckAfterMs` (the signing threads' bound: twice the request
 * deadline, at least a second) is a sign the token is not answering: the
 * thread writes a warning itself, straight to stdout as a JSON line in the
 * logger's format (the loop that writes the others is the one held), with
 * counts and times only, never what is signed, with which key, or a PIN; again
 * every STUCK_LOG_MS while it lasts, and an info line if the sign comes back.
 *
 * What then: the process is ended, by SIGKILL, once the sign has been held
 * `endAfterMs` (`stuckAfterMs` + limits.shutdownGraceMs), after an error line
 * saying why. Waiting serves no one: while the loop is held the process
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
 * Kubernetes). Lines the logger held but had not written (at most its
 * LOG_FLUSH_MS) are lost with it.
 *
 * Contract: `enter()` and `leave()` bracket every call into the token made on
 * the event loop; `stop()` ends the thread. One per process (daemon.ts): it
 * outlives a token opened again.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from '../shared/log.js';

/** The thread looks at the mark this far apart at most, and at an eighth of the bound (it sees a hang soon past it). */
const CHECK_MS = 1_000;
/** A sign that stays held is logged again once per this long. */
const STUCK_LOG_MS = 30_000;
/** Slots of the shared state: the sequence number (odd while the loop is inside the token), and the stop flag. */
const SEQ = 0;
const STOP = 1;

/** The thread's whole program: CommonJS, so it runs the same from sources (tests) and from dist/. */
const WATCH_SOURCE = `
const { workerData } = require('node:worker_threads');
const { writeSync } = require('node:fs');
const { state, checkMs, stuckAfterMs, endAfterMs, stuckLogMs, name, minLevel } = workerData;
const nap = new Int32Array(new SharedArrayBuffer(4));
function line(level, fields, msg) {
  if (level < minLevel) return;
  const text = JSON.stringify({ level, time: new Date().toISOString(), pid: process.pid, name, ...fields, msg }) + '\\n';
  // stdout may be a non-blocking pipe: a few tries, never a hang of its own.
  for (let tries = 0; tries < 50; tries++) {
    try {
      writeSync(1, text);
      return;
    } catch (err) {
      if (err.code !== 'EAGAIN') return;
      Atomics.wait(nap, 0, 0, 20);
    }
  }
}
let seen = 0;
let since = 0;
let loggedAt = -Infinity;
while (Atomics.load(state, ${STOP}) === 0) {
  Atomics.wait(state, ${STOP}, 0, checkMs);
  const seq = Atomics.load(state, ${SEQ});
  const now = performance.now();
  if (seq % 2 === 0 || seq !== seen) {
    if (loggedAt > -Infinity) line(30, { heldMs: Math.round(now - since) }, 'the sign on the event loop came back from the token');
    loggedAt = -Infinity;
    seen = seq;
    since = now;
    continue;
  }
  // Inside the same call since at least \`since\` (the first look that saw it).
  const heldMs = Math.round(now - since);
  const fields = { signs: 1, heldMs, stuckAfterMs, endAfterMs };
  if (heldMs >= endAfterMs) {
    line(50, fields, 'a sign on the event loop has not come back from the token past its bound: the key server answers nothing meanwhile (its SIGTERM handler included); ending the process (SIGKILL) for its supervisor to start it again');
    process.kill(process.pid, 'SIGKILL');
  } else if (heldMs >= stuckAfterMs && now - loggedAt >= stuckLogMs) {
    loggedAt = now;
    line(40, fields, 'a sign on the event loop is not coming back from the token: the token is not answering, and the key server answers nothing (no /healthz, /metrics or signal handling) until it does; the process ends at endAfterMs');
  }
}
`;

export class InlineWatch {
  readonly #state = new Int32Array(new SharedArrayBuffer(8));
  readonly #worker: Worker;

  /** `stuckAfterMs`: a sign held this long is logged; `endAfterMs`: this long, the process is ended. */
  constructor(log: Logger, stuckAfterMs: number, endAfterMs: number) {
    const workerData = {
      state: this.#state,
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
    this.#worker.on('error', (err) => log.error({ err }, 'the watch over signs on the event loop failed; such a sign that hangs goes unseen'));
    this.#worker.unref();
  }

  /** The event loop calls into the token. */
  enter(): void {
    Atomics.add(this.#state, SEQ, 1);
  }

  /** The call came back (or threw). */
  leave(): void {
    Atomics.add(this.#state, SEQ, 1);
  }

  async stop(): Promise<void> {
    Atomics.store(this.#state, STOP, 1);
    Atomics.notify(this.#state, STOP);
    await this.#worker.terminate();
  }
}
