/**
 * Writing and removing one store entry, into the store directory and no
 * other. Each file is replaced atomically (store-files.ts); both are written
 * and fsync'd before either is renamed, then the metadata is renamed first
 * and the chain second, back to back, and a removal unlinks the chain first,
 * so an entry whose chain is visible always has its metadata (store.ts).
 *
 * Which directory: the one the store's path names when the write begins,
 * which must be there (KEYEDGE_ERR_CERT_STORE_GONE otherwise: a write never
 * makes the directory, so a store renamed away is not recreated holding one
 * entry, which the proxy would take for the whole store) and, when the
 * caller checked the directory before validating (`dirId`, store-dir.ts),
 * still that one. Node has no openat(2): the directory is held open and its
 * files are named through /proc/self/fd (holdDirectory, store-dir.ts), so
 * every step lands in that directory even when another is swapped in
 * meanwhile. The path's identity is checked again once the files are in
 * place; when the directory moved away, the write is taken back in it (the
 * chain and the metadata put back from their `.aside` links: only files this
 * write made, by their device and inode), so the directory, when it is put
 * back, holds the entry as it was, and the write is refused. All of it is
 * synchronous: the proxy's own reloads never see the files in between.
 *
 * A write or a removal holds the entry's lock (store-lock.ts) from before
 * its first step to after its last: another writer of the same entry, in
 * this process or another (`keyedge cert`, a renewal hook), waits a moment
 * or is refused, so two writes never leave one's chain beside the other's
 * metadata.
 */
import { renameSync, unlinkSync } from 'node:fs';
import { CertificateStoreError } from './errors.js';
import { directoryId, holdDirectory } from './store-dir.js';
import { StoreConflictError } from '../store/storage.js';
import { entryVersion, errno, fileId, fsyncDir, keepAside, prepareAtomic, putBack, syncDirQuietly, unlinkQuietly } from './store-files.js';
import { refuseLinkedEntry } from './store-links.js';
import { lockEntry } from './store-lock.js';
import { checkStoreMeta, type StoreMeta } from './store-meta.js';
import { checkEntryName, type EntryPaths, entryPaths } from './store-paths.js';

/**
 * Creates or replaces entry `name` in `dir` (the caller validated it). Throws
 * KEYEDGE_ERR_CERT_LINKED when a file of it is a link, KEYEDGE_ERR_CERT_STORE
 * for bad metadata or a failed write (the metadata then put back as it was),
 * KEYEDGE_ERR_CERT_STORE_GONE when the directory is not there or is not
 * `dirId` (when given), before or after the write, StoreConflictError
 * (KEYEDGE_ERR_STORE_CONFLICT) when another writer of the entry holds its
 * lock or, with `expected` (store-files.ts entryVersion, read before the
 * caller validated), when another write or removal of the entry landed since:
 * nothing is written then.
 */
export function writeEntry(dir: string, name: string, chainText: string, meta: StoreMeta, dirId: string | undefined, expected?: number): void {
  ownedPaths(dir, name);
  const checked = checkStoreMeta(meta);
  if ('problem' in checked) throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `invalid metadata for '${name}': ${checked.problem}`);
  const held = holdDirectory(dir);
  try {
    if (dirId !== undefined && held.id !== dirId) throw replaced(dir, name, dirId, held.id, 'while it was validated', 'nothing was written');
    // One writer of the entry at a time, in any process: two writes' renames never interleave (store-lock.ts).
    const release = lockEntry(held.at, dir, name);
    try {
      // Under the lock: no other write can land between this comparison and this write's renames.
      if (expected !== undefined) {
        const paths = entryPaths(held.at, name);
        if (entryVersion(paths.chainPath, paths.metaPath) !== expected) throw changedSince(dir, name);
      }
      writeHeld(dir, held.at, held.id, name, chainText, `${JSON.stringify(checked.meta, null, 2)}\n`);
    } finally {
      release();
    }
  } finally {
    held.close();
  }
}

