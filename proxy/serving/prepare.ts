/**
 * Reads what should be served (the config's certificates and the store's
 * entries) and validates whatever changed since the last time, off every
 * handshake path: this runs in the cluster primary (or a worker started on
 * its own) before anything is swapped.
 *
 * Per certificate, a refusal never removes what serves: an entry whose new
 * version is refused keeps its previous version, and the refusal is reported.
 * A refused version is judged once: a later pass that finds the entry as it
 * was (and the issuer pool) carries the refusal over, unless time or the key
 * server may lift it (RETRIED), whether or not a previous version serves.
 * Records come back in the order that settles a name two of them claim (the
 * config's in order, then the store's by name), whatever order their
 * validations finished in.
 * Unchanged entries are recognised by a stat of their files (store: device,
 * inode, size, mtime and ctime of the chain, of its link and of the
 * metadata) or a hash of their text (config), so a rescan of 10,000 entries
 * reads and validates only the ones that moved. An explicit reload (`verify`)
 * also reads and compares the content of every entry whose stat identity is
 * not settled (its files changed less than QUIET_MS before they were last
 * read, where a second change within one tick of the file system's clock
 * could leave the same identity): a change after a settled read moves the
 * ctime, which cannot be set back, so no stat coincidence can hide a change
 * from an operator who asks, and a no-change reload of 100,000 entries
 * costs their stats, not their reads. At start, an entry whose files still
 * have the settled identity recorded beside the kept serving state (kept.ts)
 * is not read at all: its verdict gives the record and its chain stays in
 * the kept pack until something asks for it. A targeted pass (`only`: the
 * entries a watch event or an admin PUT named) looks at those entries alone
 * and answers for them alone (and the config's certificates): every other
 * record carries over untouched, so a one-name change in a store of 100,000
 * costs a few stats and one read, not a listing nor a copy of 100,000
 * records. A store directory other than the one the last pass listed
 * (another device and inode at its path) is looked at whole, whatever the
 * trigger named, and refused when it holds no certificate while entries
 * served from the store (certs/store-dir.ts).
 *
 * At start (nothing served yet), a store entry whose files are refused serves
 * the version the last run served (`lastServed`, last-served.ts) once the
 * rules that time and the key server decide pass again: what a running proxy
 * does for a refused replacement, kept across a restart. The refusal is still
 * reported, with a warning that the last served version serves. A fleet's
 * version (one naming its etcd revision) only while the entry is still at
 * the revision this node judged when it last served that version: nothing
 * written since, no entry deleted and written again since.
 *
 * A file changed in the last QUIET_MS may still be being written: it is read
 * until two reads agree (settling-read.ts), and one that keeps changing is
 * left as it serves and named in `unsettled`, to be looked at again.
 */
import { createHash } from 'node:crypto';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { ConfigError } from '../../keyserver/shared/errors.js';
import { CertificateError } from '../certs/errors.js';
import { CertificateStore, type StoreEntry, type StoreEntryRef } from '../certs/store.js';
import { assertStoreNotReplaced, directoryId } from '../certs/store-dir.js';
import type { EntryStorage } from '../store/storage.js';
import { entryCandidate } from '../certs/manage.js';
import { type CertificateCandidate, defaultIssuerPool, type ValidationContext } from '../certs/validate.js';
import { VerdictCache } from '../certs/verdict-cache.js';
import { judgeCertificate, rejudge, verdictContext } from '../certs/verdicts.js';
import type { KeptRow, KeptState } from './kept.js';
import type { ServedVersion } from './last-served.js';
import { type CertificateRecord, recordOfVerdict, type Refusal } from './spec.js';
import { forEachLimited, mapLimited } from './limited.js';
import { asError, type ChainFile, QUIET_MS, readChainFile, SETTLE_LIMIT_MS, SettlingRead, settle } from './settling-read.js';

/** Validations in flight at once: each asks the key server for a public key. */
const VALIDATION_CONCURRENCY = 16;
/** Refusals that can lift with no change to the files: their entries are read again by the next pass. */
const RETRIED: ReadonlySet<Refusal['reason']> = new Set(['not_yet_valid', 'key_unknown']);
/** SeenStat.inputId of a store entry refused, unread, for having the name of a config certificate. */
const CONFIG_NAME = 'config-name';
/** Store files read at once off the main thread (libuv's pool has 4 threads by default). */
const READ_CONCURRENCY = 32;

