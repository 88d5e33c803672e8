/**
 * The certificate store: one flat directory, so a single fs.watch sees every
 * change, holding per entry
 *
 *   <dir>/<name>.pem    the full chain as PEM (what a renewal tool writes)
 *   <dir>/<name>.json   optional metadata: names to serve, pinned key id, times
 *
 * and nothing secret: private keys live in the key server. Files are 0644,
 * the directory 0755 when this module creates it.
 *
 * Concurrency: one writer per entry at a time is assumed (the `keyedge cert`
 * command, a renewal hook); two writers of one entry race and the last rename
 * wins whole. Readers never see half a file: every write goes to a temp file
 * in the same directory (a dot name, ignored by list()), is fsync'd, renamed
 * over the target (atomic on POSIX) and the directory fsync'd, so a crash
 * leaves the old or the new file, never a mix.
 *
 * Two files cannot be swapped in one step. write() renames the metadata
 * first and the chain second, and remove() unlinks the chain first: an entry
 * whose chain is visible always has its metadata, so a new entry is never
 * served for more names than it asked for. Between the two renames of a
 * replace, a reader can see the old chain with the new metadata (a new pinned
 * key id, say); validation then refuses that pair and the previous
 * certificate keeps serving until the chain's rename arrives a moment later.
 * A watcher should act on the last event of a burst and treat a refusal as
 * "keep what is served".
 *
 * An entry whose chain or metadata file is a symbolic link is another tool's
 * (certbot's live/NAME/fullchain.pem): read through the link, never written
 * (store-links.ts says why); remove() unlinks the link only.
 *
 * This module is the directory's entries; an entry's shape and metadata are
 * store-meta.ts's (shared with the fleet's etcd store), the one-file
 * operations (bounded chain opening, atomic writes, stat identities)
 * store-files.ts's.
 */
import {
  chmodSync,
  type Dirent,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  type Stats,
  statSync,
  unlinkSync,
  closeSync,
} from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import { CertificateError, CertificateStoreError } from './errors.js';
import { assertStorePresent } from './store-dir.js';
import {
  checkChainFile,
  errno,
  fsyncDir,
  identity,
  keepAside,
  lstatIdentity,
  metaStat,
  putBack,
  READ_CHAIN,
  unlinkQuietly,
  writeAtomic,
} from './store-files.js';
import { refuseLinkedEntry } from './store-links.js';
import { checkStoreMeta, readMeta, STORE_ENTRY_NAME, type StoreEntry, type StoreEntryRef, type StoreMeta } from './store-meta.js';

// The entry's shape and the file helpers, for the modules that read entries as this store does.
export { checkChainFile, MAX_CHAIN_BYTES, READ_CHAIN, readCheckedFile } from './store-files.js';
export { parseStoreMeta, STORE_ENTRY_NAME, type StoreEntry, type StoreEntryRef, type StoreMeta } from './store-meta.js';

const CHAIN_FILE = /^([\w-][\w.-]{0,63})\.pem$/;
const DIR_MODE = 0o755;

export class CertificateStore {
  readonly dir: string;

