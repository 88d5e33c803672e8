/**
 * Change detection for the reload path: fs.watch on the certificate store
 * and on the config file's directory (a file replaced by rename is a new
 * inode, which a watch on the file itself would lose), debounced so that a
 * tool writing several files triggers one reload, plus a periodic rescan for
 * filesystems where fs.watch says nothing (NFS, some container mounts).
 *
 * Lifecycle: `watchForChanges()` returns a stop function; the callback is
 * never called after it.
 */
import { type FSWatcher, mkdirSync, watch } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../keyserver/log.js';

/** Long enough to cover a temp-file + rename + metadata write, short enough to stay well inside a second. */
const DEBOUNCE_MS = 150;

export interface WatchOptions {
  readonly storeDir: string;
  readonly configFile: string | undefined;
  readonly rescanSeconds: number;
  readonly onChange: (trigger: 'watch' | 'rescan') => void;
  readonly log: Logger;
}

export function watchForChanges(options: WatchOptions): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const changed = (): void => {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(() => !stopped && options.onChange('watch'), DEBOUNCE_MS);
  };
  const watchers: FSWatcher[] = [];
  const add = (dir: string, accept: (file: string | null) => boolean): void => {
    try {
      const watcher = watch(dir, { persistent: false }, (_event, file) => accept(file) && changed());
      watcher.on('error', (err) => options.log.warn({ dir, reason: err.message }, 'file watch failed; relying on the periodic rescan'));
      watchers.push(watcher);
    } catch (err) {
      options.log.warn({ dir, reason: (err as Error).message }, 'cannot watch for changes; relying on the periodic rescan');
    }
  };
  mkdirSync(options.storeDir, { recursive: true });
  // Temp files of an atomic write are not changes yet: their rename is.
  add(options.storeDir, (file) => file === null || /\.(pem|json)$/.test(file));
  if (options.configFile !== undefined) {
    const base = path.basename(options.configFile);
    add(path.dirname(options.configFile), (file) => file === null || file === base);
  }
  const rescan = setInterval(() => !stopped && options.onChange('rescan'), options.rescanSeconds * 1000);
  rescan.unref();
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearInterval(rescan);
    for (const watcher of watchers) watcher.close();
  };
}
