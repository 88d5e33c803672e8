/**
 * The certificate store: one flat directory, so a single fs.watch sees every
 * change, holding per entry
 *
 *   <dir>/<name>.pem    the full chain as PEM (what a renewal tool writes)
 *   <dir>/<name>.json   optional metadata: names to serve, pinned key id, times
 *
 * and nothing secret: private keys live in the key server. Files are 0644,
 * the directory 0755 when create() makes it. Nothing else makes it but the
 * proxy's start: a write into a directory that is not there is refused
 * (store-write.ts says why).
 *
 * Concurrency: one writer per entry at a time, whatever process it is in
 * (the proxy, the `keyedge cert` command, a renewal hook): each write and
 * removal holds the entry's lock (store-lock.ts), and another writer waits a
 * moment or is refused; unlocked, two writes' renames interleaved and left
 * one's chain beside the other's metadata. Readers never see half a file: every write goes to a temp file
 * in the same directory (a dot name, ignored by list()), is fsync'd, renamed
 * over the target (atomic on POSIX) and the directory fsync'd, so a crash
 * leaves the old or the new file, never a mix (and a dot file, which
 * removeLeftovers() and the entry's next write remove: store-leftovers.ts).
 *
 * Two files cannot be swapped in one step. write() renames the metadata
 * first and the chain second, and remove() unlinks the chain first: an entry
 * whose chain is visible always has its metadata, so a new entry is never
 * served for more names than it asked for. Between the two renames of a
 * replace, a reader can see the old chain with the new metadata (a new pinned
 * key id, say); validation then refuses that pair and the previous
 * certificate keeps serving until the chain's rename arrives a moment later
 * (microseconds: both files are written and fsync'd before either is renamed,
 * store-write.ts).
 * A watcher should act on the last event of a burst and treat a refusal as
 * "keep what is served".
 *
 * An entry whose chain or metadata file is a symbolic link is another tool's
 * (certbot's live/NAME/fullchain.pem): read through the link, never written
 * (store-links.ts says why); remove() unlinks the link only.
 *
 * This class is the store's one interface (storage.ts's EntryStorage for the
 * directory); each concern is its own module: the listing (store-listing.ts),
 * reading an entry (store-read.ts), writing and removing one
 * (store-write.ts), the directory's identity (store-dir.ts), an entry's
 * shape and metadata (store-meta.ts, shared with the fleet's etcd store) and
 * the one-file operations (store-files.ts).
 */
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { CertificateStoreError } from './errors.js';
import { assertStorePresent } from './store-dir.js';
import { entryVersion, errno } from './store-files.js';
import { sweepLeftovers } from './store-leftovers.js';
import { listStore, type MisnamedFile, namedEntries, namedMisnamed } from './store-listing.js';
import type { StoreEntry, StoreEntryRef, StoreMeta } from './store-meta.js';
import { checkEntryName, entryPaths } from './store-paths.js';
import { readEntry, readEntryAsync } from './store-read.js';
import { ownedPaths, removeEntry, writeEntry } from './store-write.js';

// The entry's shape and the file helpers, for the modules that read entries as this store does.
export { checkChainFile, MAX_CHAIN_BYTES, READ_CHAIN, readCheckedFile } from './store-files.js';
export { parseStoreMeta, STORE_ENTRY_NAME, type StoreEntry, type StoreEntryRef, type StoreMeta } from './store-meta.js';

const DIR_MODE = 0o755;

export class CertificateStore {
  readonly dir: string;
  readonly #dirId: string | undefined;

  /**
   * `dir` need not exist: an absent directory lists as an empty store, and
   * is refused by write(). `dirId`: the directory (store-dir.ts's
   * directoryId) the caller checked before validating what it writes;
   * write() then writes into that directory or into none.
   */
  constructor(dir: string, options: { readonly dirId?: string } = {}) {
    this.dir = dir;
    this.#dirId = options.dirId;
  }

  /** Makes the directory (and its parents), 0755, when it is not there: an operator's explicit first step (`keyedge cert add --create-store`). */
  create(): void {
    try {
      // Returns the first directory it made; the umask may have narrowed its mode.
      const created = mkdirSync(this.dir, { recursive: true, mode: DIR_MODE });
      if (created !== undefined) chmodSync(this.dir, DIR_MODE);
    } catch (err) {
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', '', `cannot make the certificate store ${this.dir}: ${errno(err)}`, { cause: err });
    }
  }

