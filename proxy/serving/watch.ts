/**
 * Change detection for the reload path: fs.watch on the certificate store
 * and on the config file's directory (a file replaced by rename is a new
 * inode, which a watch on the file itself would lose), debounced so that a
 * tool writing several files triggers one reload, plus a periodic rescan for
 * filesystems where fs.watch says nothing (NFS, some container mounts).
 *
 * Chains that live elsewhere are followed too: the config's `certificates`
 * and the store's symlinks, through every link to the file they end at.
 * certbot renews by writing archive/NAME/fullchainN.pem and re-pointing
 * live/NAME/fullchain.pem at it, so the directory holding each link (the
 * re-point) and the one holding the final file (a rewrite in place) are
 * watched, for those names only. The set is recomputed after every reload
 * this module triggers and at every rescan, since a re-point moves it.
 *
 * A directory on a followed path may itself be a link, re-pointed to swap
 * every file under it at once: Kubernetes mounts a ConfigMap or Secret as
 * `config.json → ..data/config.json`, `..data → ..2026_12_07_…/`, and an
 * update renames a new `..data` over the old one. The only event is the
 * link's, named `..data`, in the mount's directory: the directory holding
 * each such link is watched for its name too. The config file is followed
 * this way as well, beside the watch on its own directory for its own name:
 * a config file mounted from a ConfigMap was seen changed only by the next
 * rescan (30 s by default).
 *
 * An event in the store directory names its file: a burst that touched only
 * store entries reloads naming them (the reload then looks at those entries
 * alone, prepare.ts `only`); any other event, or one without a file name,
 * asks for a whole pass.
 *
 * The store directory's parent is watched for the store's name: a directory
 * swapped for another is watched in its place, and one gone, or replaced by
 * an empty one, asks for a whole pass (which refuses it, certs/store-dir.ts,
 * rather than serving nothing).
 *
 * Lifecycle: `watchForChanges()` returns a stop function; the callback is
 * never called after it.
 */
import { type FSWatcher, lstatSync, mkdirSync, readlinkSync, realpathSync, watch } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../keyserver/shared/log.js';
import { directoryId } from '../certs/store-dir.js';

/** Long enough to cover a temp-file + rename + metadata write, short enough to stay well inside a second. */
const DEBOUNCE_MS = 150;
/** Links followed per chain before giving up (the kernel's own limit for a path is 40). */
const MAX_HOPS = 8;
/**
 * Directories watched for followed chains. Each is one inotify watch, of a
 * per-user budget (fs.inotify.max_user_watches); beyond this the periodic
 * rescan covers the rest.
 */
const MAX_FOLLOWED_DIRS = 1_000;

export interface WatchOptions {
  readonly storeDir: string;
  readonly configFile: string | undefined;
  readonly rescanSeconds: number;
  /** Resolves (or rejects) once the reload it started is done. `names`: the store entries a burst of events touched, when it touched nothing else. */
  readonly onChange: (trigger: 'watch' | 'rescan', names?: ReadonlySet<string>) => unknown;
  /** Chain paths outside the store directory, or links out of it, to follow; asked again after each reload. */
  readonly followed?: () => readonly string[];
  readonly log: Logger;
}