  /** `dir` need not exist: an absent directory is an empty store, created on the first write. */
  constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * Entries with a chain file, sorted by name; temp files, metadata without a chain and other files are ignored.
   * A chain that cannot be looked at (a link loop) is listed: its read fails, naming it.
   */
  list(): StoreEntryRef[] {
    let files: Dirent[];
    try {
      files = readdirSync(this.dir, { withFileTypes: true });
    } catch (err) {
      if (errno(err) === 'ENOENT') return [];
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', '', `cannot list the certificate store ${this.dir}: ${errno(err)}`, { cause: err });
    }
    const refs: StoreEntryRef[] = [];
    // Stat a metadata file only where readdir saw one: a failed stat (throwing ENOENT) per entry was most of a rescan's cost at 10,000 entries.
    const present = new Set(files.map((f) => f.name));
    for (const file of files) {
      const name = CHAIN_FILE.exec(file.name)?.[1];
      if (name === undefined) continue;
      const ref = this.#ref(name, file.isSymbolicLink(), present.has(`${name}.json`));
      if (ref !== undefined) refs.push(ref);
    }
    return refs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * The entries among `names` that exist now, as list() would describe them,
   * without listing the directory: a change the watch named costs a few
   * stats, not one per entry (names that are not entry names are skipped).
   */
  refs(names: Iterable<string>): StoreEntryRef[] {
    const refs: StoreEntryRef[] = [];
    for (const name of names) {
      if (!STORE_ENTRY_NAME.test(name)) continue;
      const paths = this.#paths(name);
      let link: boolean;
      try {
        link = lstatSync(paths.chainPath).isSymbolicLink();
      } catch (err) {
        if (errno(err) === 'ENOENT') continue;
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot stat ${paths.chainPath}: ${errno(err)}`, { cause: err });
      }
      const ref = this.#ref(name, link, true);
      if (ref !== undefined) refs.push(ref);
    }
    return refs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  #ref(name: string, isLink: boolean, mayHaveMeta: boolean): StoreEntryRef | undefined {
    const paths = this.#paths(name);
    let chain: ReturnType<typeof statSync>;
    try {
      // stat, not lstat: a chain may be a symlink to a renewal tool's live file.
      chain = statSync(paths.chainPath);
    } catch (err) {
      // Removed since readdir, or a dangling link: not an entry (read() would say why).
      if (errno(err) === 'ENOENT') return undefined;
      // A link loop (ELOOP) or the like: an entry whose read fails, refused by its name and path with the others
      // served, rather than a store that cannot be listed (every entry's change held back by one bad file).
      return { name, ...paths, mtimeMs: 0, size: 0, metaMtimeMs: undefined, statId: `unreadable:${errno(err)}`, changedAtMs: 0, link: isLink };
    }
    if (!chain.isFile()) {
      // A directory named like a chain is not an entry. A link to something other than a file (certbot's live/NAME
      // directory for its fullchain.pem, say) is an operator's mistake: an entry whose read fails, naming it, so
      // what it served keeps serving, rather than an entry silently gone.
      if (!isLink) return undefined;
      return { name, ...paths, mtimeMs: 0, size: 0, metaMtimeMs: undefined, statId: `notfile:${identity(chain)}`, changedAtMs: 0, link: true };
    }
    // lstat only for links: the readdir entry already says which ones are.
    const link = isLink ? lstatIdentity(paths.chainPath) : undefined;
    const meta = mayHaveMeta ? metaStat(paths.metaPath) : undefined;
    return {
      name,
      ...paths,
      mtimeMs: chain.mtimeMs,
      size: chain.size,
      metaMtimeMs: meta?.mtimeMs,
      statId: `${identity(chain)}|${link ?? '-'}|${meta === undefined ? '-' : identity(meta)}`,
      changedAtMs: Math.max(chain.ctimeMs, chain.mtimeMs),
      link: isLink,
    };
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
    this.#check(name);
    try {
      return statSync(this.#paths(name).chainPath).isFile();
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
    this.#check(name);
    const paths = this.#paths(name);
    let fd: number;
    try {
      fd = openSync(paths.chainPath, READ_CHAIN);
    } catch (err) {
      if (errno(err) === 'ENOENT')
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${this.dir}`, { cause: err });
      throw new CertificateError(paths.chainPath, `cannot read the chain: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
    }
    let chainText: string;
    let stat: ReturnType<typeof fstatSync>;
    try {
      // One descriptor for stat and content: the size and mtime describe exactly the text returned.
      stat = fstatSync(fd);
      checkChainFile(stat, paths.chainPath, name);
      chainText = readFileSync(fd, 'utf8');
    } catch (err) {
      if (err instanceof CertificateError) throw err;
      throw new CertificateError(paths.chainPath, `cannot read the chain: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
    } finally {
      closeSync(fd);
    }
    const { meta, mtimeMs: metaMtimeMs } = withMeta ? readMeta(name, paths.metaPath) : { meta: {}, mtimeMs: undefined };
    return { name, ...paths, mtimeMs: stat.mtimeMs, size: stat.size, metaMtimeMs, chainText, meta };
  }

  /**
   * As read(), the chain read off the main thread (libuv's pool): a start
   * reading 100,000 entries overlaps their reads with its own work. The
   * metadata, small and rare, is read as read() reads it.
   */
  async readAsync(name: string, withMeta = true): Promise<StoreEntry> {
    this.#check(name);
    const paths = this.#paths(name);
    let handle: FileHandle;
    try {
      handle = await open(paths.chainPath, READ_CHAIN);
    } catch (err) {
      if (errno(err) === 'ENOENT')
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${this.dir}`, { cause: err });
      throw new CertificateError(paths.chainPath, `cannot read the chain: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
    }
    let chainText: string;
    let stat: Stats;
    try {
      // One descriptor for stat and content, as read().
      stat = await handle.stat();
      checkChainFile(stat, paths.chainPath, name);
      chainText = await handle.readFile('utf8');
    } catch (err) {
      if (err instanceof CertificateError) throw err;
      throw new CertificateError(paths.chainPath, `cannot read the chain: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
    } finally {
      await handle.close();
    }
    const { meta, mtimeMs: metaMtimeMs } = withMeta ? readMeta(name, paths.metaPath) : { meta: {}, mtimeMs: undefined };
    return { name, ...paths, mtimeMs: stat.mtimeMs, size: stat.size, metaMtimeMs, chainText, meta };
  }

  /**
   * Creates or replaces the entry: metadata first, then the chain, each
   * atomically (see the module comment). The caller validates first; this
   * only checks the name, that neither file is a link (assertOwned) and the
   * metadata's shape. When the chain cannot be written, the metadata is put
   * back as it was (or removed, for a new entry) before the error is thrown.
   */
  write(name: string, chainText: string, meta: StoreMeta): void {
    this.assertOwned(name);
    const checked = checkStoreMeta(meta);
    if ('problem' in checked) throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `invalid metadata for '${name}': ${checked.problem}`);
    const paths = this.#paths(name);
    let aside: string | null | undefined;
    try {
      // Returns the first directory it made; the umask may have narrowed its mode.
      const created = mkdirSync(this.dir, { recursive: true, mode: DIR_MODE });
      if (created !== undefined) chmodSync(this.dir, DIR_MODE);
      aside = keepAside(this.dir, paths.metaPath);
      writeAtomic(this.dir, paths.metaPath, `${JSON.stringify(checked.meta, null, 2)}\n`);
      writeAtomic(this.dir, paths.chainPath, chainText.endsWith('\n') ? chainText : `${chainText}\n`);
      fsyncDir(this.dir);
    } catch (err) {
      // The chain not written (a full disk, say): the metadata as it was, so the old chain (or none) is never left
      // beside metadata pinned for the new one, which a restart would refuse, or a renewal tool's next chain meet.
      putBack(aside, paths.metaPath);
      aside = undefined;
      if (err instanceof CertificateStoreError) throw err;
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot write '${name}' to the certificate store ${this.dir}: ${errno(err)}`, {
        cause: err,
      });
    } finally {
      if (typeof aside === 'string') unlinkQuietly(aside);
    }
  }

  /**
   * Throws CertificateStoreError KEYEDGE_ERR_CERT_LINKED when the entry's
   * chain or metadata file is a symbolic link, a dangling one too
   * (store-links.ts); nothing is written. Called by write(), and by callers
   * that would otherwise validate a chain (and ask the key server) only to
   * be refused.
   */
  assertOwned(name: string): void {
    this.#check(name);
    refuseLinkedEntry(name, this.#paths(name));
  }

  /** Removes the entry: the chain first, then the metadata. Throws KEYEDGE_ERR_CERT_NOT_FOUND when there is no chain file. */
  remove(name: string): void {
    this.#check(name);
    const paths = this.#paths(name);
    try {
      unlinkSync(paths.chainPath);
    } catch (err) {
      if (errno(err) === 'ENOENT')
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${this.dir}`, { cause: err });
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot remove ${paths.chainPath}: ${errno(err)}`, { cause: err });
    }
    try {
      unlinkSync(paths.metaPath);
    } catch (err) {
      if (errno(err) !== 'ENOENT')
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot remove ${paths.metaPath}: ${errno(err)}`, { cause: err });
    }
    fsyncDir(this.dir);
  }

  #check(name: string): void {
    if (!STORE_ENTRY_NAME.test(name)) {
      throw new CertificateStoreError(
        'KEYEDGE_ERR_CERT_STORE',
        name,
        `'${name.slice(0, 80)}' is not a certificate name: expected 1-64 letters, digits, _ . - (not starting with ".")`,
      );
    }
  }

  #paths(name: string): { chainPath: string; metaPath: string } {
    return { chainPath: join(this.dir, `${name}.pem`), metaPath: join(this.dir, `${name}.json`) };
  }
}
