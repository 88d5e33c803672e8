/**
 * Small statistics for benchmark figures: median, percentiles, spread, and a latency recorder cheap enough to run on
 * every request.
 *
 * Percentiles use the nearest-rank method (the smallest value with at least p% of the samples at or below it), so a
 * reported p99 is always a latency some request actually had.
 */

/** Median of `values` (mean of the two middle ones for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile (p in 0..100) of values already sorted ascending; NaN when empty. */
export function percentileSorted(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Median, min, max, n and spreadPct = (max - min) / median in percent: how far apart the rounds were. */
export interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly spreadPct: number;
  readonly n: number;
}

/** Median, min, max and relative spread of per-round figures. */
export function spread(values: readonly number[]): Spread {
  const finite = values.filter((v) => Number.isFinite(v));
  const [m, min, max] = finite.length > 0 ? [median(finite), Math.min(...finite), Math.max(...finite)] : [Number.NaN, Number.NaN, Number.NaN];
  return { median: m, min, max, spreadPct: m > 0 ? ((max - min) / m) * 100 : Number.NaN, n: finite.length };
}

export interface LatencySummary {
  readonly count: number;
  readonly p50Us: number;
  readonly p90Us: number;
  readonly p99Us: number;
  readonly maxUs: number;
  readonly meanUs: number;
}

/**
 * Per-request latencies in microseconds, appended to a growing Float64Array
 * (no per-sample object), summarised by sorting a copy once at the end.
 */
export class LatencyRecorder {
  #samples = new Float64Array(1 << 14);
  #count = 0;

  record(us: number): void {
    if (this.#count === this.#samples.length) {
      const bigger = new Float64Array(this.#samples.length * 2);
      bigger.set(this.#samples);
      this.#samples = bigger;
    }
    this.#samples[this.#count++] = us;
  }

  get count(): number {
    return this.#count;
  }

  reset(): void {
    this.#count = 0;
  }

  /** Samples recorded so far, sorted ascending (a copy). */
  sorted(): Float64Array {
    return this.#samples.slice(0, this.#count).sort();
  }

  summary(): LatencySummary {
    return summarizeLatencies(this.sorted());
  }
}

export function summarizeLatencies(sorted: Float64Array): LatencySummary {
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    p50Us: percentileSorted(sorted, 50),
    p90Us: percentileSorted(sorted, 90),
    p99Us: percentileSorted(sorted, 99),
    maxUs: sorted.length > 0 ? sorted[sorted.length - 1]! : Number.NaN,
    meanUs: sorted.length > 0 ? sum / sorted.length : Number.NaN,
  };
}

/** Rounds to `digits` significant-ish decimals for reports (keeps integers integral). */
export function round(value: number, decimals = 1): number {
  if (!Number.isFinite(value)) return value;
  const f = 10 ** decimals;
  return Math.round(value * f) / f;
}