export function watchForChanges(options: WatchOptions): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  // The entries touched since the last run; undefined once something else changed.
  let touched: Set<string> | undefined = new Set();
  const run = (trigger: 'watch' | 'rescan', names?: ReadonlySet<string>): void => {
    if (stopped) return;
    // Followed either way, and a rejection is the reload's to report: never an unhandled one here.
    const refollow = (): void => {
      if (!stopped) follow();
    };
    Promise.resolve()
      .then(() => (names === undefined ? options.onChange(trigger) : options.onChange(trigger, names)))
      .then(refollow, refollow);
  };
  const changed = (entry?: string): void => {
    if (stopped) return;
    if (entry === undefined) touched = undefined;
    else touched?.add(entry);
    clearTimeout(timer);
    timer = setTimeout(() => {
      const names = touched;
      touched = new Set();
      run('watch', names);
    }, DEBOUNCE_MS);
  };
  const open = (dir: string, accept: (file: string | null) => boolean, entryOf?: (file: string) => string): FSWatcher | undefined => {
    try {
      const watcher = watch(dir, { persistent: false }, (_event, file) => accept(file) && changed(file === null ? undefined : entryOf?.(file)));
      watcher.on('error', (err) => options.log.warn({ dir, reason: err.message }, 'file watch failed; relying on the periodic rescan'));
      return watcher;
    } catch (err) {
      options.log.warn({ dir, reason: (err as Error).message }, 'cannot watch for changes; relying on the periodic rescan');
      return undefined;
    }
  };
  const watchers: FSWatcher[] = [];
  const add = (dir: string, accept: (file: string | null) => boolean, entryOf?: (file: string) => string): void => {
    const watcher = open(dir, accept, entryOf);
    if (watcher !== undefined) watchers.push(watcher);
  };
  mkdirSync(options.storeDir, { recursive: true });
  // Temp files of an atomic write are not changes yet: their rename is.
  const watchStore = (): FSWatcher | undefined =>
    open(
      options.storeDir,
      (file) => file === null || /\.(pem|json)$/.test(file),
      (file) => file.replace(/\.(pem|json)$/, ''),
    );
  let storeWatcher = watchStore();
  // A watch follows the directory it was opened on, not its path: after a deploy's `mv certs certs.old; mv
  // certs.new certs` it would watch certs.old. The parent is watched for the store's name; a directory gone or
  // another one in its place asks for a whole pass, and the store's watch is opened again on the one there now.
  let storeId = directoryId(options.storeDir);
  const storeName = path.basename(options.storeDir);
  add(path.dirname(options.storeDir), (file) => {
    if (file !== null && file !== storeName) return false;
    const now = directoryId(options.storeDir);
    if (now === storeId) return false;
    storeId = now;
    storeWatcher?.close();
    storeWatcher = now === undefined ? undefined : watchStore();
    return true;
  });
  if (options.configFile !== undefined) {
    const base = path.basename(options.configFile);
    add(path.dirname(options.configFile), (file) => file === null || file === base);
  }

  // Followed directories: the names that matter in each, and its watcher.
  const followedDirs = new Map<string, { names: Set<string>; watcher: FSWatcher | undefined }>();
  let warnedFull = false;
  const follow = (): void => {
    const wanted = new Map<string, Set<string>>();
    const linkedDirs = new Map<string, boolean>();
    const files = options.followed?.() ?? [];
    for (const file of options.configFile === undefined ? files : [options.configFile, ...files]) {
      for (const hop of hops(file, linkedDirs)) {
        const dir = path.dirname(hop);
        // The store directory is watched already, for every chain in it.
        if (dir === options.storeDir) continue;
        let names = wanted.get(dir);
        if (names === undefined) wanted.set(dir, (names = new Set()));
        names.add(path.basename(hop));
      }
    }
    for (const [dir, followed] of followedDirs) {
      if (wanted.has(dir)) continue;
      followed.watcher?.close();
      followedDirs.delete(dir);
    }
    for (const [dir, names] of wanted) {
      const followed = followedDirs.get(dir);
      if (followed !== undefined) {
        followed.names = names;
        continue;
      }
      if (followedDirs.size >= MAX_FOLLOWED_DIRS) {
        if (!warnedFull) options.log.warn({ dirs: MAX_FOLLOWED_DIRS }, 'too many chain directories to watch; the others rely on the periodic rescan');
        warnedFull = true;
        break;
      }
      const entry = { names, watcher: undefined as FSWatcher | undefined };
      entry.watcher = open(dir, (file) => file === null || entry.names.has(file));
      followedDirs.set(dir, entry);
    }
  };
  follow();

  const rescan = setInterval(() => run('rescan'), options.rescanSeconds * 1000);
  rescan.unref();
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearInterval(rescan);
    storeWatcher?.close();
    for (const watcher of watchers) watcher.close();
    for (const { watcher } of followedDirs.values()) watcher?.close();
    followedDirs.clear();
  };
}

/**
 * `file` and every path its links lead to, ending with the file itself: for
 * live/x/fullchain.pem → ../../archive/x/fullchain2.pem, both paths. A path
 * that does not exist (yet) is kept: its directory is where it will appear.
 * Each directory on those paths that is a link (`..data` of a Kubernetes
 * mount) is one too, so that its parent is watched for its name. `linkedDirs`
 * remembers, for one recomputation, which directories are links: thousands
 * of store symlinks share their directories.
 */
function hops(file: string, linkedDirs: Map<string, boolean>): string[] {
  const out = [path.resolve(file)];
  for (let i = 0; i < MAX_HOPS; i++) {
    const current = out[out.length - 1]!;
    let target: string;
    try {
      if (!lstatSync(current).isSymbolicLink()) break;
      target = readlinkSync(current);
    } catch {
      break;
    }
    out.push(path.resolve(path.dirname(current), target));
  }
  for (const hop of [...out]) {
    for (let dir = path.dirname(hop); dir !== path.dirname(dir); dir = path.dirname(dir)) {
      let linked = linkedDirs.get(dir);
      if (linked === undefined) {
        try {
          linked = lstatSync(dir).isSymbolicLink();
        } catch {
          linked = false;
        }
        linkedDirs.set(dir, linked);
      }
      if (linked) out.push(dir);
    }
  }
  // A directory on the way may itself be a link (/etc/letsencrypt moved to another disk): watch where the file really is too.
  try {
    const real = realpathSync(out[out.length - 1]!);
    if (real !== out[out.length - 1]) out.push(real);
  } catch {
    // Not there (yet): nothing more to follow.
  }
  return out;
}
