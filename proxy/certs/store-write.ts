/**
 * Writing and removing one store entry, into the store directory and no
 * other. Each file is replaced atomically (store-files.ts); the metadata is
 * renamed first and the chain second, and a removal unlinks the chain first,
 * so an entry whose chain is visible always has its metadata (store.ts).
 *
 * Which directory: the one the store's path names when the write begins,
 * which must be there (KEYEDGE_ERR_CERT_STORE_GONE otherwise: a write never
 * makes the directory, so a store renamed away is not recreated holding one
 * entry, which the proxy would take for the whole store) and, when the
 * caller checked the directory before validating (`dirId`, store-dir.ts),
 * still that one. Node has no openat(2): each rename resolves the path
 * anew, so another directory swapped in during the write could receive the
 * files. The directory's identity is therefore checked again once the files
 * are in place; when it moved, what reached the directory now there is taken
 * back (only files this write made: their device and inode are compared)
 * and the write is refused. All of it is synchronous: the proxy's own
 * reloads never see the files in a directory swapped in meanwhile.
 */
import { unlinkSync } from 'node:fs';
import { CertificateStoreError } from './errors.js';
import { directoryId, presentDirectoryId } from './store-dir.js';
import { errno, fileId, fsyncDir, keepAside, putBack, unlinkQuietly, writeAtomic } from './store-files.js';
import { sweepLeftovers } from './store-leftovers.js';
import { refuseLinkedEntry } from './store-links.js';
import { checkStoreMeta, type StoreMeta } from './store-meta.js';
import { checkEntryName, type EntryPaths, entryPaths } from './store-paths.js';

/**
 * Creates or replaces entry `name` in `dir` (the caller validated it). Throws
 * KEYEDGE_ERR_CERT_LINKED when a file of it is a link, KEYEDGE_ERR_CERT_STORE
 * for bad metadata or a failed write (the metadata then put back as it was),
 * KEYEDGE_ERR_CERT_STORE_GONE when the directory is not there or is not
 * `dirId` (when given), before or after the write.
 */
export function writeEntry(dir: string, name: string, chainText: string, meta: StoreMeta, dirId: string | undefined): void {
  const paths = ownedPaths(dir, name);
  const checked = checkStoreMeta(meta);
  if ('problem' in checked) throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `invalid metadata for '${name}': ${checked.problem}`);
  const before = presentDirectoryId(dir);
  if (dirId !== undefined && before !== dirId) throw replaced(dir, name, dirId, before, 'while it was validated', 'nothing was written');
  // Leftovers of this entry's earlier writes killed midway (store-leftovers.ts): none of them is in progress now.
  sweepLeftovers(dir, name);
  let aside: string | null | undefined;
  const written: { meta?: string; chain?: string } = {};
  try {
    aside = keepAside(dir, paths.metaPath);
    written.meta = writeAtomic(dir, paths.metaPath, `${JSON.stringify(checked.meta, null, 2)}\n`);
    written.chain = writeAtomic(dir, paths.chainPath, chainText.endsWith('\n') ? chainText : `${chainText}\n`);
    fsyncDir(dir);
  } catch (err) {
    // A temp file renamed into a directory no longer there fails with a bare ENOENT: say what happened instead, and
    // take back what reached the directory there now (only this write's files: putBack would unlink another's).
    const now = directoryId(dir);
    if (now !== before) {
      takeBack(dir, paths, written, aside);
      throw replaced(dir, name, before, now, 'while it was written', 'what reached the directory there now was taken back');
    }
    // The chain not written (a full disk, say): the metadata as it was, so the old chain (or none) is never left
    // beside metadata pinned for the new one, which a restart would refuse, or a renewal tool's next chain meet.
    putBack(aside, paths.metaPath);
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot write '${name}' to the certificate store ${dir}: ${errno(err)}`, {
      cause: err,
    });
  }
  try {
    const after = directoryId(dir);
    if (after !== before) {
      takeBack(dir, paths, written, aside);
      throw replaced(dir, name, before, after, 'while it was written', 'what reached the directory there now was taken back');
    }
  } finally {
    if (typeof aside === 'string') unlinkQuietly(aside);
  }
}

/** Removes entry `name`: the chain first, then the metadata. Throws KEYEDGE_ERR_CERT_NOT_FOUND when there is no chain file. */
export function removeEntry(dir: string, name: string): void {
  checkEntryName(name);
  const paths = entryPaths(dir, name);
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
  fsyncDir(dir);
}

/** The entry's paths, once its name is checked and neither file is a link (store-links.ts). */
export function ownedPaths(dir: string, name: string): EntryPaths {
  checkEntryName(name);
  const paths = entryPaths(dir, name);
  refuseLinkedEntry(name, paths);
  return paths;
}

/**
 * The files this write put at `paths` in the directory now there, undone:
 * the chain unlinked first (as a removal does), then the metadata put back
 * from its aside (when that was made in this directory) or unlinked. What
 * another writer put there since is left alone. Best effort.
 */
function takeBack(dir: string, paths: EntryPaths, written: { meta?: string; chain?: string }, aside: string | null | undefined): void {
  if (written.chain !== undefined && fileId(paths.chainPath) === written.chain) unlinkQuietly(paths.chainPath);
  if (written.meta !== undefined && fileId(paths.metaPath) === written.meta) {
    putBack(aside, paths.metaPath);
    if (fileId(paths.metaPath) === written.meta) unlinkQuietly(paths.metaPath);
  }
  try {
    fsyncDir(dir);
  } catch {
    // Gone as well: nothing there to make durable.
  }
}

function replaced(dir: string, name: string, was: string, now: string | undefined, when: string, outcome: string): CertificateStoreError {
  return new CertificateStoreError(
    'KEYEDGE_ERR_CERT_STORE_GONE',
    name,
    `the certificate store ${dir} was replaced by another directory (device:inode ${was}, now ${now ?? 'none'}) ${when}: ` +
      `certificate '${name}' was refused and ${outcome}; the proxy keeps serving what it read before. Write it again once the store directory is settled`,
  );
}
