/**
 * The last line of defence of a proxy process, primary or worker: what it
 * does with an exception or a promise rejection nothing handled. It logs it
 * with its code and stack (never the error's other properties, which might
 * hold what must not reach a log), counts it in a worker
 * (`keyedge_proxy_uncaught_errors_total`), and stops gracefully: a worker
 * drains (stops accepting, lets the requests in flight finish within
 * shutdownGraceMs) and exits non-zero, so the primary starts a replacement;
 * the primary stops the whole proxy as on SIGTERM (its workers drain) and
 * exits non-zero, so the service manager restarts it.
 *
 * Neither goes on serving: after an uncaught exception the process is in an
 * undefined state (a stream half torn down, a pool's bookkeeping half
 * updated, a reload or a worker's replacement half done), as Node's
 * documentation of 'uncaughtException' warns. Draining rather than exiting at
 * once spares the requests in flight; a primary that died at once took its
 * workers with it (they exit when its IPC channel closes), cutting every
 * request. Another error while draining is logged (and counted) too; the
 * drain goes on, bounded by `deadlineMs`.
 */
import type { Counter } from 'prom-client';
import type { Logger } from '../keyserver/shared/log.js';
import type { UncaughtKind } from './metrics.js';

/** The exit code of a process that stopped after an uncaught error (EX_SOFTWARE, sysexits.h). */
export const UNCAUGHT_EXIT_CODE = 70;

export interface UncaughtOptions {
  readonly log: Logger;
  readonly counter?: Counter<'kind'>;
  /** What happens next, for the log line: "this worker drains and exits; ...". */
  readonly consequence: string;
  /** Starts the graceful stop (stop accepting, finish in-flight requests); the process exits when it is done. */
  readonly drain: () => void;
  /** The process exits after this long whatever the drain's progress: the grace period plus slack. */
  readonly deadlineMs: number;
}

/** Installs the handlers; returns their removal (an embedder's process outlives the proxy). */
export function installUncaughtHandlers({ log, counter, consequence, drain, deadlineMs }: UncaughtOptions): () => void {
  let draining = false;
  const onError = (kind: UncaughtKind, err: unknown): void => {
    counter?.inc({ kind });
    log.error({ kind, ...described(err) }, draining ? `${kind} while draining` : `${kind}: ${consequence}`);
    if (draining) return;
    draining = true;
    process.exitCode = UNCAUGHT_EXIT_CODE;
    setTimeout(() => process.exit(UNCAUGHT_EXIT_CODE), deadlineMs).unref();
    drain();
  };
  const onException = (err: Error): void => onError('uncaughtException', err);
  const onRejection = (reason: unknown): void => onError('unhandledRejection', reason);
  process.on('uncaughtException', onException);
  process.on('unhandledRejection', onRejection);
  return () => {
    process.off('uncaughtException', onException);
    process.off('unhandledRejection', onRejection);
  };
}

/** An error's code, type, message and stack; of anything else thrown, its type (a primitive also its value). */
function described(err: unknown): { code?: unknown; err: { type: string; message?: string; stack?: string } } {
  if (err instanceof Error) {
    return { code: (err as { code?: unknown }).code, err: { type: err.name, message: err.message, ...(err.stack === undefined ? {} : { stack: err.stack }) } };
  }
  if (typeof err === 'object' && err !== null) return { err: { type: err.constructor?.name ?? 'object' } };
  return { err: { type: typeof err, message: String(err) } };
}
