/**
 * The primary's stop: on SIGTERM/SIGINT (or an uncaught error) every ready
 * worker is told to drain and is killed if it outlives the grace period, and
 * one still starting is ended at once (SIGTERM); a second
 * signal is caught too, so it cannot cut the drain short. A first worker that
 * cannot start while none serves fails the start, after the same stop of the
 * others. The workers' own drain is shutdown.ts.
 */
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { SHUTDOWN } from './cluster-messages.js';
import { sendToWorker } from './cluster-metrics.js';
import type { WorkerSupervisor } from './cluster-supervisor.js';

/**
 * Shutdown: resolves once SIGTERM/SIGINT (or an uncaught error, through `onFault`) stopped every worker gracefully;
 * rejects when a first worker cannot start. `stopTimers` ends the primary's own work first.
 */
export async function untilStopped(
  config: ProxyConfig,
  log: Logger,
  supervisor: WorkerSupervisor,
  onFault: (stop: () => void) => void,
  stopTimers: () => void,
): Promise<void> {
  // Every SIGTERM/SIGINT is caught until the end: a second one's default action ended the primary at once, mid-drain,
  // and its workers with it (they exit when the IPC channel closes). The drain is bounded by the grace period.
  let stop: (reason: string) => void = () => undefined;
  const onStopSignal = (signal: NodeJS.Signals): void => stop(signal);
  process.on('SIGTERM', onStopSignal);
  process.on('SIGINT', onStopSignal);
  try {
    await new Promise<void>((resolve, reject) => {
      supervisor.failStart = (err) => {
        if (supervisor.stopping) return;
        stopTimers();
        log.error({ code: err.code, reason: err.message }, 'a proxy worker could not start; stopping');
        // Rejected once every worker is gone: the CLI exits a second after a failed command, and a worker that had
        // begun to serve (its readiness not yet read here) was cut with it, mid-request.
        stopWorkers(config, supervisor, () => reject(err));
      };
      stop = (reason) => {
        if (supervisor.stopping) return;
        stopTimers();
        log.info({ reason }, 'stopping proxy workers');
        stopWorkers(config, supervisor, resolve);
      };
      onFault(() => stop('uncaught error'));
    });
  } finally {
    process.off('SIGTERM', onStopSignal);
    process.off('SIGINT', onStopSignal);
  }
}

/**
 * Stops every worker, then calls `done`: a ready one is told to drain, one still starting is ended at once (SIGTERM),
 * and any left after the grace period (plus slack) is killed.
 */
function stopWorkers(config: ProxyConfig, supervisor: WorkerSupervisor, done: () => void): void {
  const workers = supervisor.workers();
  if (workers.length === 0) return done();
  let left = workers.length;
  for (const worker of workers) {
    worker.once('exit', () => --left === 0 && done());
    // A worker not yet ready serves nothing: it ends at once on SIGTERM (its handler comes with serving, installed
    // as it says ready). Told to drain instead, it finished its whole start first, and a word sent before it
    // listened for messages was lost, leaving it to the grace period's kill.
    if (supervisor.ready.has(worker)) sendToWorker(worker, SHUTDOWN);
    else worker.process.kill('SIGTERM');
  }
  // Workers that do not finish within the grace period (plus slack) are killed.
  setTimeout(() => {
    for (const worker of workers) if (!worker.isDead()) worker.kill('SIGKILL');
  }, config.shutdownGraceMs + 5_000).unref();
}
