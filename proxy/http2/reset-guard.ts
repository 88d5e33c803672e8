/**
 * How many reset streams one HTTP/2 connection may cause: a token bucket of
 * `burst` resets, refilled at `burst / 10` per second (so a sustained tenth
 * of the burst per second is tolerated for ever, a burst of `burst` at once).
 *
 * Counted: every stream that ends with RST_STREAM before its answer was whole,
 * whoever sent it. The client's resets are Rapid Reset (CVE-2023-44487:
 * HEADERS then RST_STREAM, each starting work the client never waits for);
 * the server's are MadeYouReset (CVE-2025-8671: frames that make the server
 * reset the stream, such as WINDOW_UPDATE 0 or DATA past END_STREAM, which
 * the client's own reset count never sees). nghttp2 on Node 20 (1.61) limits
 * only received resets (burst 1000, 33/s), so this bucket, lower, is what
 * bounds both kinds there. 1.67+ (Node 22, 24) also limits its own resets,
 * counted while it reads a batch of frames, before any stream's close
 * reaches this bucket: it ends MadeYouReset connections first
 * (INTERNAL_ERROR, test/abuse-http2-resets.test.ts).
 *
 * Pure: the clock is passed in. O(1) per reset, one object per connection.
 */
export class ResetGuard {
  readonly #burst: number;
  readonly #perMs: number;
  #tokens: number;
  #at: number;
  #total = 0;

  constructor(burst: number, now: number) {
    this.#burst = burst;
    this.#perMs = burst / 10 / 1000;
    this.#tokens = burst;
    this.#at = now;
  }

  /** Resets counted so far on this connection. */
  get total(): number {
    return this.#total;
  }

  /** Counts one reset at `now` (ms); false once the connection is over its bound. */
  reset(now: number): boolean {
    this.#total++;
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#perMs);
    this.#at = now;
    this.#tokens -= 1;
    return this.#tokens >= 0;
  }
}
