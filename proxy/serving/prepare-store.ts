/**
 * The certificate store's entries in a preparing pass (prepare.ts): listed
 * (the whole directory, or only the entries a watch named), each entry
 * recognised unchanged by a stat of its files (device, inode, size, mtime
 * and ctime of the chain, of its link and of the metadata: SeenStat), taken
 * from the kept state unread when its files still have the identity kept
 * beside it (kept.ts), carried over refused when a refusal was said of it as
 * it is, and otherwise read, many at once off the main thread, until two
 * reads agree (settling-read.ts). Apart from the config's part
 * (prepare-config.ts) because a store of 100,000 entries must cost their
 * stats, not their reads.
 *
 * A store directory other than the one the last pass listed (another device
 * and inode at its path) is looked at whole, whatever the trigger named, and
 * refused when it holds no certificate while entries served from the store
 * (certs/store-dir.ts).
 */
import { CertificateError } from '../certs/errors.js';
import { entryCandidate } from '../certs/manage.js';
import { CertificateStore, type StoreEntry, type StoreEntryRef } from '../certs/store.js';
import { assertStoreNotReplaced, directoryId } from '../certs/store-dir.js';
import type { VerdictCache } from '../certs/verdict-cache.js';
import { mapLimited } from './limited.js';
import { type PassTally, storeInputId } from './pass-tally.js';
import type { PrepareOptions } from './prepare-types.js';
import type { Refusal } from './spec.js';
import { asError, QUIET_MS, type Settling, SettlingRead } from './settling-read.js';
import type { CertificateRecord } from './spec.js';

/** SeenStat.inputId of a store entry refused, unread, for having the name of a config certificate. */
const CONFIG_NAME = 'config-name';
/** Store files read at once off the main thread (libuv's pool has 4 threads by default). */
const READ_CONCURRENCY = 32;

export type StoreReads = Map<string, { statId: string; chainPath: string; file: SettlingRead<StoreEntry>; settled: boolean }>;

export interface StoreListing {
  /** Every entry listed (served or not, refused or not); of the named entries only when `only` holds. */
  readonly listed: ReadonlySet<string>;
  /** The entries read this pass, to conclude once settled. */
  readonly reads: StoreReads;
  /** The named entries this pass looks at alone; undefined: the whole store. */
  readonly only: PrepareOptions['only'];
  readonly followed: string[];
  readonly storeDirId: string | undefined;
}