/** writeEntry() into the directory held as `at` (store-dir.ts), whose identity is `before`. */
function writeHeld(dir: string, at: string, before: string, name: string, chainText: string, metaText: string): void {
  const paths = entryPaths(at, name);
  const asides: { meta?: string | null | undefined; chain?: string | null | undefined } = {};
  const written: { meta?: string; chain?: string } = {};
  const temps: string[] = [];
  try {
    asides.meta = keepAside(at, paths.metaPath);
    asides.chain = keepAside(at, paths.chainPath);
    // Both written and fsync'd first, then renamed back to back: between the two renames a reader (the proxy's
    // watch, a pass reading the entry) meets the old chain beside the new metadata, a pinned key that is not
    // its chain's, and refuses it. With the chain's fsync between them, that took as long as a slow disk's
    // fsync, longer than the watch's debounce, and a renewal with a new key was refused (logged) on its way in.
    const meta = prepareAtomic(at, paths.metaPath, metaText);
    temps.push(meta.temp);
    const chain = prepareAtomic(at, paths.chainPath, chainText.endsWith('\n') ? chainText : `${chainText}\n`);
    temps.push(chain.temp);
    renameSync(meta.temp, paths.metaPath);
    written.meta = meta.id;
    renameSync(chain.temp, paths.chainPath);
    written.chain = chain.id;
  } catch (err) {
    // The temp files not renamed (those renamed are gone from their names already).
    for (const temp of temps) unlinkQuietly(temp);
    // A temp file renamed into a directory no longer there fails with a bare ENOENT: say what happened instead.
    const now = directoryId(dir);
    if (now !== before) {
      takeBack(at, paths, written, asides);
      dropAsides(asides);
      throw replaced(dir, name, before, now, 'while it was written', 'taken back');
    }
    // The chain not renamed into place: the metadata as it was, so the old chain (or none) is never left beside
    // metadata pinned for the new one, which a restart would refuse, or a renewal tool's next chain meet. (A full
    // disk fails a temp file's write, before anything is renamed.)
    if (written.meta !== undefined) putBack(asides.meta, paths.metaPath);
    dropAsides(asides);
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot write '${name}' to the certificate store ${dir}: ${errno(err)}`, {
      cause: err,
    });
  }
  try {
    const after = directoryId(dir);
    if (after !== before) {
      takeBack(at, paths, written, asides);
      throw replaced(dir, name, before, after, 'while it was written', 'taken back');
    }
  } finally {
    dropAsides(asides);
  }
  // The directory synced once the renames are done: they stand whatever happens here (readers see them already), so a
  // failure is none of the write's, only its durability across a crash of the host lost. Reported as one (EIO), a
  // change that stood was taken for one not made: ACME kept the previous names and key id, and retired the new key.
  syncDirQuietly(at);
}

/** The `.aside` links a write made, once nothing is to be put back from them (a link put back is gone already). */
function dropAsides(asides: { meta?: string | null | undefined; chain?: string | null | undefined }): void {
  for (const aside of [asides.meta, asides.chain]) if (typeof aside === 'string') unlinkQuietly(aside);
}

/**
 * Removes entry `name`: the chain first, then the metadata, under its lock (StoreConflictError while another writer
 * holds it). Throws KEYEDGE_ERR_CERT_NOT_FOUND when there is no chain file.
 */
export function removeEntry(dir: string, name: string): void {
  checkEntryName(name);
  const paths = entryPaths(dir, name);
  // Not between a write's two renames: its metadata would be unlinked after its chain was put in place (store-lock.ts).
  const release = lockEntry(dir, dir, name);
  try {
    removeLocked(dir, name, paths);
  } finally {
    release();
  }
}

function removeLocked(dir: string, name: string, paths: EntryPaths): void {
  try {
    unlinkSync(paths.chainPath);
  } catch (err) {
    if (errno(err) === 'ENOENT')
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${dir}`, { cause: err });
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot remove ${paths.chainPath}: ${errno(err)}`, { cause: err });
  }
  try {
    unlinkSync(paths.metaPath);
  } catch (err) {
    if (errno(err) !== 'ENOENT')
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot remove ${paths.metaPath}: ${errno(err)}`, { cause: err });
  }
  // As a write's (above): the unlinks stand.
  syncDirQuietly(dir);
}

/** The entry's paths, once its name is checked and neither file is a link (store-links.ts). */
export function ownedPaths(dir: string, name: string): EntryPaths {
  checkEntryName(name);
  const paths = entryPaths(dir, name);
  refuseLinkedEntry(name, paths);
  return paths;
}

/**
 * The files this write put at `paths` undone, in the directory written (held
 * open): the chain first (as a removal goes), then the metadata, each put
 * back from its aside (or unlinked when there was none). What another writer
 * put there since is left alone. Best effort.
 */
function takeBack(
  at: string,
  paths: EntryPaths,
  written: { meta?: string; chain?: string },
  asides: { meta?: string | null | undefined; chain?: string | null | undefined },
): void {
  for (const [file, kind] of [
    [paths.chainPath, 'chain'],
    [paths.metaPath, 'meta'],
  ] as const) {
    if (written[kind] === undefined || fileId(file) !== written[kind]) continue;
    putBack(asides[kind], file);
    // No aside could be made (no hard links): what this write put there goes.
    if (fileId(file) === written[kind]) unlinkQuietly(file);
  }
  try {
    fsyncDir(at);
  } catch {
    // Gone as well: nothing there to make durable.
  }
}

function changedSince(dir: string, name: string): StoreConflictError {
  return new StoreConflictError(
    `certificate '${name}' in the certificate store ${dir} was written or removed by another writer while this one was validated ` +
      "against it: nothing was written, and that writer's change stands; write it again to validate against it",
  );
}

function replaced(dir: string, name: string, was: string, now: string | undefined, when: string, outcome: string): CertificateStoreError {
  return new CertificateStoreError(
    'KEYEDGE_ERR_CERT_STORE_GONE',
    name,
    `the certificate store ${dir} was replaced by another directory (device:inode ${was}, now ${now ?? 'none'}) ${when}: ` +
      `certificate '${name}' was refused and ${outcome}; the proxy keeps serving what it read before. Write it again once the store directory is settled`,
  );
}
