/**
 * Certificate expiry, seen from the cluster primary: metrics for every
 * served certificate and warning log lines as expiry approaches.
 *
 * Series: one `certificate_expiry_seconds` per store or config entry (the
 * entry's name, which the operator chose: never an SNI name or a serial),
 * so the series count grows with the store. At 10,000 entries that is
 * 10,000 small series, within what one Prometheus scrape handles well; an
 * operator with far more can drop that metric by relabelling and alert on
 * the `certificates_expiring` aggregates, which stay at two series.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { CertificateRecord, Refusal } from './spec.js';

const PREFIX = 'keyedge_proxy_';
const DAY_MS = 86_400_000;
/** Days before expiry at which a warning is logged, once each (certbot renews at 30 days left). */
export const EXPIRY_WARNING_DAYS = [30, 14, 7, 1] as const;

export interface ServingView {
  readonly records: () => ReadonlyMap<string, CertificateRecord>;
  readonly refusals: () => ReadonlyMap<string, Refusal>;
}

/** Registers the primary's own metrics; returns the reload counter it increments. */
export function registerServingMetrics(registry: Registry, view: ServingView): Counter<'trigger' | 'result'> {
  const registers = [registry];
  new Gauge({
    name: `${PREFIX}certificate_expiry_seconds`,
    help: 'Seconds until the served certificate expires (negative once expired), by certificate entry name.',
    labelNames: ['certificate'] as const,
    registers,
    collect() {
      this.reset();
      const now = Date.now();
      for (const record of view.records().values()) this.set({ certificate: record.name }, Math.round((Date.parse(record.notAfter) - now) / 1000));
    },
  });
  new Gauge({
    name: `${PREFIX}certificates_expiring`,
    help: 'Served certificates expiring within 7 or 30 days (expired ones included).',
    labelNames: ['within'] as const,
    registers,
    collect() {
      const now = Date.now();
      const left = [...view.records().values()].map((r) => Date.parse(r.notAfter) - now);
      this.set({ within: '7d' }, left.filter((ms) => ms <= 7 * DAY_MS).length);
      this.set({ within: '30d' }, left.filter((ms) => ms <= 30 * DAY_MS).length);
    },
  });
  new Gauge({
    name: `${PREFIX}certificates`,
    help: 'Certificate entries by state: serving, or refused (their latest version failed validation; a previous version may still serve).',
    labelNames: ['state'] as const,
    registers,
    collect() {
      this.set({ state: 'serving' }, view.records().size);
      this.set({ state: 'refused' }, view.refusals().size);
    },
  });
  return new Counter({
    name: `${PREFIX}reloads_total`,
    help: 'Reloads of the config and certificate store, by trigger (start, watch, rescan, signal, admin, store) and result (ok, refused: something was refused and kept its previous version, partial: a worker failed to apply).',
    labelNames: ['trigger', 'result'] as const,
    registers,
  });
}

export interface ExpiryWarning {
  readonly name: string;
  readonly days: number;
  readonly notAfter: string;
}

/**
 * The warnings due now: for each certificate, the tightest threshold it has
 * crossed and not yet been warned about. `warned` (name → threshold already
 * logged for that certificate version) is updated in place; `complete`:
 * `records` is every certificate, so versions not among them are forgotten.
 */
export function dueExpiryWarnings(records: Iterable<CertificateRecord>, now: Date, warned: Map<string, number>, complete = true): ExpiryWarning[] {
  const due: ExpiryWarning[] = [];
  const seen = new Set<string>();
  for (const record of records) {
    const key = `${record.name}\0${record.serial}`;
    seen.add(key);
    const daysLeft = (Date.parse(record.notAfter) - now.getTime()) / DAY_MS;
    const crossed = EXPIRY_WARNING_DAYS.filter((d) => daysLeft <= d).at(-1);
    if (crossed === undefined) continue;
    const last = warned.get(key);
    if (last !== undefined && last <= crossed) continue;
    warned.set(key, crossed);
    due.push({ name: record.name, days: crossed, notAfter: record.notAfter });
  }
  // Only a look at every certificate knows which versions are gone.
  if (complete) for (const key of warned.keys()) if (!seen.has(key)) warned.delete(key);
  return due;
}
