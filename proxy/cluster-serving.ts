/**
 * The primary's distribution of the serving state (certificates and routes)
 * to its workers: each reload's delta goes to every synced worker, as a file
 * when large (serving/pack.ts; inline when the state directory cannot take
 * one), and the reload coordinator
 * (serving/coordinator.ts) commits it once they answered or
 * `reloadApplyTimeoutMs` passed. A worker that starts gets the committed state,
 * then the delta being applied, if any.
 */
import type { Worker } from 'node:cluster';
import type { Logger } from '../keyserver/shared/log.js';
import { type AppliedMessage, applyMessage } from './cluster-messages.js';
import { sendToWorker } from './cluster-metrics.js';
import { ReloadCoordinator, type WorkerNotApplied } from './serving/coordinator.js';
import { Distribution } from './serving/distribute.js';
import { PackShelf, type WireDelta } from './serving/pack.js';
import type { ServingSource } from './serving/source.js';
import type { ServingDelta } from './serving/spec.js';

export interface Serving {
  readonly packs: PackShelf<Worker>;
  /**
   * How `delta` travels to `worker`: as a pack when large (serving/pack.ts), inline when the pack cannot be written.
   * A full or read-only state directory threw out of the handler of a new worker's first message, an uncaught error
   * that stopped the whole proxy, and out of a reload's distribution, which sent no worker the delta it then committed.
   */
  wire(kind: 'snapshot' | 'delta', delta: ServingDelta, worker: Worker): WireDelta;
  /** Workers that hold the current serving state and get every delta after it. */
  readonly synced: Set<Worker>;
  /** Per worker, what to do with its answer to the delta being applied ('exited': it exited before it answered). */
  readonly acks: Map<Worker, (answer: AppliedMessage | 'exited') => void>;
  /** The delta being applied, if any: a worker that starts meanwhile gets it after the committed state. */
  inFlight(): ServingDelta | undefined;
  /** The committed state, which a worker that starts gets first. */
  snapshot(): ServingDelta;
  readonly coordinator: ReloadCoordinator;
  gone(worker: Worker): void;
}

/**
 * Certificate distribution: each reload's delta goes to every synced worker (as a file when large, serving/pack.ts)
 * and is committed once they answered or `applyTimeoutMs` (the config's `reloadApplyTimeoutMs`) passed.
 */
export function distributeServing(
  source: ServingSource,
  log: Logger,
  metrics: { reloads: { inc(labels: { trigger: string; result: string }): void }; warnExpiry: (changed?: readonly string[]) => void },
  applyTimeoutMs: number,
): Serving {
  // Large deltas (a worker's whole state) go to workers as files, not through the IPC pipe (serving/pack.ts).
  // The newest whole state stays in the state directory: the next start sends it again rather than reading the store (serving/kept.ts).
  const keepIn = source.keptDir();
  const packs = new PackShelf<Worker>(
    keepIn === undefined
      ? {}
      : {
          keepIn,
          keep: (packed, delta, chains) => source.keepWritten(packed, delta, chains),
          existing: (delta) => source.keptPackFor(delta),
          ...(source.keptPack === undefined ? {} : { kept: source.keptPack }),
        },
  );
  const wire = (kind: 'snapshot' | 'delta', delta: ServingDelta, worker: Worker): WireDelta => {
    try {
      return packs.wire(kind, delta, worker);
    } catch (err) {
      log.warn(
        { generation: delta.generation, certificates: delta.upsert.length, reason: (err as Error).message },
        'cannot write the serving state for a worker to the state directory; it goes over IPC instead (slower)',
      );
      // The table a pack was read from stays here: the records themselves go.
      const { table: _table, ...rest } = delta;
      return { delta: { ...rest, upsert: [...delta.upsert] } };
    }
  };
  const distribution = new Distribution();
  const synced = new Set<Worker>();
  let inFlight: ServingDelta | undefined;
  const acks = new Map<Worker, (answer: AppliedMessage | 'exited') => void>();
  // A worker lost to a delta (it exited, or did not answer in time) is not a failure of the delta, which is committed:
  // its replacement starts from it, or it applies it late (coordinator.ts `notApplied`). One that could not apply it is.
  const applyEverywhere = async (next: ServingDelta): Promise<(string | WorkerNotApplied)[]> => {
    // The delta, or the whole state after it when the workers' layers would grow too far (serving/distribute.ts).
    const delta = distribution.shape(next, () => source.wholeWith(next));
    inFlight = delta;
    try {
      const results = await Promise.all(
        [...synced].map(
          (worker) =>
            new Promise<string | WorkerNotApplied | undefined>((resolve) => {
              const timer = setTimeout(() => {
                acks.delete(worker);
                resolve({ notApplied: `worker ${worker.id}: no answer within ${applyTimeoutMs} ms` });
              }, applyTimeoutMs);
              acks.set(worker, (answer) => {
                if (answer !== 'exited' && answer.generation !== delta.generation) return;
                clearTimeout(timer);
                acks.delete(worker);
                if (answer === 'exited') resolve({ notApplied: `worker ${worker.id}: exited` });
                else resolve(answer.error === undefined ? undefined : `worker ${worker.id}: ${answer.error}`);
              });
              sendToWorker(worker, applyMessage(wire('delta', delta, worker)));
            }),
        ),
      );
      return results.filter((r) => r !== undefined);
    } finally {
      inFlight = undefined;
    }
  };
  const coordinator = new ReloadCoordinator(source, {
    log,
    apply: applyEverywhere,
    onReport: (report) => {
      metrics.reloads.inc({ trigger: report.trigger, result: report.result });
      metrics.warnExpiry(report.changed);
    },
  });
  return {
    packs,
    wire,
    synced,
    acks,
    inFlight: () => inFlight,
    snapshot: () => source.snapshot(),
    coordinator,
    gone: (worker) => {
      synced.delete(worker);
      packs.gone(worker);
      acks.get(worker)?.('exited');
    },
  };
}
