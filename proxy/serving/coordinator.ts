/**
 * Reloads, one at a time, for the cluster primary (or a lone worker): asks
 * the source for the next delta, has it applied everywhere, commits it, and
 * reports what happened in one log line and the reload metrics.
 *
 * Triggers arriving while a reload runs are folded into one more reload
 * after it (a burst of file events, a SIGHUP during a rescan): the last word
 * always wins and no trigger is lost. An operator's (SIGHUP, the admin API)
 * folded into one a watch or rescan queued makes it the operator's: it
 * compares content, not only stat, and is answered, logged and counted as
 * the operator's. A trigger may name the store entries
 * it is about (a watch event, an admin PUT): the reload then looks at those
 * alone (source.ts `only`); folded triggers look at the union of their
 * names, or at everything when one of them named none.
 */
import type { Logger } from '../../keyserver/shared/log.js';
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import type { NextServing } from './next-serving.js';
import type { ServingSource } from './source.js';
import type { Refusal, ServingDelta } from './spec.js';

/** `store`: the fleet's shared store (etcd) changed. */
export type ReloadTrigger = 'start' | 'watch' | 'rescan' | 'signal' | 'admin' | 'store';

/** The triggers an operator fires: each compares every entry's content, and is answered and counted as asked. */
const OPERATOR: ReadonlySet<ReloadTrigger> = new Set(['signal', 'admin']);

/** How soon a pass that found a file still being written looks again. */
const UNSETTLED_RETRY_MS = 500;

export interface ReloadReport {
  readonly trigger: ReloadTrigger;
  readonly result: 'ok' | 'refused' | 'partial';
  /**
   * The generation serving after this reload: the new one when its delta was committed (`ok`, `partial`, a
   * `refused` certificate among others), else (the whole reload refused, `error` set) the one that keeps serving.
   */
  readonly generation: number;
  /** Certificates now served in a new version, and those no longer served. */
  readonly changed: readonly string[];
  readonly removed: readonly string[];
  readonly refused: readonly Refusal[];
  readonly warnings: readonly { readonly name: string; readonly message: string }[];
  readonly restartNeeded: readonly string[];
  /** Why the whole reload was refused (bad config, key server unreachable), or applied only in part (`partial`). */
  readonly error?: { readonly code: string; readonly message: string };
  /**
   * Workers that did not apply this committed reload for a reason of their own, one line each: one that exited
   * before it answered is replaced, its replacement starting from this generation; one that gave no answer within
   * `reloadApplyTimeoutMs` serves it once it applies it, or is replaced (by the watchdog, or for failing it). The
   * reload itself stands: not `partial`, no `error` (which made the admin API answer 409, "refused", and an ACME
   * renewal count as failed, for a certificate that served).
   */
  readonly notApplied?: readonly string[];
  readonly durationMs: number;
}

/** A worker that did not apply a delta for a reason of its own (it exited, it did not answer in time): see `notApplied`. */
export interface WorkerNotApplied {
  readonly notApplied: string;
}

export interface CoordinatorOptions {
  readonly log: Logger;
  /**
   * Applies a delta everywhere it must go; resolves with one entry per place it failed: a message when the delta
   * itself failed there, a WorkerNotApplied when a worker was lost to it.
   */
  readonly apply: (delta: ServingDelta) => Promise<readonly (string | WorkerNotApplied)[]>;
  readonly onReport?: (report: ReloadReport, next: NextServing | undefined) => void;
}

export class ReloadCoordinator {
  readonly #source: ServingSource;
  readonly #options: CoordinatorOptions;
  #running: Promise<ReloadReport> | undefined;
  #queued: Promise<ReloadReport> | undefined;
  /** The names the queued reload looks at; undefined: everything. */
  #queuedNames: Set<string> | undefined;
  /** The queued reload's trigger: the first folded into it, or the last operator's among them. */
  #queuedTrigger: ReloadTrigger = 'watch';

  constructor(source: ServingSource, options: CoordinatorOptions) {
    this.#source = source;
    this.#options = options;
  }

