/**
 * Side files a writer killed mid-write left in the store directory: the temp
 * file of an atomic write and the `.aside` hard link to the metadata it was
 * replacing (store-files.ts). Listings and the watch ignore them (dot
 * names), so they are harmless, but nothing else would ever remove them: a
 * renewal hook killed by its timeout every night leaves one a night.
 *
 * A side file is removed only when no write can still be using it: its
 * writer's pid (in its name) is this process's own (whose store writes are
 * synchronous, so none is in progress while this runs) or names no running
 * process. A live pid keeps it, whoever it is now: a write in progress is
 * never broken, at worst a leftover waits for the next sweep. Swept when the
 * proxy starts (the whole directory) and when `keyedge cert add`/`replace`
 * writes an entry (its own side files): the proxy's own writes are
 * synchronous and leave none while it lives, and listing the directory at
 * each of them would cost an upload a quarter second in a store of 100,000
 * entries (measured: readdir of 200,000 names, 255 ms). A pid is looked up only when the writer's pid namespace (in
 * the name too, store-files.ts) is this process's: a writer in a container
 * sharing the volume, or on another host of a network file system, has pids
 * that name no process here, or another one (pid 1 is every container's), so
 * its files are removed only once STALE_SIDE_FILE_MS old. Left to a sweep in
 * their own namespace, the side files of a previous boot (another boot id, so
 * another pid space) or of a container gone for good stayed for ever.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { PID_SPACE, SIDE_FILE, unlinkQuietly } from './store-files.js';

/**
 * Age (since its last change: ctime, which an `.aside` link's making sets,
 * where its mtime is the old metadata's) past which a side file of another
 * pid space is a leftover: STALE_LOCK_MS (store-lock.ts, which imports this
 * module), past which its writer's lock is taken over, so no write of it can
 * still be going on. A write takes milliseconds.
 */
export const STALE_SIDE_FILE_MS = 60_000;

/**
 * Removes the leftover side files of entry `entry` (every entry's when
 * undefined); returns the names removed. Best effort: a directory that cannot
 * be listed, or a file already gone, is not an error.
 */
export function sweepLeftovers(dir: string, entry?: string, now = Date.now()): string[] {
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const file of files) {
    const side = SIDE_FILE.exec(file);
    if (side === null) continue;
    const [, target, pid, space] = side;
    if (entry !== undefined && target !== `${entry}.pem` && target !== `${entry}.json`) continue;
    if (!/\.(pem|json)$/.test(target!)) continue;
    if (space === PID_SPACE ? !writerGone(Number(pid)) : !olderThan(join(dir, file), STALE_SIDE_FILE_MS, now)) continue;
    unlinkQuietly(join(dir, file));
    removed.push(file);
  }
  return removed;
}

/** Whether `file` last changed more than `ms` before `now`; false when it cannot be looked at (gone already). */
function olderThan(file: string, ms: number, now: number): boolean {
  try {
    return now - lstatSync(file).ctimeMs > ms;
  } catch {
    return false;
  }
}

/** Whether no write by the writer of pid `pid` (of this pid space) can be in progress: it is this process (whose store writes are synchronous) or none. */
export function writerGone(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    // Signal 0: no signal sent, only whether the process exists.
    process.kill(pid, 0);
    return false;
  } catch (err) {
    // EPERM: it exists, as another user's process.
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
