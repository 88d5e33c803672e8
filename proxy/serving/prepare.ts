/**
 * Reads what should be served (the config's certificates and the store's
 * entries) and validates whatever changed since the last time, off every
 * handshake path: this runs in the cluster primary (or a worker started on
 * its own) before anything is swapped. This file is the pass's order; its
 * parts, one concern each:
 *   prepare-types.ts   what a pass is given, gives back and remembers (SeenStat);
 *   pass-tally.ts      the records and refusals a pass adds up;
 *   prepare-config.ts  the config's certificates, recognised by a hash of their text;
 *   prepare-store.ts   the store's entries, recognised by a stat of their files;
 *   prepare-judge.ts   the verdicts of whatever changed;
 *   serve-last.ts      at start, the last served version of a refused store entry.
 *
 * Per certificate, a refusal never removes what serves: an entry whose new
 * version is refused keeps its previous version, and the refusal is reported.
 * A refused version is judged once: a later pass that finds the entry as it
 * was (and the issuer pool) carries the refusal over, unless time or the key
 * server may lift it (prepare-judge.ts RETRIED), whether or not a previous
 * version serves. Records come back in the order that settles a name two of
 * them claim (the config's in order, then the store's by name), whatever
 * order their validations finished in.
 *
 * Unchanged entries are recognised by a stat of their files (store) or a
 * hash of their text (config), so a rescan of 10,000 entries reads and
 * validates only the ones that moved. An explicit reload (`verify`) also
 * reads and compares the content of every entry whose stat identity is not
 * settled (its files changed less than QUIET_MS before they were last read,
 * where a second change within one tick of the file system's clock could
 * leave the same identity): a change after a settled read moves the ctime,
 * which cannot be set back, so no stat coincidence can hide a change from an
 * operator who asks, and a no-change reload of 100,000 entries costs their
 * stats, not their reads. At start, an entry whose files still have the
 * settled identity recorded beside the kept serving state (kept.ts) is not
 * read at all: its verdict gives the record and its chain stays in the kept
 * pack until something asks for it. A targeted pass (`only`: the entries a
 * watch event or an admin PUT named) looks at those entries alone and
 * answers for them alone (and the config's certificates): every other record
 * carries over untouched, so a one-name change in a store of 100,000 costs a
 * few stats and one read, not a listing nor a copy of 100,000 records.
 *
 * A file changed in the last QUIET_MS may still be being written: it is read
 * until two reads agree (settling-read.ts), and one that keeps changing is
 * left as it serves and named in `unsettled`, to be looked at again.
 */
import { ConfigError } from '../../keyserver/shared/errors.js';
import { defaultIssuerPool } from '../certs/validate.js';
import { VerdictCache } from '../certs/verdict-cache.js';
import { verdictContext } from '../certs/verdicts.js';
import { PassTally } from './pass-tally.js';
import { concludeConfigReads, readConfigCertificates } from './prepare-config.js';
import { judgePending, passValidation } from './prepare-judge.js';
import { concludeStoreReads, listStore } from './prepare-store.js';
import type { PreparedServing, PrepareOptions } from './prepare-types.js';
import { serveLastOnRefusal } from './serve-last.js';
import type { CertificateRecord } from './spec.js';
import { settle } from './settling-read.js';

export type { PreparedServing, PrepareOptions, SeenStat } from './prepare-types.js';
export { servesFromStore } from './prepare-store.js';

export async function prepareServing(options: PrepareOptions): Promise<PreparedServing> {
  const { config, store, previous } = options;
  const tally = new PassTally(previous);
  const configReads = readConfigCertificates(config);
  const verdicts = options.verdicts ?? new VerdictCache({ file: null, warn: () => {} });
  const issuers = (options.validation.issuers ?? defaultIssuerPool()).fingerprint;
  verdicts.useContext(verdictContext(issuers));
  const { listed, reads: storeReads, only, followed, storeDirId } = await listStore(options, issuers, verdicts, tally);

  const unsettled = await settle([...[...configReads.values()].map((r) => r.file), ...[...storeReads.values()].map((r) => r.file)]);
  concludeConfigReads(configReads, unsettled, options, issuers, tally);
  concludeStoreReads(storeReads, unsettled, options, issuers, tally);

  const validation = passValidation(options);
  await judgePending(options, validation, verdicts, issuers, tally);

  const refusedAt = new Map<string, string>();
  for (const { name } of tally.refused) {
    const read = storeReads.get(name);
    if (read !== undefined) refusedAt.set(name, read.statId);
  }
  await serveLastOnRefusal(options, refusedAt, validation, verdicts, tally);

  const { records, refused, warnings, changed, fromKept } = tally;
  const left = [...configReads, ...storeReads].filter(([, r]) => unsettled.has(r.file)).map(([name]) => name);
  const sniDefault = config.sni.default;
  const carried = (name: string): boolean => only !== undefined && !only.names.has(name) && previous.get(name)?.from === 'store';
  if (sniDefault !== null && !records.has(sniDefault) && !carried(sniDefault)) {
    // Present but not served (at start, with nothing before it to keep): say why, not that it is missing.
    const refusal = refused.find((r) => r.name === sniDefault) ?? tally.carriedRefusals.get(sniDefault);
    const why =
      refusal !== undefined
        ? `which was refused: ${refusal.message}`
        : left.includes(sniDefault)
          ? 'whose chain kept changing while read; try again once it is written'
          : `which is neither loaded from certificates nor in the store (${store.dir})`;
    throw new ConfigError(config.source, 'sni.default', `names certificate '${sniDefault}', ${why}`);
  }
  const present = new Set([...config.certificates.map((c) => c.name), ...listed]);
  // In the order that settles a name two certificates claim (the first listed keeps it, state.ts): the config's in
  // order, then the store's by name; not the order their validations finished in, which the key server's answers
  // decide, so that the same files give the same winner on every start and every node of a fleet.
  const ordered = new Map<string, CertificateRecord>();
  for (const name of present) {
    const record = records.get(name);
    if (record !== undefined) ordered.set(name, record);
  }
  return { records: ordered, refused, warnings, changed, present, unsettled: left, followed, fromKept, targeted: only !== undefined, storeDirId, refusedAt };
}
