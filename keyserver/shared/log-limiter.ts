/**
 * Rate-limited warning lines: at most `burst` lines per `intervalMs` for each
 * key, the rest counted and dropped; the next line written for that key says
 * how many were dropped before it (`suppressed`), as the kernel's printk
 * ratelimit ("N callbacks suppressed") does.
 *
 * Used for what a client can make us log at will: by the key server (bad
 * frames, connections refused, evicted or timed out: 20,000 fuzzed frames
 * once made 4.3 MB of log) and by the proxy's on-demand gate (a name refused
 * or rate-limited, for every name a client puts in its SNI). The metrics still count every event; the log only has to show what is
 * happening and to whom. Keys are the caller's bounded reason names (error
 * code names, drop reasons), never client-chosen text, so the table stays
 * small. A burst that ends mid-window leaves its count for the next line of
 * the same key; the metrics have the exact totals meanwhile.
 */
import type { Logger } from './log.js';

export interface LogLimiterOptions {
  readonly intervalMs: number;
  readonly burst: number;
  /** Milliseconds, monotonic; injected by tests. */
  readonly now?: () => number;
}

interface Window {
  start: number;
  written: number;
  suppressed: number;
}

export class LogLimiter {
  readonly #intervalMs: number;
  readonly #burst: number;
  readonly #now: () => number;
  readonly #windows = new Map<string, Window>();

  constructor(options: LogLimiterOptions) {
    this.#intervalMs = options.intervalMs;
    this.#burst = options.burst;
    this.#now = options.now ?? (() => performance.now());
  }

  /**
   * Whether a line for `key` may be written now: undefined when it must be
   * dropped, else the number of lines dropped for this key since the last one
   * written (usually 0).
   */
  take(key: string): number | undefined {
    const now = this.#now();
    let window = this.#windows.get(key);
    if (window === undefined) {
      window = { start: now, written: 0, suppressed: 0 };
      this.#windows.set(key, window);
    } else if (now - window.start >= this.#intervalMs) {
      window.start = now;
      window.written = 0;
    }
    if (window.written >= this.#burst) {
      window.suppressed++;
      return undefined;
    }
    window.written++;
    const suppressed = window.suppressed;
    window.suppressed = 0;
    return suppressed;
  }

  /** log.warn(fields, msg) unless `key` is over its rate; adds `suppressed` when lines were dropped before it. */
  warn(log: Logger, key: string, fields: Record<string, unknown>, msg: string): void {
    this.write(log, 'warn', key, fields, msg);
  }

  /** log[level](fields, msg) unless `key` is over its rate; adds `suppressed` when lines were dropped before it. */
  write(log: Logger, level: 'info' | 'warn' | 'error', key: string, fields: Record<string, unknown>, msg: string): void {
    const suppressed = this.take(key);
    if (suppressed === undefined) return;
    log[level](suppressed > 0 ? { ...fields, suppressed } : fields, msg);
  }
}
