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
 */
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  constants as fsConstants,
  closeSync,
  type Dirent,
  fchmodSync,
  fstatSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { formatIssues } from '../../config/load.js';
import { CertificateError, CertificateStoreError } from './errors.js';

/** What `<name>.json` holds; every field optional. */
export interface StoreMeta {
  /** The names the entry serves; default: the leaf's DNS SANs. */
  readonly names?: readonly string[];
  /** Pinned key id (hex SHA-256 of the SPKI): a chain for another key is refused. */
  readonly keyId?: string;
  /** ISO 8601 times, for operators. */
  readonly addedAt?: string;
  readonly replacedAt?: string;
}

export interface StoreEntryRef {
  readonly name: string;
  readonly chainPath: string;
  readonly metaPath: string;
  /** Of the chain file (the link's target when it is a symlink). */
  readonly mtimeMs: number;
  readonly size: number;
  /** Of the metadata file; undefined when there is none. */
  readonly metaMtimeMs: number | undefined;
  /**
   * Identity of both files as stat describes them: device, inode, size,
   * mtime and ctime of the chain (stat: the target) and of the link itself
   * when the chain is a symlink (lstat), and of the metadata. A re-pointed
   * link or a file replaced by `cp -p` (same size, same mtime) still changes
   * it: the inode or the ctime moves, and ctime cannot be set back.
   */
  readonly statId: string;
  /** The chain file's last change (ctime or mtime, the later), to tell whether it may still be being written. */
  readonly changedAtMs: number;
  /** The chain file is a symlink (to a renewal tool's live file, say). */
  readonly link: boolean;
}

export interface StoreEntry extends Omit<StoreEntryRef, 'statId' | 'changedAtMs' | 'link'> {
  readonly chainText: string;
  readonly meta: StoreMeta;
}

/**
 * Entry names: those of config certificates, minus a leading dot, which is
 * kept for temp files (and editors' swap files) so none can be taken for an
 * entry. No slash can appear, so a name never leaves the directory.
 */
export const STORE_ENTRY_NAME = /^[\w-][\w.-]{0,63}$/;
const CHAIN_FILE = /^([\w-][\w.-]{0,63})\.pem$/;
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/**
 * The largest chain file read. A real chain is a few KB; the largest
 * certificate the X.509 parser takes (asn1js caps a structure at 10,000
 * nodes: about 9,000 names) is some 250 KB. A larger file is refused by its
 * size, unread: a 150 MB one held the cluster primary's event loop for
 * seconds and grew it by 0.9 GB (a link to the wrong file could be larger).
 */
export const MAX_CHAIN_BYTES = 1024 * 1024;
const FILE_MODE = 0o644;
const DIR_MODE = 0o755;

