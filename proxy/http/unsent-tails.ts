/**
 * Answers ended with bytes their client has not taken yet, which get their
 * send clock (send-stall.ts) only if those bytes are still unsent a whole
 * period later. An ended answer gets no 'drain', and one whose client reads
 * nothing never finishes: without a clock it held its connection, and the
 * requests pipelined behind it their origin places, for ever (forward.ts
 * onComplete). But over TLS nearly every answer ends so: the socket's write
 * completes a turn after `end()`, so `writableLength` is still above 0 then,
 * and a clock (an object and a timer made and cleared) per answer is a cost
 * on every request. Here an answer is put in a set, and taken out at its
 * 'close' (a few ms later, usually); once a second, those put in the period
 * before and still there get their clock, started then. So a stuck tail is
 * cut between 1 and 2 s later than `limits.sendTimeoutMs` after its end.
 *
 * Worker-local, synchronous; the timer runs only while a set holds an answer.
 */

/** An answer whose tail may be unsent (forward.ts's exchange). */
export interface UnsentTail {
  /** Its bytes are still unsent a period after its end: its send clock starts. */
  tailStuck(): void;
}

const PERIOD_MS = 1000;

/** Put in during this period. */
let fresh = new Set<UnsentTail>();
/** Put in during the period before: still here at the next sweep, they are stuck. */
let older = new Set<UnsentTail>();
let timer: NodeJS.Timeout | undefined;

/** `answer` ended with bytes unsent. */
export function tailUnsent(answer: UnsentTail): void {
  fresh.add(answer);
  timer ??= setInterval(sweep, PERIOD_MS).unref();
}

/** `answer` closed (went out whole, or was cut); it was put in with tailUnsent. */
export function tailGone(answer: object): void {
  fresh.delete(answer as UnsentTail);
  older.delete(answer as UnsentTail);
}

function sweep(): void {
  const stuck = older;
  older = fresh;
  fresh = new Set();
  for (const answer of stuck) answer.tailStuck();
  if (older.size === 0 && timer !== undefined) {
    clearInterval(timer);
    timer = undefined;
  }
}
