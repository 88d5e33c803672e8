/**
 * One file of the certificate store directory at a time (store.ts): chains
 * opened without blocking and refused by size or type before they are read,
 * writes that leave the old or the new file whole (temp file, fsync,
 * rename, then the directory fsync'd), and the stat identity that tells a
 * changed file from an unchanged one. No entry logic: names and metadata
 * are store-paths.ts's and store-meta.ts's.
 *
 * A write's side files, a temp file and the `.aside` link keepAside() makes,
 * are named `.<file>.<pid>.<pid space>.<random>.tmp|aside` (SIDE_FILE): a dot
 * name, which listings and the watch ignore, and the writer's pid, by which a
 * leftover of a writer killed mid-write is told from a write in progress
 * (store-leftovers.ts). A pid means something only in its pid namespace, and
 * the store may be shared with writers in others (a container, another host
 * on a network file system, where the same pid is another process or none):
 * PID_SPACE names the writer's, so only pids of the sweeper's own are looked up.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fstatSync,
  fsyncSync,
  linkSync,
  lstatSync,
  openSync,
  readFileSync,
  readlinkSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { OPEN_UNBLOCKED, readChecked } from '../../config/setting-file.js';
import { CertificateError } from './errors.js';

/**
 * The largest chain file read. A real chain is a few KB; the largest
 * certificate the X.509 parser takes (asn1js caps a structure at 10,000
 * nodes: about 9,000 names) is some 250 KB. A larger file is refused by its
 * size, unread: a 150 MB one held the cluster primary's event loop for
 * seconds and grew it by 0.9 GB (a link to the wrong file could be larger).
 */
export const MAX_CHAIN_BYTES = 1024 * 1024;
const FILE_MODE = 0o644;

/**
 * How a store entry's files (chain, metadata) are opened: without blocking,
 * so a link to a FIFO (which open(2) would hold until a writer came) fails
 * its checks instead of stalling every reload; O_NONBLOCK changes nothing
 * for a regular file.
 */
export const READ_CHAIN = OPEN_UNBLOCKED;

/**
 * The largest metadata file read: a few names, a key id and two times take
 * a few hundred bytes; 10,000 names some 700 KB. A link to /dev/zero or a
 * log file would otherwise be read whole by the cluster primary.
 */
export const MAX_META_BYTES = 1024 * 1024;

/** Refuses, before it is read, a chain that is not a regular file or is over MAX_CHAIN_BYTES, naming it. */
export function checkChainFile(stat: Pick<Stats, 'size' | 'isFile' | 'isDirectory'>, chainPath: string, entry: string): void {
  checkEntryFile(stat, chainPath, entry, { what: 'chain', fix: 'link the chain file itself', max: MAX_CHAIN_BYTES, usual: 'a chain is a few KB' });
}

/** Refuses, before it is read, a metadata file that is not a regular file or is over MAX_META_BYTES, naming it. */
export function checkMetaFile(stat: Pick<Stats, 'size' | 'isFile' | 'isDirectory'>, metaPath: string, entry: string): void {
  checkEntryFile(stat, metaPath, entry, { what: 'metadata', fix: 'write the JSON file itself', max: MAX_META_BYTES, usual: 'metadata is a few hundred bytes' });
}

function checkEntryFile(
  stat: Pick<Stats, 'size' | 'isFile' | 'isDirectory'>,
  file: string,
  entry: string,
  rule: { readonly what: string; readonly fix: string; readonly max: number; readonly usual: string },
): void {
  if (!stat.isFile()) {
    throw new CertificateError(file, `the ${rule.what} is not a file but ${stat.isDirectory() ? 'a directory' : 'a special file'}; ${rule.fix}`, {
      reason: 'parse',
      entry,
    });
  }
  if (stat.size > rule.max) {
    throw new CertificateError(file, `the ${rule.what} file is ${stat.size} bytes; a ${rule.what} file holds at most ${rule.max} (${rule.usual})`, {
      reason: 'parse',
      entry,
    });
  }
}

/**
 * A file's text, opened without blocking (READ_CHAIN) and read only once
 * `check` accepted what fstat says of it: the stat and the text describe the
 * same file, and a FIFO or a device is refused (check throws) unread
 * (config/setting-file.ts, the door every file a setting names goes through).
 */
export function readCheckedFile(file: string, check: (stat: Stats) => void): { readonly text: string; readonly stat: Stats } {
  const { bytes, stat } = readChecked(file, check);
  return { text: bytes.toString('utf8'), stat };
}

/**
 * The metadata file's stat, through a link; undefined when there is none.
 * A name there that cannot be followed (a link whose target is gone, a link
 * loop) gives the link's own stat: the entry has metadata, and its read says
 * what is wrong with it (store-meta.ts readMeta), rather than the entry
 * being read as having none, its pinned names and key id dropped silently.
 */
export function metaStat(metaPath: string): Stats | undefined {
  try {
    return statSync(metaPath);
  } catch {
    try {
      return lstatSync(metaPath);
    } catch {
      return undefined;
    }
  }
}

export function lstatIdentity(file: string): string {
  try {
    return identity(lstatSync(file));
  } catch {
    return 'gone';
  }
}

