/**
 * The log lines the logger holds (log.ts batches them), offered to another
 * thread while the event loop is inside a call that may not come back.
 *
 * Why: the logger writes its batch from a timer on the event loop. A call
 * into the token that never returns holds the loop (loop-watch.ts), so lines
 * logged just before it (often the ones saying what led there) stay in the
 * batch, and the SIGKILL that ends such a process loses them. The watch runs
 * on a thread of its own and cannot reach the main thread's memory, so before
 * each such call the batch is copied (UTF-8) into shared memory, and the watch
 * takes and writes it, in order before its own lines, once it sees the call
 * held. The copy costs nothing when nothing is held (the usual case: lines
 * wait at most LOG_FLUSH_MS), and a line is copied once however many calls
 * follow. Lines already handed to the destination are its own: to a file,
 * written at once; to a pipe, written on libuv's thread pool, which the held
 * loop does not stop, except a batch handed over while an earlier write was
 * still in flight (a collector that is behind), which waits for the loop.
 *
 * Who writes what, without a lock: `state` says whose the copy is.
 * IDLE: the main thread's. OFFERED: the main thread is inside a call, the
 * copy is its held lines' first `#offeredChars` characters. The watch may
 * take them (OFFERED to TAKEN, compare-and-exchange) and sets WRITTEN once
 * written; the main thread, back from the call, reclaims them (OFFERED to
 * IDLE) or, if they were taken, drops them from its batch so that no line is
 * written twice. A copy still being written is never overwritten: no offer is
 * made until it is WRITTEN.
 *
 * Contract: `offer(held)` before a call, `reclaim()` after it (how many of
 * the held characters the watch wrote: the caller drops them), `reset()` once
 * the held lines were handed to the destination. `header` and `data` are what
 * the other thread reads (`STATE`, `BYTES` index the header).
 */

/** The state of the copy, header[STATE]. */
export const IDLE = 0;
export const OFFERED = 1;
export const TAKEN = 2;
export const WRITTEN = 3;
/** Slots of the header: the state, and the bytes of the copy. */
export const STATE = 0;
export const BYTES = 1;

/** The copy's room: the batch is written at LOG_BATCH_BYTES (4 KiB), so this holds it and a long line after. */
const CAPACITY = 64 * 1024;

const encoder = new TextEncoder();

export class HeldLines {
  readonly header = new Int32Array(new SharedArrayBuffer(8));
  readonly data = new Uint8Array(new SharedArrayBuffer(CAPACITY));
  /** Characters of the held lines the copy holds, and its bytes. */
  #offeredChars = 0;
  #offeredBytes = 0;
  /** Set when the copy could not take more (a line past CAPACITY): what is past it waits for the loop. */
  #full = false;

  /** Offers the held lines (a string that only grows between `reset()`s) for the call about to be made. */
  offer(held: string): void {
    if (held.length === 0) return;
    let state = Atomics.load(this.header, STATE);
    if (state === WRITTEN) {
      // Taken during an earlier call and dropped since: the room is free.
      Atomics.store(this.header, STATE, IDLE);
      state = IDLE;
    }
    // TAKEN: the watch is still writing an earlier copy.
    if (state !== IDLE) return;
    if (held.length > this.#offeredChars && !this.#full) this.#append(held);
    if (this.#offeredChars > 0) Atomics.store(this.header, STATE, OFFERED);
  }

  /** Back from the call: how many of the held characters were taken and written by the watch (the caller drops them). */
  reclaim(): number {
    const was = Atomics.compareExchange(this.header, STATE, OFFERED, IDLE);
    if (was !== TAKEN && was !== WRITTEN) return 0;
    const taken = this.#offeredChars;
    this.reset();
    return taken;
  }

  /** The held lines were handed to the destination: the copy covers nothing. */
  reset(): void {
    this.#offeredChars = 0;
    this.#offeredBytes = 0;
    this.#full = false;
  }

  #append(held: string): void {
    const room = this.data.subarray(this.#offeredBytes);
    const tail = held.slice(this.#offeredChars);
    const { read, written } = encoder.encodeInto(tail, room);
    if (read === tail.length) {
      this.#offeredChars += read;
      this.#offeredBytes += written;
    } else {
      // Only whole lines: up to the last one that fit.
      const lineEnd = tail.lastIndexOf('\n', read - 1) + 1;
      this.#offeredChars += lineEnd;
      this.#offeredBytes += Buffer.byteLength(tail.slice(0, lineEnd));
      this.#full = true;
    }
    Atomics.store(this.header, BYTES, this.#offeredBytes);
  }
}
