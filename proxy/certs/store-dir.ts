/**
 * The certificate store directory itself, as the reload path sees it from
 * one pass to the next: which directory its path names now (device and
 * inode), and the refusals that keep its entries serving when the directory
 * they were read from is away.
 *
 * Two ways a store can look empty without anyone having removed an entry:
 *   - the directory is gone: renamed away (`mv certs certs.old`, a deploy
 *     about to swap in another) or a volume not mounted yet;
 *   - another directory holding no certificate took its place:
 *     `rm -rf certs && mkdir certs`, `mv certs certs.old && mkdir certs`, a
 *     deploy tool swapping in a directory it has not filled yet, a symlinked
 *     store re-pointed at an empty release.
 * Taken as an empty store, either would stop serving every entry at once.
 * Both are refused (KEYEDGE_ERR_CERT_STORE_GONE, naming the directory), so
 * a reload keeps everything serving and an upload is not written into the
 * stand-in. What stays legitimate: entries removed from the same directory
 * (the last one too: the store is then empty and taken as such), and another
 * directory that holds certificates, which is taken whole (a deploy's
 * `mv certs.new certs`, a Kubernetes secret volume's `..data` re-pointed).
 */
import { closeSync, constants as fsConstants, openSync, type Stats, statSync } from 'node:fs';
import { CertificateStoreError } from './errors.js';
import { errno } from './store-files.js';

/** The directory's device and inode: which directory `dir` names now (undefined: none, or not a directory). */
export function directoryId(dir: string): string | undefined {
  try {
    const stat = statSync(dir);
    return stat.isDirectory() ? `${stat.dev}:${stat.ino}` : undefined;
  } catch {
    return undefined;
  }
}

/** Throws KEYEDGE_ERR_CERT_STORE_GONE when `dir` is not there, or is not a directory. */
export function assertStorePresent(dir: string): void {
  presentDirectoryId(dir);
}

/** directoryId() of a directory that is there: KEYEDGE_ERR_CERT_STORE_GONE when it is not, or is not a directory. */
export function presentDirectoryId(dir: string): string {
  let stat: Stats;
  try {
    stat = statSync(dir);
  } catch (err) {
    throw new CertificateStoreError(
      'KEYEDGE_ERR_CERT_STORE_GONE',
      '',
      `the certificate store ${dir} is gone (${errno(err)}): renamed or removed; its entries keep serving until it is back (remove entries one by one: keyedge cert remove)`,
      { cause: err },
    );
  }
  if (!stat.isDirectory())
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE_GONE', '', `the certificate store ${dir} is not a directory; its entries keep serving`);
  return `${stat.dev}:${stat.ino}`;
}

/**
 * For a store found holding no certificate, after entries were served from
 * it: throws KEYEDGE_ERR_CERT_STORE_GONE unless `dir` is still the directory
 * they were read from (`servedFrom`, its directoryId then). `listedFrom`: the
 * identity seen before the listing that found it empty; a swap during that
 * listing counts as a replacement.
 */
export function assertStoreNotReplaced(dir: string, servedFrom: string | undefined, listedFrom: string | undefined): void {
  const now = directoryId(dir);
  if (now === undefined) assertStorePresent(dir);
  // Unknown: no pass has listed a directory since the start; nothing to compare with.
  if (servedFrom === undefined || (listedFrom === servedFrom && now === servedFrom)) return;
  throw new CertificateStoreError(
    'KEYEDGE_ERR_CERT_STORE_GONE',
    '',
    `the certificate store ${dir} was replaced by another directory holding no certificate (device:inode ${servedFrom ?? 'unknown'}, now ${now ?? 'none'}); ` +
      'its entries keep serving until certificates are put in it or the directory they were read from is back ' +
      '(to serve none of them: put it back and remove them one by one, keyedge cert remove, or restart the proxy)',
  );
}

/**
 * The directory `dir` names now, held open for a write: `at`, a path that
 * names that directory whatever is renamed over `dir` meanwhile
 * (/proc/self/fd/N: Node has no openat(2)), and `id`, its directoryId(). `at`
 * is `dir` itself where /proc is not (the write then resolves `dir` anew at
 * each step). KEYEDGE_ERR_CERT_STORE_GONE when it is not there; close() once
 * done.
 */
export function holdDirectory(dir: string): { readonly at: string; readonly id: string; readonly close: () => void } {
  const id = presentDirectoryId(dir);
  let fd: number;
  try {
    fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  } catch {
    // Not a directory one can open (or gone since the stat): resolved by path at each step, as where /proc is not.
    return { at: dir, id, close: () => {} };
  }
  const close = (): void => closeSync(fd);
  const at = `/proc/self/fd/${fd}`;
  const held = directoryId(at);
  // Another directory renamed over `dir` between the stat and the open: what is held is the one there now.
  return held === undefined ? { at: dir, id, close } : { at, id: held, close };
}
