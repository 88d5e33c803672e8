/**
 * A worker whose primary is gone without stopping it (SIGKILL, the OOM
 * killer, a crash in native code): its IPC channel closes unasked. node:cluster
 * then exits the worker at once (process.exit(0) on that 'disconnect', unless
 * `worker.exitedAfterDisconnect` is true, as its documentation says), cutting
 * every request in flight. nginx's workers finish what they serve; so does
 * this one: it drains as on SIGTERM and exits, bounded by the grace period.
 *
 * Why this is sound: under SCHED_NONE (cluster.ts) each worker holds its own
 * descriptor of the listening socket, passed by the primary, so an orphan
 * would go on accepting; its drain closes its listeners first, and once every
 * worker has, the port refuses new connections and a restarted proxy binds it.
 * Nothing the drain needs is the primary's: the keys are signed by the key
 * server, reached directly; the ticket keys and the serving state are held.
 * What the worker still sends the primary fails ('error' on the Worker,
 * handled here, which unheard was an uncaught exception). The process exits
 * `deadlineMs` after the loss whatever the drain's progress: no orphan stays.
 */
import cluster from 'node:cluster';
import type { Logger } from '../keyserver/shared/log.js';

export interface PrimaryWatch {
  /** Whether the primary went away unasked: then the worker exits by itself once drained (there is no channel to close). */
  readonly gone: () => boolean;
  /** The worker is about to close its channel itself, its drain done: node:cluster's exit on that is the one wanted. */
  readonly leaving: () => void;
}

/** In a cluster worker: on the primary's loss, `drain()` (stop accepting, finish in flight), and exit by `deadlineMs`. */
export function watchPrimary(log: Logger, deadlineMs: number, exitCode: () => number, drain: () => void): PrimaryWatch {
  const worker = cluster.worker;
  let gone = false;
  let leaving = false;
  // Before node:cluster's own listener, registered as the worker started: it reads exitedAfterDisconnect after this.
  process.prependOnceListener('disconnect', () => {
    if (leaving || worker === undefined) return;
    gone = true;
    worker.exitedAfterDisconnect = true;
    worker.on('error', () => undefined);
    log.error({ deadlineMs }, 'the proxy primary is gone: this worker stops accepting, finishes its requests in flight, and exits');
    setTimeout(() => process.exit(exitCode()), deadlineMs).unref();
    drain();
  });
  return {
    gone: () => gone,
    leaving: () => {
      leaving = true;
    },
  };
}
