/**
 * One writer of a store entry at a time, whichever process it is in: the
 * proxy's primary (an upload, an ACME renewal) and `keyedge cert` commands
 * or renewal hooks writing the same directory.
 *
 * Why: a write is two renames, the metadata's then the chain's, with the
 * chain's fsync between them (store-write.ts); on a busy disk that is a
 * window of milliseconds to seconds. Two writers whose renames interleave
 * (metadata A, metadata B, chain B, chain A) left A's chain beside B's
 * metadata: neither write, both reported done, and an entry whose pinned key
 * is not its chain's, refused by every reload (the previous certificate
 * served on) and by every start after (the name no longer served at all).
 * In-turn uploads (serving/in-turn.ts) cover the proxy's own writers only.
 *
 * How: `.<name>.lock` in the directory written, made with O_EXCL and holding
 * the writer's pid and pid space (store-files.ts PID_SPACE), removed once
 * the write is done. A writer that finds it waits up to LOCK_WAIT_MS (two
 * fsyncs), then is refused with KEYEDGE_ERR_STORE_CONFLICT, nothing written:
 * it is told, and its caller (the operator, the renewal's retry) writes
 * again. A lock whose writer is gone (its pid, looked up in its own pid space
 * only, as store-leftovers.ts does) or that is older than STALE_LOCK_MS (a
 * write takes milliseconds; a writer in another pid space killed midway) is
 * taken over. A dot name: listings and the watch ignore it.
 *
 * Synchronous, as the write is: the wait blocks the caller's thread for at
 * most LOCK_WAIT_MS, and only while another writer writes the same entry.
 */
import { closeSync, fstatSync, lstatSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { StoreConflictError } from '../store/storage.js';
import { CertificateStoreError } from './errors.js';
import { errno, fileId, PID_SPACE, unlinkQuietly } from './store-files.js';
import { writerGone } from './store-leftovers.js';

/** How long a write waits for another writer of the same entry: its two fsyncs, on a slow disk. */
const LOCK_WAIT_MS = 500;
const POLL_MS = 10;
/** Attempts after finding the lock free (released, or stale and removed) before giving up. */
const MAX_RETRIES = 20;
/** A lock older than this is a writer's killed midway, whatever pid space it was in: a write takes milliseconds. */
export const STALE_LOCK_MS = 60_000;

const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Takes entry `name`'s write lock in the directory held as `at` (`dir` for
 * messages); returns its release. Throws StoreConflictError when another
 * writer holds it for longer than LOCK_WAIT_MS, CertificateStoreError
 * KEYEDGE_ERR_CERT_STORE when it cannot be made.
 */
export function lockEntry(at: string, dir: string, name: string): () => void {
  const file = join(at, `.${name}.lock`);
  const deadline = Date.now() + LOCK_WAIT_MS;
  let retries = 0;
  for (;;) {
    let fd: number;
    try {
      fd = openSync(file, 'wx', 0o644);
    } catch (err) {
      if (errno(err) !== 'EEXIST') {
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot lock '${name}' in the certificate store ${dir}: ${errno(err)}`, { cause: err });
      }
      const holder = lockHolder(file);
      // Stale: taken over, unless another writer took it over first (its identity is another file's then).
      if (holder?.stale === true && fileId(file) === holder.id) unlinkQuietly(file);
      // Free now: tried again at once (a bounded number of times: a lock that cannot be removed is not free).
      const free = holder === undefined || holder.stale;
      if (free && ++retries <= MAX_RETRIES) continue;
      if (free || Date.now() >= deadline) {
        throw new StoreConflictError(
          `certificate '${name}' is being written to the certificate store ${dir} by another writer${holder?.pid === undefined ? '' : ` (pid ${holder.pid})`}: ` +
            'nothing was written, so the two writes cannot mix; write it again once that write is done (it validates against what that write left)',
        );
      }
      Atomics.wait(pause, 0, 0, POLL_MS);
      continue;
    }
    let id: string;
    try {
      writeSync(fd, `${process.pid} ${PID_SPACE}\n`);
      const stat = fstatSync(fd);
      id = `${stat.dev}:${stat.ino}`;
    } catch (err) {
      // Not left behind empty (a full disk): every other writer would wait for it until it is stale.
      unlinkQuietly(file);
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot lock '${name}' in the certificate store ${dir}: ${errno(err)}`, { cause: err });
    } finally {
      closeSync(fd);
    }
    // Only its own lock: one taken over (this writer stalled past STALE_LOCK_MS) is the new holder's.
    return () => {
      if (fileId(file) === id) unlinkQuietly(file);
    };
  }
}

/** Who holds the lock at `file`: its pid when written yet, and whether it is stale; undefined when there is none now. */
function lockHolder(file: string): { readonly id: string; readonly pid: number | undefined; readonly stale: boolean } | undefined {
  let id: string;
  let mtimeMs: number;
  let text: string;
  try {
    const stat = lstatSync(file);
    id = `${stat.dev}:${stat.ino}`;
    mtimeMs = stat.mtimeMs;
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const [pidText, space] = text.trim().split(' ');
  const pid = /^\d+$/.test(pidText ?? '') ? Number(pidText) : undefined;
  // A pid is looked up in its own pid space only: another container's or host's names no process here, or another one.
  const gone = pid !== undefined && space === PID_SPACE && writerGone(pid);
  return { id, pid, stale: gone || Date.now() - mtimeMs > STALE_LOCK_MS };
}