  /** `names`: the store entries the trigger is about; without it, the whole store is looked at. */
  reload(trigger: ReloadTrigger, names?: Iterable<string>): Promise<ReloadReport> {
    if (this.#running === undefined) {
      this.#running = this.#run(trigger, names === undefined ? undefined : new Set(names)).finally(() => (this.#running = undefined));
      return this.#running;
    }
    // One reload after the running one covers every trigger that came meanwhile.
    if (this.#queued === undefined) {
      this.#queuedNames = names === undefined ? undefined : new Set(names);
      this.#queuedTrigger = trigger;
      const next = (): Promise<ReloadReport> => {
        const queuedNames = this.#queuedNames;
        const queuedTrigger = this.#queuedTrigger;
        this.#queued = undefined;
        this.#queuedNames = undefined;
        return this.reload(queuedTrigger, queuedNames);
      };
      this.#queued = this.#running.then(next, next);
      return this.#queued;
    }
    // Folded under the first trigger's name, the operator's reload compared only stat and was answered as a watch's.
    if (OPERATOR.has(trigger)) this.#queuedTrigger = trigger;
    if (names === undefined) this.#queuedNames = undefined;
    else if (this.#queuedNames !== undefined) for (const name of names) this.#queuedNames.add(name);
    return this.#queued;
  }

  async #run(trigger: ReloadTrigger, names: ReadonlySet<string> | undefined): Promise<ReloadReport> {
    const started = performance.now();
    const { log } = this.#options;
    let next: NextServing;
    try {
      // An operator who asks gets every entry's content compared, not only its stat.
      next = await this.#source.next({ verify: OPERATOR.has(trigger), ...(names === undefined ? {} : { only: names }) });
    } catch (err) {
      const report: ReloadReport = {
        trigger,
        result: 'refused',
        // Nothing was committed: the generation serving before keeps serving, and is what the report names.
        generation: this.#source.generation,
        changed: [],
        removed: [],
        refused: [],
        warnings: [],
        restartNeeded: [],
        error: { code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_CONFIG', message: (err as Error).message },
        durationMs: performance.now() - started,
      };
      log.error(
        { trigger, generation: report.generation, code: report.error?.code, err },
        'reload refused; the running configuration and certificates keep serving',
      );
      this.#options.onReport?.(report, undefined);
      return report;
    }
    let outcomes: readonly (string | WorkerNotApplied)[];
    try {
      outcomes = await this.#options.apply(next.delta);
    } catch (err) {
      // Never a rejection: triggers fire and forget, and workers that did not apply are replaced.
      outcomes = [(err as Error).message];
    }
    const failures = outcomes.filter((o): o is string => typeof o === 'string');
    const notApplied = outcomes.filter((o): o is WorkerNotApplied => typeof o !== 'string').map((o) => o.notApplied);
    this.#source.commit(next);
    if (next.unsettled.length > 0) setTimeout(() => void this.reload('watch', next.unsettled), UNSETTLED_RETRY_MS).unref();
    const report: ReloadReport = {
      trigger,
      result: failures.length > 0 ? 'partial' : next.refused.length > 0 ? 'refused' : 'ok',
      generation: next.delta.generation,
      changed: next.delta.upsert.map((r) => r.name),
      removed: next.delta.remove,
      refused: next.refused,
      warnings: next.warnings,
      restartNeeded: next.restartNeeded,
      ...(failures.length > 0 ? { error: { code: 'KEYEDGE_ERR_CERTIFICATE', message: failures.join('; ') } } : {}),
      ...(notApplied.length > 0 ? { notApplied } : {}),
      durationMs: performance.now() - started,
    };
    for (const record of next.delta.upsert) {
      log.info({ certificate: record.name, serial: record.serial, notAfter: record.notAfter, keyId: record.keyId, trigger }, 'certificate now serving');
    }
    for (const name of next.delta.remove) log.info({ certificate: name, trigger }, 'certificate no longer served');
    for (const refusal of next.refused) {
      log.error(
        { certificate: refusal.name, source: refusal.source, reason: refusal.reason, trigger, code: 'KEYEDGE_ERR_CERTIFICATE' },
        `certificate refused: ${refusal.message}; ${this.#source.records.has(refusal.name) ? 'the previous version keeps serving' : 'it is not served'}`,
      );
    }
    for (const warning of next.warnings) log.warn({ certificate: warning.name }, warning.message);
    if (next.restartNeeded.length > 0) log.warn({ settings: next.restartNeeded }, 'these settings changed but take effect only after a restart');
    if (failures.length > 0) log.error({ failures }, 'reload applied only in part');
    if (notApplied.length > 0) log.warn({ notApplied }, 'reload committed; workers lost to it are replaced from it, or apply it late');
    if (next.delta.upsert.length + next.delta.remove.length > 0 || trigger !== 'rescan') {
      log.info(
        {
          trigger,
          generation: report.generation,
          result: report.result,
          changed: report.changed.length,
          removed: report.removed.length,
          refused: report.refused.length,
          // Whether only the entries the trigger named were looked at.
          targeted: next.targeted,
          durationMs: Math.round(report.durationMs),
        },
        'reload done',
      );
    }
    this.#options.onReport?.(report, next);
    return report;
  }
}
