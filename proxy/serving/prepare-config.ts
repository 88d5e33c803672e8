/**
 * The config file's certificates in a preparing pass (prepare.ts): each
 * chain file read (until two reads agree, settling-read.ts), then either
 * kept (same text as what serves), carried over refused (same text, or the
 * same failure to read, as a refusal said before: each rescan logged it
 * again), or left to judge (prepare-judge.ts). Apart from the store's part
 * (prepare-store.ts) because a config certificate is recognised by a hash of
 * its text, not by a stat of its files.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { CertificateError } from '../certs/errors.js';
import { type PassTally, sha256 } from './pass-tally.js';
import type { PrepareOptions } from './prepare-types.js';
import { type ChainFile, readChainFile, SettlingRead, type Settling } from './settling-read.js';

export type ConfigReads = Map<string, { entry: ProxyConfig['certificates'][number]; file: SettlingRead<ChainFile> }>;

/** The first read of every config certificate's chain file (again later, by `settle`, for one changed recently). */
export function readConfigCertificates(config: ProxyConfig): ConfigReads {
  const reads: ConfigReads = new Map();
  for (const entry of config.certificates) {
    reads.set(entry.name, {
      entry,
      file: new SettlingRead(
        () => readChainFile(entry.chain, entry.name),
        (f) => sha256(f.text),
        (f) => f.changedAtMs,
      ),
    });
  }
  return reads;
}

/** Concludes each config certificate's settled read into `tally`; forgets refusals of certificates the config no longer holds. */
export function concludeConfigReads(reads: ConfigReads, unsettled: ReadonlySet<Settling>, options: PrepareOptions, issuers: string, tally: PassTally): void {
  for (const [name, { entry, file }] of reads) {
    if (unsettled.has(file)) {
      tally.leave(name, entry.chain);
      continue;
    }
    const read = file.value;
    const was = options.refusedConfig?.get(name);
    if (read instanceof Error) {
      const message = read instanceof CertificateError ? read.message : `cannot read ${entry.chain}: ${(read as NodeJS.ErrnoException).code ?? 'error'}`;
      // Failing as it did: said once. Read again by each pass all the same, so a file put back serves.
      const inputId = `unreadable:${sha256(message)}`;
      if (was?.inputId === inputId) {
        tally.carryOver(was.refusal);
        continue;
      }
      tally.refuse(name, entry.chain, 'unreadable', message);
      options.refusedConfig?.set(name, { inputId, issuers, refusal: { name, source: entry.chain, reason: 'unreadable', message } });
      continue;
    }
    const inputId = `config:${sha256(read.text)}`;
    const kept = options.previous.get(name);
    if (kept?.inputId === inputId) tally.records.set(name, kept);
    else if (was?.inputId === inputId && was.issuers === issuers) tally.carryOver(was.refusal);
    else tally.pending.push({ candidate: { name, chainText: read.text, source: entry.chain }, from: 'config', inputId });
  }
  for (const name of options.refusedConfig?.keys() ?? []) if (!reads.has(name)) options.refusedConfig?.delete(name);
}