  /**
   * Entries with a chain file, sorted by name; temp files, metadata without a chain and other files are ignored.
   * A chain that cannot be looked at (a link loop) is listed: its read fails, naming it.
   */
  list(): StoreEntryRef[] {
    return listStore(this.dir).refs;
  }

  /** list(), and from the same readdir the `.pem` files whose name is no entry name (store-listing.ts), for the reload to refuse. */
  listing(): { readonly refs: StoreEntryRef[]; readonly misnamed: MisnamedFile[] } {
    return listStore(this.dir);
  }

  /** The misnamed `.pem` files among `names` (a watch event's), as listing() describes them. */
  misnamed(names: Iterable<string>): MisnamedFile[] {
    return namedMisnamed(this.dir, names);
  }

  /**
   * The entries among `names` that exist now, as list() would describe them,
   * without listing the directory: a change the watch named costs a few
   * stats, not one per entry (names that are not entry names are skipped).
   */
  refs(names: Iterable<string>): StoreEntryRef[] {
    return namedEntries(this.dir, names);
  }

  /**
   * Throws KEYEDGE_ERR_CERT_STORE_GONE when the directory is not there. For a
   * reload after entries were served: a directory renamed away (a deploy
   * swapping in a new one, a volume not mounted yet) is not an empty store,
   * and taking it for one would stop serving every entry at once
   * (store-dir.ts, which also refuses an empty directory put in its place).
   */
  assertPresent(): void {
    assertStorePresent(this.dir);
  }

  has(name: string): boolean {
    checkEntryName(name);
    try {
      return statSync(entryPaths(this.dir, name).chainPath).isFile();
    } catch {
      return false;
    }
  }

  /**
   * The entry's chain text and metadata as they are now. Throws
   * CertificateStoreError KEYEDGE_ERR_CERT_NOT_FOUND when there is no chain
   * file (removed since list(), say), CertificateError (reason 'parse')
   * naming the file when either file is unreadable or the metadata invalid.
   * `withMeta: false`: the caller's listing saw no metadata file (list():
   * metaMtimeMs undefined), so none is opened; one added since changes the
   * entry's statId and is read by the next pass.
   */
  read(name: string, withMeta = true): StoreEntry {
    return readEntry(this.dir, name, withMeta);
  }

  /**
   * As read(), the chain read off the main thread (libuv's pool): a start
   * reading 100,000 entries overlaps their reads with its own work.
   */
  readAsync(name: string, withMeta = true): Promise<StoreEntry> {
    return readEntryAsync(this.dir, name, withMeta);
  }

  /**
   * Creates or replaces the entry: metadata first, then the chain, each
   * atomically (see the module comment). The caller validates first; this
   * only checks the name, that neither file is a link (assertOwned), the
   * metadata's shape, and the directory: there, and the one given to the
   * constructor if any, before and after the write (store-write.ts,
   * KEYEDGE_ERR_CERT_STORE_GONE). When the chain cannot be written, the
   * metadata is put back as it was (or removed, for a new entry) before the
   * error is thrown. With `expected` (a `version` read before validating):
   * written only if the entry is still at it, else StoreConflictError.
   */
  write(name: string, chainText: string, meta: StoreMeta, expected?: number): void {
    writeEntry(this.dir, name, chainText, meta, this.#dirId, expected);
  }

  /**
   * The entry's version now (0: no chain file), for a write conditional on
   * it (`write`'s `expected`): another writer's write or removal of the
   * entry since it was read (`keyedge cert`, a renewal hook, the proxy's ACME
   * renewal) refuses the write, KEYEDGE_ERR_STORE_CONFLICT, nothing written.
   */
  version(name: string): number {
    checkEntryName(name);
    const paths = entryPaths(this.dir, name);
    return entryVersion(paths.chainPath, paths.metaPath);
  }

  /**
   * Throws CertificateStoreError KEYEDGE_ERR_CERT_LINKED when the entry's
   * chain or metadata file is a symbolic link, a dangling one too
   * (store-links.ts); nothing is written. Called by write(), and by callers
   * that would otherwise validate a chain (and ask the key server) only to
   * be refused.
   */
  assertOwned(name: string): void {
    ownedPaths(this.dir, name);
  }

  /** Removes the entry: the chain first, then the metadata. Throws KEYEDGE_ERR_CERT_NOT_FOUND when there is no chain file. */
  remove(name: string): void {
    removeEntry(this.dir, name);
  }

  /** Removes what writers killed mid-write left behind (store-leftovers.ts), of entry `name` alone when given; returns the file names removed. */
  removeLeftovers(name?: string): string[] {
    return sweepLeftovers(this.dir, name);
  }
}
