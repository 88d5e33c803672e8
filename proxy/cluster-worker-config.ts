/**
 * The configuration a worker runs on: the primary's running one, handed over
 * in a file of the state directory, not the config file read again. A worker
 * forked after the file was saved (a replacement, after a crash or a hung
 * start) read the file itself, and so took every restart-only setting the
 * file changed while the primary and the other workers kept the running ones
 * (serving/restart-only.ts RESTART_ONLY): a key server the file named for after a
 * planned restart, which held none of the served keys, failed that worker's
 * handshakes. The running configuration is resolved and frozen (paths
 * absolute), so it is written as it is; the file is the primary's, mode 0600
 * (the config file's own secrets, an on-demand `ask` URL's credentials, stay
 * in the state directory), and each fork writes one of its own, whole, before
 * the worker starts, removed once the worker read it (or is gone). One file
 * for every fork was shared by every proxy of the state directory (two on a
 * host, finding their key server's socket in the default ./var): a worker
 * forked by one could read the other's configuration, written meanwhile, and
 * start on its listeners (EADDRINUSE, held by the other's primary), its key
 * server and its limits.
 *
 * A primary killed with SIGKILL (or the host losing power) between a fork and
 * its worker's read leaves that fork's file behind, and nothing removed it:
 * each such crash left one more copy of the running configuration in the
 * state directory. A primary removes, at its start, the files of this
 * pattern (and their .tmp) whose primary's pid is no running process (or is
 * its own, under another random part: a container's pid 1 restarted) and
 * which were written more than `workerStartTimeoutMs` ago (mtime): a worker that has not
 * read its file by then was killed by its own primary. The age spares a file
 * of a primary in another container sharing the directory, whose pid this
 * one cannot see or shares.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deepFreeze } from '../config/deep-freeze.js';
import type { ProxyConfig } from '../config/proxy-schema.js';

/** A fork's file (or its temp file), workerConfigEnv's name: the primary's pid, its random part, the fork's number. */
const FILE = /^worker-config-(\d+)-([0-9a-f]{8})-\d+\.json(\.tmp)?$/;
/** The variable naming the file to a forked worker. */
const WORKER_CONFIG = 'KEYEDGE_WORKER_CONFIG';
/** Names this primary's files apart from another's of the same pid (another container's, sharing the state directory). */
const PRIMARY = randomBytes(4).toString('hex');
let forks = 0;

/**
 * Writes `config` for the worker about to be forked; returns the environment that names it. A state directory that
 * cannot take it (full, read-only) leaves the worker reading the config file, as before: said once, not a failed fork.
 */
export function workerConfigEnv(config: ProxyConfig, warn: (message: string) => void): Record<string, string> {
  // This primary's (its pid and a random part: in containers sharing the directory, each primary may be pid 1) and this fork's.
  const file = join(config.stateDir, `worker-config-${process.pid}-${PRIMARY}-${++forks}.json`);
  try {
    mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
    // Made afresh: a mode applies only to a file the write creates, so a tmp file left over (a primary stopped
    // between the write and the rename) kept its own, 0644, and a link there was written through. 'wx' (O_EXCL):
    // one put there again since the unlink fails the write rather than being written.
    rmSync(`${file}.tmp`, { force: true });
    writeFileSync(`${file}.tmp`, JSON.stringify(config), { mode: 0o600, flag: 'wx' });
    renameSync(`${file}.tmp`, file);
    return { [WORKER_CONFIG]: file };
  } catch (err) {
    warn(`cannot write the running configuration for a new worker to ${file} (${(err as Error).message}): it reads the config file`);
    return {};
  }
}

/** Removes the file `env` (workerConfigEnv's) names, if any: its worker read it, or is gone. Never throws. */
export function removeWorkerConfig(env: Record<string, string>): void {
  const file = env[WORKER_CONFIG];
  try {
    if (file !== undefined) rmSync(file, { force: true });
  } catch {
    // A read-only state directory: the file stays, 0600, as it was written.
  }
}

/** In a forked worker: the configuration its primary runs on, its file then removed; undefined elsewhere (then the config file is read). */
export function runningConfigOfWorker(): ProxyConfig | undefined {
  const file = process.env[WORKER_CONFIG];
  if (file === undefined) return undefined;
  const config = deepFreeze(JSON.parse(readFileSync(file, 'utf8')) as ProxyConfig);
  removeWorkerConfig({ [WORKER_CONFIG]: file });
  return config;
}

/**
 * At a primary's start: removes the fork files left by a primary that is gone (its pid no running process), written
 * more than `olderThanMs` ago (their mtime: written once, by their primary); returns the names removed. Any other file of the state directory is left alone. Never throws:
 * a state directory that cannot be listed or written leaves them, as before.
 */
export function removeStaleWorkerConfigs(stateDir: string, olderThanMs: number, now = Date.now()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(stateDir);
  } catch {
    return removed;
  }
  for (const name of names) {
    const match = FILE.exec(name);
    if (match === null || match[2] === PRIMARY) continue;
    // Its own pid under another random part: a primary of this pid before this one (a container's pid 1, restarted).
    const pid = Number(match[1]);
    if (pid !== process.pid && running(pid)) continue;
    const file = join(stateDir, name);
    try {
      const stat = statSync(file);
      if (!stat.isFile() || now - stat.mtimeMs < olderThanMs) continue;
      rmSync(file, { force: true });
      removed.push(name);
    } catch {
      // Gone meanwhile, or a read-only state directory: left as it is.
    }
  }
  return removed;
}

/** Whether `pid` is a process this one can see (EPERM: another user's, running). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