export function identity(stat: Stats): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}`;
}

/** `.<file>.<pid>.<8 hex>.<12 hex>.tmp|aside`; groups: the file's name, the writer's pid, its PID_SPACE, the kind. */
export const SIDE_FILE = /^\.(.+)\.(\d+)\.([0-9a-f]{8})\.[0-9a-f]{12}\.(tmp|aside)$/;

/**
 * This process's pid namespace, as 8 hex: of the host (its boot id and name)
 * and of the namespace there (/proc/self/ns/pid, Linux). Two processes whose
 * pids can be compared have the same one; another container's or another
 * host's differs (where /proc is not, the host name alone tells hosts apart).
 */
export const PID_SPACE = pidSpace();

function pidSpace(): string {
  const read = (what: () => string): string => {
    try {
      return what();
    } catch {
      return '';
    }
  };
  const boot = read(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
  const namespace = read(() => readlinkSync('/proc/self/ns/pid'));
  return createHash('sha256').update(`${hostname()}\n${boot}\n${namespace}`).digest('hex').slice(0, 8);
}

function sideFile(dir: string, file: string, kind: 'tmp' | 'aside'): string {
  return join(dir, `.${file.slice(dir.length + 1)}.${process.pid}.${PID_SPACE}.${randomBytes(6).toString('hex')}.${kind}`);
}

/**
 * Temp file, fsync, rename: the target holds the old or the new content,
 * whole. Returns the written file's device and inode, by which a caller can
 * tell it from whatever else comes to be at `target`. `mode`: the store's
 * (chains and metadata are public); a state file is written 0600.
 */
export function writeAtomic(dir: string, target: string, content: string, mode = FILE_MODE): string {
  const prepared = prepareAtomic(dir, target, content, mode);
  try {
    renameSync(prepared.temp, target);
  } catch (err) {
    unlinkQuietly(prepared.temp);
    throw err;
  }
  return prepared.id;
}

/**
 * writeAtomic() without its rename: the temp file beside `target`, written
 * and fsync'd, and its device and inode. The caller renames it over `target`
 * (or unlinks it): two files prepared first are then renamed back to back.
 */
export function prepareAtomic(dir: string, target: string, content: string, mode = FILE_MODE): { readonly temp: string; readonly id: string } {
  const temp = sideFile(dir, target, 'tmp');
  const fd = openSync(temp, 'wx', mode);
  let id: string;
  try {
    try {
      // The umask may have narrowed the mode given to open().
      fchmodSync(fd, mode);
      writeFileSync(fd, content);
      fsyncSync(fd);
      const stat = fstatSync(fd);
      id = `${stat.dev}:${stat.ino}`;
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    unlinkQuietly(temp);
    throw err;
  }
  return { temp, id };
}

/**
 * An entry's version, for a write conditional on it (store/storage.ts
 * `version`): a number made of the identity of its chain and metadata files
 * as they are now (device, inode, change time), which every write and
 * removal of the entry changes (a write renames new files into place); 0
 * when there is no chain file.
 */
export function entryVersion(chainPath: string, metaPath: string): number {
  let chain: Stats;
  try {
    chain = lstatSync(chainPath);
  } catch {
    return 0;
  }
  let meta = 'none';
  try {
    const stat = lstatSync(metaPath);
    meta = `${stat.dev}:${stat.ino}:${stat.ctimeMs}`;
  } catch {
    // No metadata: a version of its own.
  }
  // 48 bits of a hash: a safe integer, and a collision between two versions of one entry is out of reach.
  return Number.parseInt(createHash('sha256').update(`${chain.dev}:${chain.ino}:${chain.ctimeMs}\0${meta}`).digest('hex').slice(0, 12), 16) || 1;
}

/** The device and inode of what `file` names now (not following a link); undefined when nothing. */
export function fileId(file: string): string | undefined {
  try {
    const stat = lstatSync(file);
    return `${stat.dev}:${stat.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * A hard link to `file` under a dot name beside it (which listings and the
 * watch ignore), for putBack() should what replaces it fail. null: there is
 * no such file; undefined: it could not be kept (a file system without hard
 * links), and putBack() then leaves the file alone.
 */
export function keepAside(dir: string, file: string): string | null | undefined {
  const aside = sideFile(dir, file, 'aside');
  try {
    linkSync(file, aside);
    return aside;
  } catch (err) {
    return errno(err) === 'ENOENT' ? null : undefined;
  }
}

/** `file` as keepAside() found it: the kept link renamed back over it, or no file when there was none. Best effort. */
export function putBack(aside: string | null | undefined, file: string): void {
  try {
    if (aside === null) unlinkSync(file);
    else if (aside !== undefined) renameSync(aside, file);
  } catch {
    // Nothing to put back (the write failed before it), or the directory is gone: the error thrown says what failed.
  }
}

export function unlinkQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Already gone.
  }
}

/** Makes the renames durable: without it a crash may forget them (rename(2) is atomic, not durable). */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsyncDir for files a start can do without (proxy/serving's kept state and log): a failure is ignored. */
export function syncDirQuietly(dir: string): void {
  try {
    fsyncDir(dir);
  } catch {
    // The rename stands; only its durability across a crash is lost.
  }
}

export function errno(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : 'error');
}