/** Lists the store and reads what changed; what did not is concluded into `tally` already. */
export async function listStore(options: PrepareOptions, issuers: string, verdicts: VerdictCache, tally: PassTally): Promise<StoreListing> {
  const { config, store, previous, seen } = options;
  const listed = new Set<string>();
  const reads: StoreReads = new Map();
  // Which directory is listed: another one than the last pass's is looked at whole, whatever the trigger named.
  const storeDirId = store instanceof CertificateStore ? directoryId(store.dir) : undefined;
  const only = options.only !== undefined && store instanceof CertificateStore && storeDirId === options.storeDirId ? options.only : undefined;
  const followed = only === undefined ? config.certificates.map((c) => c.chain) : [...only.followed];
  const fromStore = store instanceof CertificateStore && servesFromStore(previous);
  // A directory gone since entries were served from it is refused whole (the reload keeps everything), not listed as empty.
  if (fromStore) store.assertPresent();
  const { refs, misnamed } =
    store instanceof CertificateStore
      ? only !== undefined
        ? { refs: store.refs(only.names), misnamed: store.misnamed(only.names) }
        : store.listing()
      : { refs: store.list(), misnamed: [] };
  // So is an empty directory put in its place (rm -rf certs && mkdir certs): the same directory emptied is taken.
  if (fromStore && only === undefined && refs.length === 0) assertStoreNotReplaced(store.dir, options.storeDirId, storeDirId);
  const toRead: StoreEntryRef[] = [];
  for (const ref of refs) {
    listed.add(ref.name);
    if (ref.link) followed.push(ref.chainPath);
    if (config.certificates.some((c) => c.name === ref.name)) {
      // Said once per version of its files, as any refusal (SeenStat.refused): at the top of every pass, it was
      // logged and counted as a refused reload again by each rescan. The config's certificate serves either way.
      const last = seen.get(ref.name);
      if (last?.inputId === CONFIG_NAME && last.refused !== undefined && last.statId === ref.statId) {
        tally.carriedRefusals.set(ref.name, last.refused.refusal);
        continue;
      }
      const refusal: Refusal = {
        name: ref.name,
        source: ref.chainPath,
        reason: 'names',
        message: `store entry '${ref.name}' has the name of a certificate in ${config.source}; rename one of them`,
      };
      tally.refused.push(refusal);
      seen.set(ref.name, { statId: ref.statId, inputId: CONFIG_NAME, settled: true, refused: { issuers, refusal } });
      continue;
    }
    const kept = previous.get(ref.name);
    const last = seen.get(ref.name);
    // Unless these files were refused under another issuer pool: a renewal refused incomplete_chain while the old
    // version serves is judged again once certStore.intermediates changes, else the old one served on until it expired.
    if (
      kept !== undefined &&
      kept.from === 'store' &&
      last?.statId === ref.statId &&
      last.unreadable === undefined &&
      (last.refused === undefined || last.refused.issuers === issuers) &&
      (last.settled || !options.verify)
    ) {
      tally.records.set(ref.name, kept);
      continue;
    }
    // Refused as it is, with nothing of it serving: judging it again would refuse it again. In a fleet every pass looks
    // at every entry, so thousands of refused entries were judged (and logged) again at each change anywhere.
    // Not a refusal for the name of a config certificate the config no longer holds (handled above while it does).
    if (
      kept === undefined &&
      last?.refused?.issuers === issuers &&
      last.inputId !== CONFIG_NAME &&
      last.statId === ref.statId &&
      (last.settled || !options.verify)
    ) {
      tally.carriedRefusals.set(ref.name, last.refused.refusal);
      continue;
    }
    const row = options.kept?.rows.get(ref.name);
    if (kept === undefined && row !== undefined && row.statId === ref.statId && verdicts.get(row.inputId) !== undefined) {
      seen.set(ref.name, { statId: ref.statId, inputId: row.inputId, settled: true });
      tally.pending.push({ candidate: { name: ref.name, chainText: '', source: ref.chainPath }, from: 'store', inputId: row.inputId, kept: row });
      continue;
    }
    toRead.push(ref);
  }
  // A `.pem` file whose name is no entry name was never served, and never said: refused by its file, once per version
  // of it (its identity), as the fleet's store refuses such a key (store/etcd-entries.ts). Nothing of it can serve.
  for (const file of misnamed) {
    listed.add(file.name);
    const last = seen.get(file.name);
    if (last?.refused !== undefined && last.statId === file.statId) {
      tally.carriedRefusals.set(file.name, last.refused.refusal);
      continue;
    }
    const { message } = new CertificateError(
      file.chainPath,
      'its name is not a certificate entry name (1-64 letters, digits, _ . -, not starting with a dot); rename the file to serve it',
      { entry: file.name },
    );
    const refusal: Refusal = { name: file.name, source: file.chainPath, reason: 'unreadable', message };
    tally.refused.push(refusal);
    seen.set(file.name, { statId: file.statId, inputId: '', settled: true, refused: { issuers, refusal } });
  }
  // A directory's entries are first read off the main thread, many at once (a start reads every one of them).
  // A read that starts QUIET_MS after the files' last change is settled (SeenStat).
  const readFrom = Date.now();
  const firsts =
    store instanceof CertificateStore
      ? await mapLimited(toRead, READ_CONCURRENCY, (ref) => store.readAsync(ref.name, ref.metaMtimeMs !== undefined).catch(asError))
      : [];
  for (const [i, ref] of toRead.entries()) {
    // Two reads agree when what would be judged agrees: the fingerprint is the input id (one hash per read).
    // The listing says whether there is a metadata file: none is opened (and fails) per entry without one.
    const withMeta = ref.metaMtimeMs !== undefined;
    const file = new SettlingRead(
      () => (store instanceof CertificateStore ? store.read(ref.name, withMeta) : store.read(ref.name)),
      (e) => storeInputId(entryCandidate(e)),
      () => ref.changedAtMs,
      firsts[i],
    );
    reads.set(ref.name, { statId: ref.statId, chainPath: ref.chainPath, file, settled: readFrom - ref.changedAtMs >= QUIET_MS });
  }
  if (only === undefined) {
    for (const name of seen.keys()) if (!listed.has(name)) seen.delete(name);
  } else for (const name of only.names) if (!listed.has(name)) seen.delete(name);
  return { listed, reads, only, followed, storeDirId };
}

/** Concludes each store entry's settled read into `tally`: kept, refused (said once per version), or left to judge. */
export function concludeStoreReads(reads: StoreReads, unsettled: ReadonlySet<Settling>, options: PrepareOptions, issuers: string, tally: PassTally): void {
  const { store, previous, seen } = options;
  for (const [name, { statId, chainPath, file, settled }] of reads) {
    if (unsettled.has(file)) {
      tally.leave(name, chainPath);
      continue;
    }
    const read = file.value;
    if (read instanceof Error) {
      const refusal = { name, source: chainPath, reason: 'unreadable' as const, message: read.message };
      const last = seen.get(name);
      if (store instanceof CertificateStore && last?.unreadable === read.message && last.statId === statId) {
        // Read again and failing as it did, its file unchanged: said once (SeenStat.unreadable); what served serves.
        tally.carryOver(refusal);
        continue;
      }
      tally.refuse(name, chainPath, 'unreadable', read.message);
      // A fleet's entry reads the same at the same revision (its identity): its refusal is carried over as a judged
      // one is, not read and reported again by every pass. A file may read otherwise with the same identity (a
      // directory's permissions changed, a link's target directory mounted): read again, said again if it fails otherwise.
      if (!(store instanceof CertificateStore)) seen.set(name, { statId, inputId: '', settled, refused: { issuers, refusal } });
      else seen.set(name, { statId, inputId: '', settled, unreadable: read.message });
      continue;
    }
    const candidate = entryCandidate(read);
    const inputId = file.print;
    seen.set(name, { statId, inputId, settled });
    const kept = previous.get(name);
    if (kept?.inputId === inputId) tally.records.set(name, kept);
    else tally.pending.push({ candidate, from: 'store', inputId });
  }
}

/** Whether any of `previous` was read from the store (not the config file). */
export function servesFromStore(previous: ReadonlyMap<string, CertificateRecord>): boolean {
  for (const record of previous.values()) if (record.from === 'store') return true;
  return false;
}
