/**
 * Reads what should be served (the config's certificates and the store's
 * entries) and validates whatever changed since the last time, off every
 * handshake path: this runs in the cluster primary (or a worker started on
 * its own) before anything is swapped.
 *
 * Per certificate, a refusal never removes what serves: an entry whose new
 * version is refused keeps its previous version, and the refusal is reported.
 * Unchanged entries are recognised by a stat of their files (store) or a hash
 * of their text (config), so a rescan of 10,000 entries reads and validates
 * only the ones that moved.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { CertificateError, ConfigError } from '../../keyserver/errors.js';
import type { CertificateStore, StoreEntryRef } from '../certs/store.js';
import { entryCandidate } from '../certs/manage.js';
import { type CertificateCandidate, validateCertificate, type ValidationContext } from '../certs/validate.js';
import { type CertificateRecord, recordOf, type Refusal } from './spec.js';

/** Validations in flight at once: each asks the key server for a public key. */
const VALIDATION_CONCURRENCY = 16;

export interface PreparedServing {
  readonly records: ReadonlyMap<string, CertificateRecord>;
  readonly refused: readonly Refusal[];
  readonly warnings: readonly { readonly name: string; readonly message: string }[];
  /** Names whose record is new or changed since `previous`. */
  readonly changed: readonly string[];
  /** Every entry present now, in the config or the store, served or not. */
  readonly present: ReadonlySet<string>;
}

export interface PrepareOptions {
  readonly config: ProxyConfig;
  readonly store: CertificateStore;
  readonly previous: ReadonlyMap<string, CertificateRecord>;
  readonly validation: ValidationContext;
  /**
   * Store entries seen unchanged since their record was made, by a stat of
   * their files; updated in place. Owned by one caller: not shared between
   * concurrent prepares.
   */
  readonly seen: Map<string, string>;
}

interface Pending {
  readonly candidate: CertificateCandidate;
  readonly from: CertificateRecord['from'];
  readonly inputId: string;
}

export async function prepareServing(options: PrepareOptions): Promise<PreparedServing> {
  const { config, store, previous, seen } = options;
  const records = new Map<string, CertificateRecord>();
  const refused: Refusal[] = [];
  const pending: Pending[] = [];
  const refuse = (name: string, source: string, reason: Refusal['reason'], message: string): void => {
    refused.push({ name, source, reason, message });
    const kept = previous.get(name);
    if (kept !== undefined) records.set(name, kept);
  };

  for (const entry of config.certificates) {
    let text: string;
    try {
      text = readFileSync(entry.chain, 'utf8');
    } catch (err) {
      refuse(entry.name, entry.chain, 'unreadable', `cannot read ${entry.chain}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      continue;
    }
    const inputId = `config:${sha256(text)}`;
    const kept = previous.get(entry.name);
    if (kept?.inputId === inputId) records.set(entry.name, kept);
    else pending.push({ candidate: { name: entry.name, chainText: text, source: entry.chain }, from: 'config', inputId });
  }

  const listed = new Set<string>();
  for (const ref of store.list()) {
    listed.add(ref.name);
    if (config.certificates.some((c) => c.name === ref.name)) {
      refuse(ref.name, ref.chainPath, 'names', `store entry '${ref.name}' has the name of a certificate in ${config.source}; rename one of them`);
      continue;
    }
    const statId = storeStatId(ref);
    const kept = previous.get(ref.name);
    if (kept !== undefined && kept.from === 'store' && seen.get(ref.name) === statId) {
      records.set(ref.name, kept);
      continue;
    }
    let candidate: CertificateCandidate;
    try {
      candidate = entryCandidate(store.read(ref.name));
    } catch (err) {
      refuse(ref.name, ref.chainPath, 'unreadable', (err as Error).message);
      continue;
    }
    const inputId = `store:${sha256(`${candidate.chainText}\0${JSON.stringify(candidate.names ?? null)}\0${candidate.keyId ?? ''}`)}`;
    seen.set(ref.name, statId);
    if (kept?.inputId === inputId) records.set(ref.name, kept);
    else pending.push({ candidate, from: 'store', inputId });
  }
  for (const name of seen.keys()) if (!listed.has(name)) seen.delete(name);

  const warnings: { name: string; message: string }[] = [];
  const changed: string[] = [];
  await forEachLimited(pending, VALIDATION_CONCURRENCY, async ({ candidate, from, inputId }) => {
    try {
      const { certificate, warnings: found } = await validateCertificate(candidate, options.validation);
      records.set(candidate.name, recordOf(certificate, from, inputId, options.validation.now));
      changed.push(candidate.name);
      for (const message of found) warnings.push({ name: candidate.name, message });
    } catch (err) {
      if (!(err instanceof CertificateError)) throw err;
      refuse(candidate.name, candidate.source, err.reason, err.message);
      // A refused store entry is looked at again when its files change, not on every rescan.
    }
  });

  const sniDefault = config.sni.default;
  if (sniDefault !== null && !records.has(sniDefault)) {
    throw new ConfigError(config.source, 'sni.default', `names certificate '${sniDefault}', which is neither loaded from certificates nor in the store (${store.dir})`);
  }
  const present = new Set([...config.certificates.map((c) => c.name), ...listed]);
  return { records, refused, warnings, changed, present };
}

function storeStatId(ref: StoreEntryRef): string {
  return `${ref.mtimeMs}/${ref.size}/${ref.metaMtimeMs ?? 'none'}`;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

async function forEachLimited<T>(items: readonly T[], limit: number, run: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await run(items[next++]!);
  });
  await Promise.all(lanes);
}
