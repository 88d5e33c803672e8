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
 * A lock is told from another by its content, the holder's pid, pid space and
 * a random token, not by its device and inode: a file system such as ext4
 * gives a file made just after one was unlinked that one's inode, so the
 * stalled writer's release, and a taker that judged the lock before it was
 * taken over, unlinked the new holder's lock, and a third writer wrote beside
 * it. Taking over a stale lock is done under `.<name>.lock.break` (O_EXCL
 * too, microseconds): two writers that both found it stale unlinked it, and
 * the lock one of them made in between.
 *
 * Synchronous, as the write is: the wait blocks the caller's thread for at
 * most LOCK_WAIT_MS, and only while another writer writes the same entry.
 * A lock (or takeover guard) is read through config/setting-file.ts, opened
 * without blocking and only if a regular file of at most MAX_LOCK_BYTES: a
 * FIFO put in its place held open(2), and the writer's thread (the primary's
 * event loop, for an upload or a renewal) with it, until a writer came. Such
 * a file refuses the write (KEYEDGE_ERR_CERT_STORE) naming it; it is never
 * taken for a lock, nor removed.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, type Stats, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { readChecked, refusal } from '../../config/setting-file.js';
import { StoreConflictError } from '../store/storage.js';
import { CertificateStoreError } from './errors.js';
import { errno, PID_SPACE, unlinkQuietly } from './store-files.js';
import { writerGone } from './store-leftovers.js';

/** How long a write waits for another writer of the same entry: its two fsyncs, on a slow disk. */
const LOCK_WAIT_MS = 500;
const POLL_MS = 10;
/** Attempts after finding the lock free (released, or stale and removed) before giving up. */
const MAX_RETRIES = 20;
/** A lock older than this is a writer's killed midway, whatever pid space it was in: a write takes milliseconds. */
export const STALE_LOCK_MS = 60_000;
/** Far past a lock's pid, pid space and token. */
const MAX_LOCK_BYTES = 4096;

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
  const mine = `${process.pid} ${PID_SPACE} ${randomBytes(8).toString('hex')}\n`;
  let retries = 0;
  for (;;) {
    let fd: number;
    try {
      fd = openSync(file, 'wx', 0o644);
    } catch (err) {
      if (errno(err) !== 'EEXIST') {
        throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot lock '${name}' in the certificate store ${dir}: ${errno(err)}`, { cause: err });
      }
      let holder: ReturnType<typeof lockHolder>;
      let free: boolean;
      try {
        holder = lockHolder(file);
        // Free now (released, or stale and taken over here or by another writer): tried again at once, a bounded
        // number of times (a lock that cannot be removed is not free). Stale but another writer taking it over: waited for.
        free = holder === undefined || (holder.stale && takeOver(file, holder.identity));
      } catch (err) {
        if (!(err instanceof NotALock)) throw err;
        throw new CertificateStoreError(
          'KEYEDGE_ERR_CERT_STORE',
          name,
          `cannot lock '${name}' in the certificate store ${dir}: its lock file ${join(dir, basename(err.file))} is ${err.reason}; nothing was written (remove that file)`,
        );
      }
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
    try {
      writeSync(fd, mine);
    } catch (err) {
      // Not left behind empty (a full disk): every other writer would wait for it until it is stale.
      unlinkQuietly(file);
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot lock '${name}' in the certificate store ${dir}: ${errno(err)}`, { cause: err });
    } finally {
      closeSync(fd);
    }
    // Only its own lock: one taken over (this writer stalled past STALE_LOCK_MS) is the new holder's, whatever its inode.
    return () => {
      if (contentOf(file) === mine) unlinkQuietly(file);
    };
  }
}

/**
 * Removes the stale lock at `file` whose identity was `stale`, under the takeover guard: no other taker unlinks it
 * meanwhile, so what is there is that lock still (removed) or a new holder's (left). True when the lock is no longer
 * the stale one (try again at once), false while another writer takes it over (wait).
 */
function takeOver(file: string, stale: string): boolean {
  const guard = `${file}.break`;
  let fd: number;
  try {
    fd = openSync(guard, 'wx', 0o644);
  } catch {
    // Another taker's, held for microseconds; one killed holding it left it: stale as a lock is, removed (then tried again).
    const taker = lockHolder(guard);
    if (taker === undefined) return true;
    if (!taker.stale) return false;
    if (identityOf(guard) === taker.identity) unlinkQuietly(guard);
    return true;
  }
  try {
    try {
      writeSync(fd, `${process.pid} ${PID_SPACE}\n`);
    } finally {
      closeSync(fd);
    }
    if (identityOf(file) === stale) unlinkQuietly(file);
  } catch {
    // The guard not written (a full disk): removed below, as the lock is left.
  } finally {
    unlinkQuietly(guard);
  }
  return true;
}

/** A file in a lock's (or takeover guard's) place that is not one: a FIFO, a device, a directory, one past MAX_LOCK_BYTES. */
class NotALock extends Error {
  readonly file: string;
  readonly reason: string;
  constructor(file: string, reason: string) {
    super(`${file}: ${reason}`);
    this.file = file;
    this.reason = reason;
  }
}

/**
 * The lock at `file`, read without blocking (setting-file.ts) with the stat of the descriptor read; undefined when
 * there is none now (or it cannot be read); NotALock thrown for a file that is not a lock's.
 */
function readLock(file: string): { readonly stat: Stats; readonly text: string } | undefined {
  try {
    const { bytes, stat } = readChecked(file, (stat) => {
      const refused = refusal(stat, MAX_LOCK_BYTES);
      if (refused !== undefined) throw new NotALock(file, refused);
    });
    return { stat, text: bytes.toString('utf8') };
  } catch (err) {
    if (err instanceof NotALock) throw err;
    return undefined;
  }
}

/**
 * A lock's identity: its content (a random token in a lock of this version), with its device and inode (an empty
 * one, whose writer died before writing it, is told from a new holder's not yet written by its inode, unless reused).
 */
function identityOf(file: string): string | undefined {
  try {
    const lock = readLock(file);
    return lock === undefined ? undefined : `${lock.stat.dev}:${lock.stat.ino} ${lock.text}`;
  } catch {
    return undefined;
  }
}

function contentOf(file: string): string | undefined {
  try {
    return readLock(file)?.text;
  } catch {
    return undefined;
  }
}

/**
 * Who holds the lock at `file`: its identity, its pid when written yet, and whether it is stale; undefined when there
 * is none now. NotALock when what is there is no lock.
 */
function lockHolder(file: string): { readonly identity: string; readonly pid: number | undefined; readonly stale: boolean } | undefined {
  const lock = readLock(file);
  if (lock === undefined) return undefined;
  const { stat, text } = lock;
  const identity = `${stat.dev}:${stat.ino} ${text}`;
  const [pidText, space] = text.trim().split(' ');
  const pid = /^\d+$/.test(pidText ?? '') ? Number(pidText) : undefined;
  // A pid is looked up in its own pid space only: another container's or host's names no process here, or another one.
  const gone = pid !== undefined && space === PID_SPACE && writerGone(pid);
  return { identity, pid, stale: gone || Date.now() - stat.mtimeMs > STALE_LOCK_MS };
}
