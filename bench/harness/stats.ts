/**
 * Small statistics for benchmark figures (median, spread, nearest-rank percentiles: a reported p99 is a latency some
 * request had) and `ClosedLoop`, the bookkeeping of the closed-loop loads (signing loads, resuming and ALPN clients).
 */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Median, min, max, n and spreadPct = (max - min) / median in percent: how far apart the rounds were. */
export type Spread = { readonly median: number; readonly min: number; readonly max: number; readonly spreadPct: number; readonly n: number };

export function spread(values: readonly number[]): Spread {
  const finite = values.filter((v) => Number.isFinite(v));
  const [m, min, max] = finite.length > 0 ? [median(finite), Math.min(...finite), Math.max(...finite)] : [Number.NaN, Number.NaN, Number.NaN];
  return { median: m, min, max, spreadPct: m > 0 ? ((max - min) / m) * 100 : Number.NaN, n: finite.length };
}

/** Per-request latencies in µs (a packed array of doubles: no object per sample), sorted once at the end. */
class LatencyRecorder {
  samples: number[] = [];

  reset(): void {
    this.samples = [];
  }

  summary() {
    const sorted = Float64Array.from(this.samples).sort();
    const n = sorted.length;
    const at = (p: number) => (n === 0 ? Number.NaN : sorted[Math.min(n, Math.max(1, Math.ceil((p / 100) * n))) - 1]!);
    const meanUs = n > 0 ? sorted.reduce((a, b) => a + b, 0) / n : Number.NaN;
    return { count: n, p50Us: at(50), p90Us: at(90), p99Us: at(99), maxUs: at(100), meanUs };
  }
}

export const round = (value: number, decimals = 1): number => (Number.isFinite(value) ? Math.round(value * 10 ** decimals) / 10 ** decimals : value);

export const nowNs = (): number => Number(process.hrtime.bigint());

/** Loops each starting its next operation when the last ends: `begin()` starts them (setting `outstanding`), `retire()` ends one. */
export abstract class ClosedLoop {
  completed = 0;
  errors = 0;
  firstError: string | undefined;
  recording = false;
  readonly latency = new LatencyRecorder();
  protected stopped = false;
  protected outstanding = 0;
  #drained: (() => void) | undefined;

  start(): void {
    this.stopped = false;
    this.#drained = undefined;
    this.begin();
  }

  protected abstract begin(): void;

  protected done(startNs: number, error: string | undefined): void {
    if (error === undefined) {
      this.completed++;
      if (this.recording) this.latency.samples.push((nowNs() - startNs) / 1e3);
    } else {
      this.errors++;
      this.firstError ??= error;
    }
  }

  protected retire(): void {
    if (--this.outstanding === 0) this.#drained?.();
  }

  /** Stops issuing; resolves with 0 once nothing is outstanding, or after `timeoutMs` with the count still out. */
  stop(timeoutMs = 10_000): Promise<number> {
    this.stopped = true;
    this.recording = false;
    if (this.outstanding === 0) return Promise.resolve(0);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(this.outstanding), timeoutMs);
      this.#drained = () => {
        clearTimeout(timer);
        resolve(0);
      };
    });
  }
}
