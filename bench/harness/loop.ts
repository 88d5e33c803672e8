/**
 * The bookkeeping every closed-loop load of the benches shares (signing loads of keyserver-sign, the resuming and ALPN
 * clients of handshake): a fixed number of loops, each starting its next operation when the last one ends; completed /
 * failed counts, the first error, per-operation latency while `recording`, and a stop that resolves once the last loop
 * has ended.
 *
 * A subclass starts its loops in `begin()` (setting `outstanding` to their number), reports each operation with
 * `done()` and calls `retire()` when a loop does not go on. Single-threaded, in the bench process.
 */
import { LatencyRecorder } from './stats.js';

export const nowNs = (): number => Number(process.hrtime.bigint());

export abstract class ClosedLoop {
  completed = 0;
  errors = 0;
  firstError: string | undefined;
  /** While true, each completed operation's latency is recorded. */
  recording = false;
  readonly latency = new LatencyRecorder();
  protected stopped = false;
  protected outstanding = 0;
  #drained: (() => void) | undefined;

  /** Starts (or restarts, after stop() resolved) the loops. */
  start(): void {
    this.stopped = false;
    this.#drained = undefined;
    this.begin();
  }

  protected abstract begin(): void;

  /** One operation ended: `error` undefined when it succeeded. */
  protected done(startNs: number, error: string | undefined): void {
    if (error === undefined) {
      this.completed++;
      if (this.recording) this.latency.record((nowNs() - startNs) / 1e3);
    } else {
      this.errors++;
      this.firstError ??= error;
    }
  }

  /** Called when a loop does not issue again; resolves stop() when the last one ends. */
  protected retire(): void {
    this.outstanding--;
    if (this.outstanding === 0) this.#drained?.();
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
