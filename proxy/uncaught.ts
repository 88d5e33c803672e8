/**
 * A proxy worker's last line of defence: what it does with an exception or a
 * promise rejection nothing handled. It counts it
 * (`keyedge_proxy_uncaught_errors_total`), logs it with its code and stack,
 * and drains: stops accepting, lets the requests in flight finish within
 * shutdownGraceMs, and exits non-zero, so the primary starts a replacement.
 *
 * It does not go on serving: after an uncaught exception the process is in an
 * undefined state (a stream half torn down, a pool's bookkeeping half
 * updated), as Node's documentation of 'uncaughtException' warns. Draining
 * rather than exiting at once spares the other requests in flight on this
 * worker; the other workers keep accepting meanwhile (they share the
 * listening socket). Another error while draining is counted and logged too;
 * the drain goes on, bounded by `deadlineMs`.
 */
import type { Counter } from 'prom-client';
import type { Logger } from '../keyserver/shared/log.js';
import type { UncaughtKind } from './metrics.js';

/** The exit code of a worker that drained after an uncaught error (EX_SOFTWARE, sysexits.h). */
export const UNCAUGHT_EXIT_CODE = 70;

export interface UncaughtOptions {
  readonly log: Logger;
  readonly counter: Counter<'kind'>;
  /** Starts the graceful stop (stop accepting, finish in-flight requests); the process exits when it is done. */
  readonly drain: () => void;
  /** The process exits after this long whatever the drain's progress: the grace period plus slack. */
  readonly deadlineMs: number;
}

export function installUncaughtHandlers({ log, counter, drain, deadlineMs }: UncaughtOptions): void {
  let draining = false;
  const onError = (kind: UncaughtKind, err: unknown): void => {
    counter.inc({ kind });
    const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
    log.error({ kind, code, err }, draining ? `${kind} while draining` : `${kind}: this worker drains and exits; the primary starts a replacement`);
    if (draining) return;
    draining = true;
    process.exitCode = UNCAUGHT_EXIT_CODE;
    setTimeout(() => process.exit(UNCAUGHT_EXIT_CODE), deadlineMs).unref();
    drain();
  };
  process.on('uncaughtException', (err) => onError('uncaughtException', err));
  process.on('unhandledRejection', (reason) => onError('unhandledRejection', reason));
}
