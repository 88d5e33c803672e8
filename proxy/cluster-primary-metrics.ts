/**
 * The primary's own metrics, summed with the workers' on /metrics: reloads
 * (counting the first pass), the served and refused certificates, worker
 * restarts, the fleet store's health; and the certificate expiry warnings,
 * each logged once per threshold.
 */
import { Counter, Registry } from 'prom-client';
import type { Logger } from '../keyserver/shared/log.js';
import { registerFleetStoreMetrics } from './metrics.js';
import { dueExpiryWarnings, registerServingMetrics } from './serving/expiry.js';
import type { ServingSource } from './serving/source.js';
import type { EtcdStore } from './store/etcd-store.js';

export interface PrimaryMetrics {
  readonly registry: Registry;
  readonly reloads: ReturnType<typeof registerServingMetrics>;
  readonly restarts: Counter;
  /** Logs the certificates due to expire: all of them, or after a reload only those it changed. */
  readonly warnExpiry: (changed?: readonly string[]) => void;
}

/** The primary's own metrics (summed with the workers' on /metrics), counting the first pass, and its expiry warnings. */
export function primaryMetrics(log: Logger, shared: EtcdStore | undefined, source: ServingSource, refusedAtStart: boolean): PrimaryMetrics {
  const registry = new Registry();
  const reloads = registerServingMetrics(registry, { records: () => source.records, refusals: () => source.refusals });
  if (shared !== undefined) registerFleetStoreMetrics(registry, () => shared.health);
  const restarts = new Counter({
    name: 'keyedge_proxy_worker_restarts_total',
    help: 'Workers that died and were replaced; a crash loop shows as a steady rise (the pause between quick deaths doubles up to 30 s).',
    registers: [registry],
  });
  reloads.inc({ trigger: 'start', result: refusedAtStart ? 'refused' : 'ok' });
  const warned = new Map<string, number>();
  // After a reload, only the certificates it changed: a look at each of 100,000 records is for the hourly check.
  const warnExpiry = (changed?: readonly string[]): void => {
    const records = changed === undefined ? source.records.values() : changed.flatMap((name) => source.records.get(name) ?? []);
    for (const due of dueExpiryWarnings(records, new Date(), warned, changed === undefined)) {
      log.warn(
        { certificate: due.name, notAfter: due.notAfter, withinDays: due.days },
        `certificate expires within ${due.days} day${due.days === 1 ? '' : 's'}`,
      );
    }
  };
  warnExpiry();
  return { registry, reloads, restarts, warnExpiry };
}