const isoTime = z.iso.datetime({ offset: true, error: 'expected an ISO 8601 time' });
const metaSchema = z.strictObject(
  {
    names: z
      .array(z.string().regex(DNS_NAME, { error: 'expected a lower-case DNS name or *.wildcard' }), { error: 'expected an array of DNS names' })
      .min(1, { error: 'expected at least one name' })
      .optional(),
    keyId: z
      .string({ error: 'expected a key id' })
      .regex(/^[0-9a-f]{64}$/, { error: 'expected a key id: 64 lower-case hex digits' })
      .optional(),
    addedAt: isoTime.optional(),
    replacedAt: isoTime.optional(),
  },
  { error: 'expected a JSON object { "names", "keyId", "addedAt", "replacedAt" }' },
);

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
   * only checks the name and the metadata's shape.
   */
  write(name: string, chainText: string, meta: StoreMeta): void {
    this.#check(name);
    const parsed = metaSchema.safeParse(meta);
    if (!parsed.success) {
      const problem = formatIssues(parsed.error.issues, meta)[0];
      throw new CertificateStoreError(
        'KEYEDGE_ERR_CERT_STORE',
        name,
        `invalid metadata for '${name}': ${problem?.path ? `${problem.path}: ` : ''}${problem?.message ?? 'invalid'}`,
      );
    }
    const paths = this.#paths(name);
    try {
      // Returns the first directory it made; the umask may have narrowed its mode.
      const created = mkdirSync(this.dir, { recursive: true, mode: DIR_MODE });
      if (created !== undefined) chmodSync(this.dir, DIR_MODE);
      writeAtomic(this.dir, paths.metaPath, `${JSON.stringify(definedOnly(parsed.data), null, 2)}\n`);
      writeAtomic(this.dir, paths.chainPath, chainText.endsWith('\n') ? chainText : `${chainText}\n`);
      fsyncDir(this.dir);
    } catch (err) {
      if (err instanceof CertificateStoreError) throw err;
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot write '${name}' to the certificate store ${this.dir}: ${errno(err)}`, {
        cause: err,
      });
    }
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

/**
 * How a chain file is opened: without blocking, so a link to a FIFO (which
 * open(2) would hold until a writer came) fails its checks instead of
 * stalling every reload; O_NONBLOCK changes nothing for a regular file.
 */
export const READ_CHAIN = fsConstants.O_RDONLY | fsConstants.O_NONBLOCK;

/** Refuses, before it is read, a chain that is not a regular file or is over MAX_CHAIN_BYTES, naming it. */
export function checkChainFile(stat: Pick<Stats, 'size' | 'isFile' | 'isDirectory'>, chainPath: string, entry: string): void {
  if (!stat.isFile()) {
    throw new CertificateError(chainPath, `the chain is not a file but ${stat.isDirectory() ? 'a directory' : 'a special file'}; link the chain file itself`, {
      reason: 'parse',
      entry,
    });
  }
  if (stat.size > MAX_CHAIN_BYTES) {
    throw new CertificateError(chainPath, `the chain file is ${stat.size} bytes; a chain file holds at most ${MAX_CHAIN_BYTES} (a chain is a few KB)`, {
      reason: 'parse',
      entry,
    });
  }
}

function readMeta(name: string, metaPath: string): { meta: StoreMeta; mtimeMs: number | undefined } {
  let text: string;
  let mtimeMs: number;
  try {
    const fd = openSync(metaPath, 'r');
    try {
      mtimeMs = fstatSync(fd).mtimeMs;
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if (errno(err) === 'ENOENT') return { meta: {}, mtimeMs: undefined };
    throw new CertificateError(metaPath, `cannot read the metadata: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text) as unknown;
  } catch {
    // The SyntaxError is not kept: V8 quotes the text around the error.
    throw new CertificateError(metaPath, 'the metadata is not valid JSON', { reason: 'parse', entry: name });
  }
  const parsed = metaSchema.safeParse(raw);
  if (!parsed.success) {
    const problem = formatIssues(parsed.error.issues, raw)[0];
    throw new CertificateError(metaPath, `invalid metadata: ${problem?.path ? `${problem.path}: ` : ''}${problem?.message ?? 'invalid'}`, {
      reason: 'parse',
      entry: name,
    });
  }
  return { meta: definedOnly(parsed.data), mtimeMs };
}

/** `raw` as entry metadata, or the first problem with it (for stores that keep metadata elsewhere than a file). */
export function parseStoreMeta(raw: unknown): StoreMeta | string {
  const parsed = metaSchema.safeParse(raw);
  if (parsed.success) return definedOnly(parsed.data);
  const problem = formatIssues(parsed.error.issues, raw)[0];
  return `invalid metadata: ${problem?.path ? `${problem.path}: ` : ''}${problem?.message ?? 'invalid'}`;
}

function metaStat(metaPath: string): Stats | undefined {
  try {
    return statSync(metaPath);
  } catch {
    return undefined;
  }
}

function lstatIdentity(file: string): string {
  try {
    return identity(lstatSync(file));
  } catch {
    return 'gone';
  }
}

function identity(stat: Stats): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}`;
}

/** Temp file, fsync, rename: the target holds the old or the new content, whole. */
function writeAtomic(dir: string, target: string, content: string): void {
  const temp = join(dir, `.${target.slice(dir.length + 1)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(temp, 'wx', FILE_MODE);
  try {
    try {
      // The umask may have narrowed the mode given to open().
      fchmodSync(fd, FILE_MODE);
      writeFileSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, target);
  } catch (err) {
    try {
      unlinkSync(temp);
    } catch {
      // Already renamed or never created: nothing to clean.
    }
    throw err;
  }
}

/** Makes the renames durable: without it a crash may forget them (rename(2) is atomic, not durable). */
function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function definedOnly(meta: StoreMeta): StoreMeta {
  return Object.fromEntries(Object.entries(meta).filter(([, v]) => v !== undefined)) as StoreMeta;
}

function errno(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : 'error');
}
