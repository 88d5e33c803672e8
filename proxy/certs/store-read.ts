/**
 * Reading one store entry whole: its chain text and metadata as they are
 * now, the chain's size and mtime taken from the descriptor it was read
 * through, so they describe exactly the text returned. The chain is opened
 * without blocking and refused by type or size before it is read
 * (store-files.ts); the metadata is read and checked as store-meta.ts says.
 * Synchronously for a single entry, or with the chain read on libuv's pool
 * for a start reading 100,000 entries.
 */
import { closeSync, fstatSync, openSync, readFileSync, type Stats } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { CertificateError, CertificateStoreError } from './errors.js';
import { checkChainFile, errno, READ_CHAIN } from './store-files.js';
import { readMeta, type StoreEntry } from './store-meta.js';
import { checkEntryName, type EntryPaths, entryPaths } from './store-paths.js';

/**
 * The entry's chain text and metadata. Throws CertificateStoreError
 * KEYEDGE_ERR_CERT_NOT_FOUND when there is no chain file, CertificateError
 * (reason 'parse') naming the file when either file is unreadable or the
 * metadata invalid. `withMeta: false`: no metadata file is opened.
 */
export function readEntry(dir: string, name: string, withMeta: boolean): StoreEntry {
  checkEntryName(name);
  const paths = entryPaths(dir, name);
  let fd: number;
  try {
    fd = openSync(paths.chainPath, READ_CHAIN);
  } catch (err) {
    throw openFailed(dir, name, paths, err);
  }
  let chainText: string;
  let stat: Stats;
  try {
    // One descriptor for stat and content: the size and mtime describe exactly the text returned.
    stat = fstatSync(fd);
    checkChainFile(stat, paths.chainPath, name);
    chainText = readFileSync(fd, 'utf8');
  } catch (err) {
    throw readFailed(name, paths, err);
  } finally {
    closeSync(fd);
  }
  return withMetadata(name, paths, stat, chainText, withMeta);
}

/** As readEntry(), the chain read off the main thread; the metadata, small and rare, as readEntry() reads it. */
export async function readEntryAsync(dir: string, name: string, withMeta: boolean): Promise<StoreEntry> {
  checkEntryName(name);
  const paths = entryPaths(dir, name);
  let handle: FileHandle;
  try {
    handle = await open(paths.chainPath, READ_CHAIN);
  } catch (err) {
    throw openFailed(dir, name, paths, err);
  }
  let chainText: string;
  let stat: Stats;
  try {
    stat = await handle.stat();
    checkChainFile(stat, paths.chainPath, name);
    chainText = await handle.readFile('utf8');
  } catch (err) {
    throw readFailed(name, paths, err);
  } finally {
    await handle.close();
  }
  return withMetadata(name, paths, stat, chainText, withMeta);
}

function withMetadata(name: string, paths: EntryPaths, stat: Stats, chainText: string, withMeta: boolean): StoreEntry {
  const { meta, mtimeMs: metaMtimeMs } = withMeta ? readMeta(name, paths.metaPath) : { meta: {}, mtimeMs: undefined };
  return { name, ...paths, mtimeMs: stat.mtimeMs, size: stat.size, metaMtimeMs, chainText, meta };
}

function openFailed(dir: string, name: string, paths: EntryPaths, err: unknown): Error {
  if (errno(err) === 'ENOENT')
    return new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${dir}`, { cause: err });
  return new CertificateError(paths.chainPath, `cannot read the chain: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
}

function readFailed(name: string, paths: EntryPaths, err: unknown): Error {
  if (err instanceof CertificateError) return err;
  return new CertificateError(paths.chainPath, `cannot read the chain: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
}