export interface PreparedServing {
  /** Every record to serve; after a targeted pass, only the config's and the named entries' (the rest of `previous` carries over). */
  readonly records: ReadonlyMap<string, CertificateRecord>;
  readonly refused: readonly Refusal[];
  readonly warnings: readonly { readonly name: string; readonly message: string }[];
  /** Names whose record is new or changed since `previous`. */
  readonly changed: readonly string[];
  /** Every entry present now, in the config or the store, served or not; after a targeted pass, of the config and the named entries only. */
  readonly present: ReadonlySet<string>;
  /** Entries whose files kept changing while read: nothing was concluded, look again soon. */
  readonly unsettled: readonly string[];
  /** Chain paths to watch beyond the store directory: the config's chains and the store's symlinks (proxy/serving/watch.ts). */
  readonly followed: readonly string[];
  /** Entries whose record was made from the kept state's row (`kept`), unread. */
  readonly fromKept: ReadonlySet<string>;
  /** Only the entries of `only` were looked at (false: every entry was, `records` and `present` speak for all). */
  readonly targeted: boolean;
  /** Which directory the store's path named as this pass listed it (certs/store-dir.ts); undefined: none, or not a directory store. */
  readonly storeDirId: string | undefined;
  /** The identity (statId) of each store entry this pass refused, as read: in a fleet, its etcd revision (last-served.ts). */
  readonly refusedAt: ReadonlyMap<string, string>;
}

/** What a pass last saw of a store entry's files. */
export interface SeenStat {
  readonly statId: string;
  /** The input id of the version read with this identity. */
  readonly inputId: string;
  /** The files had not changed for QUIET_MS before they were read: any later change moves the identity. */
  readonly settled: boolean;
  /**
   * This version was refused, with no version of the entry serving, under the issuer pool of this fingerprint: a
   * later pass that finds the same identity (and pool) carries the refusal over, neither judging the entry again nor
   * reporting it again. Not for a refusal time or the key server may lift (RETRIED): those are judged every pass.
   */
  readonly refused?: { readonly issuers: string; readonly refusal: Refusal };
  /**
   * A directory entry's read failed with this message (a chain over 1 MiB, a link loop, metadata that is not JSON):
   * each pass reads it again (a directory's permissions or a mount can change what the same file reads), and says
   * the refusal again only when the file or the failure changes. Said at every rescan, it logged an error and counted
   * a refused reload every 30 s for as long as the file stayed.
   */
  readonly unreadable?: string;
}

export interface PrepareOptions {
  readonly config: ProxyConfig;
  readonly store: EntryStorage;
  readonly previous: ReadonlyMap<string, CertificateRecord>;
  readonly validation: ValidationContext;
  /**
   * Store entries seen unchanged since their record was made, by a stat of
   * their files; updated in place. Owned by one caller: not shared between
   * concurrent prepares.
   */
  readonly seen: Map<string, SeenStat>;
  /**
   * The config's certificates refused as they are, by name: the input (chain text) and issuer pool judged, and the
   * refusal (or the read's failure) said. A later pass that finds the same input carries the refusal over, neither
   * judging nor reporting it again (RETRIED ones aside): each rescan logged it again. Updated in place; owned by one caller.
   */
  readonly refusedConfig?: Map<string, { readonly inputId: string; readonly issuers: string; readonly refusal: Refusal }>;
  /** Read and compare the content of every store entry whose stat identity is not settled (SIGHUP, the admin API). */
  readonly verify?: boolean;
  /** The serving state kept by the last run (kept.ts): entries whose files still match are not read. */
  readonly kept?: KeptState;
  /** Verdicts remembered by content hash (certs/verdicts.ts): an input judged before is not parsed again. Default: none kept. */
  readonly verdicts?: VerdictCache;
  /**
   * Look only at these store entries (a file store's watch named them):
   * every other record of `previous` carries over (not in `records`), and
   * `followed` of the previous pass carries over. Ignored for stores that
   * cannot be asked about single entries (the fleet's store).
   */
  readonly only?: {
    readonly names: ReadonlySet<string>;
    readonly followed: readonly string[];
  };
  /**
   * The store directory's identity when the last pass listed it (PreparedServing.storeDirId). Another directory in
   * its place is looked at whole (`only` ignored), and refused when it holds no certificate while entries were
   * served from the store (certs/store-dir.ts).
   */
  readonly storeDirId?: string | undefined;
  /** At start: the version of a store entry the last run served (last-served.ts), for an entry whose files are refused. */
  readonly lastServed?: (name: string) => ServedVersion | undefined;
}

interface Pending {
  readonly candidate: CertificateCandidate;
  readonly from: CertificateRecord['from'];
  readonly inputId: string;
  /** Taken from the kept state: its verdict is known and its chain is in the kept pack. */
  readonly kept?: KeptRow;
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

  const configReads = new Map<string, { entry: ProxyConfig['certificates'][number]; file: SettlingRead<ChainFile> }>();
  for (const entry of config.certificates) {
    configReads.set(entry.name, {
      entry,
      file: new SettlingRead(
        () => readChainFile(entry.chain, entry.name),
        (f) => sha256(f.text),
        (f) => f.changedAtMs,
      ),
    });
  }

  const listed = new Set<string>();
  const storeReads = new Map<string, { statId: string; chainPath: string; file: SettlingRead<StoreEntry>; settled: boolean }>();
  // Which directory is listed: another one than the last pass's is looked at whole, whatever the trigger named.
  const storeDirId = store instanceof CertificateStore ? directoryId(store.dir) : undefined;
  const only = options.only !== undefined && store instanceof CertificateStore && storeDirId === options.storeDirId ? options.only : undefined;
  const followed = only === undefined ? config.certificates.map((c) => c.chain) : [...only.followed];
  const verdicts = options.verdicts ?? new VerdictCache({ file: null, warn: () => {} });
  const issuers = (options.validation.issuers ?? defaultIssuerPool()).fingerprint;
  verdicts.useContext(verdictContext(issuers));
  /** Store entries refused as they are by an earlier pass (SeenStat.refused): not judged again, nor reported again. */
  const carriedRefusals = new Map<string, Refusal>();
  /** A refusal said before, carried over unsaid; what served of the entry serves on. */
  const carryOver = (refusal: Refusal): void => {
    carriedRefusals.set(refusal.name, refusal);
    const kept = previous.get(refusal.name);
    if (kept !== undefined) records.set(refusal.name, kept);
  };
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
        carriedRefusals.set(ref.name, last.refused.refusal);
        continue;
      }
      const refusal: Refusal = {
        name: ref.name,
        source: ref.chainPath,
        reason: 'names',
        message: `store entry '${ref.name}' has the name of a certificate in ${config.source}; rename one of them`,
      };
      refused.push(refusal);
      seen.set(ref.name, { statId: ref.statId, inputId: CONFIG_NAME, settled: true, refused: { issuers, refusal } });
      continue;
    }
    const kept = previous.get(ref.name);
    const last = seen.get(ref.name);
    if (kept !== undefined && kept.from === 'store' && last?.statId === ref.statId && last.unreadable === undefined && (last.settled || !options.verify)) {
      records.set(ref.name, kept);
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
      carriedRefusals.set(ref.name, last.refused.refusal);
      continue;
    }
    const row = options.kept?.rows.get(ref.name);
    if (kept === undefined && row !== undefined && row.statId === ref.statId && verdicts.get(row.inputId) !== undefined) {
      seen.set(ref.name, { statId: ref.statId, inputId: row.inputId, settled: true });
      pending.push({ candidate: { name: ref.name, chainText: '', source: ref.chainPath }, from: 'store', inputId: row.inputId, kept: row });
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
      carriedRefusals.set(file.name, last.refused.refusal);
      continue;
    }
    const { message } = new CertificateError(
      file.chainPath,
      'its name is not a certificate entry name (1-64 letters, digits, _ . -, not starting with a dot); rename the file to serve it',
      { entry: file.name },
    );
    const refusal: Refusal = { name: file.name, source: file.chainPath, reason: 'unreadable', message };
    refused.push(refusal);
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
    storeReads.set(ref.name, { statId: ref.statId, chainPath: ref.chainPath, file, settled: readFrom - ref.changedAtMs >= QUIET_MS });
  }
  if (only === undefined) {
    for (const name of seen.keys()) if (!listed.has(name)) seen.delete(name);
  } else for (const name of only.names) if (!listed.has(name)) seen.delete(name);

  const unsettled = await settle([...[...configReads.values()].map((r) => r.file), ...[...storeReads.values()].map((r) => r.file)]);
  const warnings: { name: string; message: string }[] = [];
  const leave = (name: string, what: string): void => {
    warnings.push({ name, message: `${what} kept changing for ${SETTLE_LIMIT_MS / 1000} s while read; it is read again once it stops` });
    const kept = previous.get(name);
    if (kept !== undefined) records.set(name, kept);
  };

  for (const [name, { entry, file }] of configReads) {
    if (unsettled.has(file)) {
      leave(name, entry.chain);
      continue;
    }
    const read = file.value;
    const was = options.refusedConfig?.get(name);
    if (read instanceof Error) {
      const message = read instanceof CertificateError ? read.message : `cannot read ${entry.chain}: ${(read as NodeJS.ErrnoException).code ?? 'error'}`;
      // Failing as it did: said once. Read again by each pass all the same, so a file put back serves.
      const inputId = `unreadable:${sha256(message)}`;
      if (was?.inputId === inputId) {
        carryOver(was.refusal);
        continue;
      }
      refuse(name, entry.chain, 'unreadable', message);
      options.refusedConfig?.set(name, { inputId, issuers, refusal: { name, source: entry.chain, reason: 'unreadable', message } });
      continue;
    }
    const inputId = `config:${sha256(read.text)}`;
    const kept = previous.get(name);
    if (kept?.inputId === inputId) records.set(name, kept);
    else if (was?.inputId === inputId && was.issuers === issuers) carryOver(was.refusal);
    else pending.push({ candidate: { name, chainText: read.text, source: entry.chain }, from: 'config', inputId });
  }
  for (const name of options.refusedConfig?.keys() ?? []) if (!configReads.has(name)) options.refusedConfig?.delete(name);

  for (const [name, { statId, chainPath, file, settled }] of storeReads) {
    if (unsettled.has(file)) {
      leave(name, chainPath);
      continue;
    }
    const read = file.value;
    if (read instanceof Error) {
      const refusal = { name, source: chainPath, reason: 'unreadable' as const, message: read.message };
      const last = seen.get(name);
      if (store instanceof CertificateStore && last?.unreadable === read.message && last.statId === statId) {
        // Read again and failing as it did, its file unchanged: said once (SeenStat.unreadable); what served serves.
        carryOver(refusal);
        continue;
      }
      refuse(name, chainPath, 'unreadable', read.message);
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
    if (kept?.inputId === inputId) records.set(name, kept);
    else pending.push({ candidate, from: 'store', inputId });
  }

  const changed: string[] = [];
  const fromKept = new Set<string>();
  // Thousands of entries share a few keys: the key server is asked once per key id per pass.
  const spkis = new Map<string, Promise<Buffer | undefined>>();
  const validation: ValidationContext = {
    ...options.validation,
    keyserverSpki: (keyId, leafSpki) => {
      let held = spkis.get(keyId);
      if (held === undefined) {
        held = options.validation.keyserverSpki(keyId, leafSpki);
        spkis.set(keyId, held);
      }
      return held;
    },
  };
  await forEachLimited(pending, VALIDATION_CONCURRENCY, async ({ candidate, from, inputId, kept }) => {
    try {
      const known = kept === undefined ? undefined : verdicts.get(inputId);
      const { verdict, warnings: found } =
        known === undefined
          ? await judgeCertificate(candidate, inputId, validation, verdicts)
          : { verdict: known, warnings: await rejudge(candidate, known, validation) };
      records.set(
        candidate.name,
        recordOfVerdict(verdict, kept === undefined ? candidate : { ...candidate, chainText: kept.chain }, from, inputId, validation.now),
      );
      if (kept !== undefined) fromKept.add(candidate.name);
      changed.push(candidate.name);
      for (const message of found) warnings.push({ name: candidate.name, message });
    } catch (err) {
      if (!(err instanceof CertificateError)) throw err;
      refuse(candidate.name, candidate.source, err.reason, err.message);
      // A refused store entry is looked at again when its files change, not on every rescan; but a refusal that
      // time or the key server lifts (a renewal dated a moment ahead of this clock, a key imported after its
      // chain) is looked at again by the next pass: else the previous version served on until it expired.
      if (from === 'config' && !RETRIED.has(err.reason)) {
        const refusal = { name: candidate.name, source: candidate.source, reason: err.reason, message: err.message };
        options.refusedConfig?.set(candidate.name, { inputId, issuers, refusal });
      }
      if (from === 'store' && RETRIED.has(err.reason)) seen.delete(candidate.name);
      else if (from === 'store' && kept === undefined && !previous.has(candidate.name)) {
        // Nothing of it serves, so the kept record does not stand for it: the refusal itself is remembered.
        const last = seen.get(candidate.name);
        const refusal = { name: candidate.name, source: candidate.source, reason: err.reason, message: err.message };
        if (last?.inputId === inputId) seen.set(candidate.name, { ...last, refused: { issuers, refusal } });
      }
    }
  });

  const refusedAt = new Map<string, string>();
  for (const { name } of refused) {
    const read = storeReads.get(name);
    if (read !== undefined) refusedAt.set(name, read.statId);
  }
  await serveLastOnRefusal(options, refused, refusedAt, records, validation, verdicts, { changed, warnings });

  const left = [...configReads, ...storeReads].filter(([, r]) => unsettled.has(r.file)).map(([name]) => name);
  const sniDefault = config.sni.default;
  const carried = (name: string): boolean => only !== undefined && !only.names.has(name) && previous.get(name)?.from === 'store';
  if (sniDefault !== null && !records.has(sniDefault) && !carried(sniDefault)) {
    // Present but not served (at start, with nothing before it to keep): say why, not that it is missing.
    const refusal = refused.find((r) => r.name === sniDefault) ?? carriedRefusals.get(sniDefault);
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

/**
 * At start, a store entry whose files were refused serves the version the
 * last run served, judged again: the validity window and the key server's
 * key (from its verdict when one is remembered, else in full), so a version
 * expired since or whose key was deleted is not served. Not for a name the
 * config's certificates hold (refused for it, or now in the config), nor for
 * an entry gone from the store (it is not listed, so not refused); nor, for a
 * fleet's version, once the entry's etcd revision is another than the one
 * logged with it (`refusedAt`: this pass's).
 */
async function serveLastOnRefusal(
  options: PrepareOptions,
  refused: readonly Refusal[],
  refusedAt: ReadonlyMap<string, string>,
  records: Map<string, CertificateRecord>,
  validation: ValidationContext,
  verdicts: VerdictCache,
  into: { changed: string[]; warnings: { name: string; message: string }[] },
): Promise<void> {
  const { lastServed } = options;
  if (lastServed === undefined) return;
  const fallbacks: { refusal: Refusal; last: ServedVersion }[] = [];
  for (const refusal of refused) {
    if (refusal.reason === 'names' || records.has(refusal.name) || options.previous.has(refusal.name)) continue;
    if (options.config.certificates.some((c) => c.name === refusal.name)) continue;
    const last = lastServed(refusal.name);
    if (last === undefined || (last.revision !== undefined && last.revision !== refusedAt.get(refusal.name))) continue;
    fallbacks.push({ refusal, last });
  }
  await forEachLimited(fallbacks, VALIDATION_CONCURRENCY, async ({ refusal, last }) => {
    const { name } = refusal;
    // The version as it served: its validated chain, pinned to the names it served and its key id.
    const candidate: CertificateCandidate = { name, chainText: last.chainPem, source: refusal.source, names: last.names, keyId: last.keyId };
    const inputId = verdicts.get(last.inputId) !== undefined ? last.inputId : storeInputId(candidate);
    try {
      const { verdict, warnings } = await judgeCertificate(candidate, inputId, validation, verdicts);
      const record = recordOfVerdict(verdict, candidate, 'store', inputId, validation.now);
      records.set(name, record);
      into.changed.push(name);
      for (const message of warnings) into.warnings.push({ name, message });
      into.warnings.push({
        name,
        message: `its files were refused (${refusal.reason}): the version the last run served (serial ${record.serial}) serves until they change`,
      });
    } catch (err) {
      // The last served version fails now too (expired, its key gone): the refusal stands alone.
      if (!(err instanceof CertificateError)) throw err;
    }
  });
}

/** Whether any of `previous` was read from the store (not the config file). */
export function servesFromStore(previous: ReadonlyMap<string, CertificateRecord>): boolean {
  for (const record of previous.values()) if (record.from === 'store') return true;
  return false;
}

/** What identifies a store entry's input: its chain text and the names and key id it pins (a verdict's key, certs/verdicts.ts). */
function storeInputId(candidate: CertificateCandidate): string {
  return `store:${sha256(`${candidate.chainText}\0${JSON.stringify(candidate.names ?? null)}\0${candidate.keyId ?? ''}`)}`;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
