/**
 * What the store directory holds, as the reload path compares it from one
 * pass to the next: each entry's chain and metadata described by stat alone
 * (StoreEntryRef, its statId changing whenever either file does), without
 * reading them. Only `<name>.pem` files are entries; dot files (temp files
 * of a write, store-files.ts), metadata without a chain and anything else
 * are ignored. A listing of 10,000 entries is a readdir and a stat or two
 * per entry: the watch and the rescan list often.
 */
import { type Dirent, lstatSync, readdirSync, statSync } from 'node:fs';
import { CertificateStoreError } from './errors.js';
import { errno, identity, lstatIdentity, metaStat } from './store-files.js';
import { STORE_ENTRY_NAME, type StoreEntryRef } from './store-meta.js';
import { byName, CHAIN_FILE, entryPaths } from './store-paths.js';

/**
 * Entries with a chain file, sorted by name; an absent directory lists none.
 * A chain that cannot be looked at (a link loop) is listed: its read fails, naming it.
 */
export function listEntries(dir: string): StoreEntryRef[] {
  let files: Dirent[];
  try {
    files = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', '', `cannot list the certificate store ${dir}: ${errno(err)}`, { cause: err });
  }
  const refs: StoreEntryRef[] = [];
  // Stat a metadata file only where readdir saw one: a failed stat (throwing ENOENT) per entry was most of a rescan's cost at 10,000 entries.
  const present = new Set(files.map((f) => f.name));
  for (const file of files) {
    const name = CHAIN_FILE.exec(file.name)?.[1];
    if (name === undefined) continue;
    const ref = entryRef(dir, name, file.isSymbolicLink(), present.has(`${name}.json`));
    if (ref !== undefined) refs.push(ref);
  }
  return refs.sort(byName);
}

/** The entries among `names` that exist now, as listEntries() describes them, without listing the directory (other names are skipped). */
export function namedEntries(dir: string, names: Iterable<string>): StoreEntryRef[] {
  const refs: StoreEntryRef[] = [];
  for (const name of names) {
    if (!STORE_ENTRY_NAME.test(name)) continue;
    const { chainPath } = entryPaths(dir, name);
    let link: boolean;
    try {
      link = lstatSync(chainPath).isSymbolicLink();
    } catch (err) {
      if (errno(err) === 'ENOENT') continue;
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', name, `cannot stat ${chainPath}: ${errno(err)}`, { cause: err });
    }
    const ref = entryRef(dir, name, link, true);
    if (ref !== undefined) refs.push(ref);
  }
  return refs.sort(byName);
}

function entryRef(dir: string, name: string, isLink: boolean, mayHaveMeta: boolean): StoreEntryRef | undefined {
  const paths = entryPaths(dir, name);
  let chain: ReturnType<typeof statSync>;
  try {
    // stat, not lstat: a chain may be a symlink to a renewal tool's live file.
    chain = statSync(paths.chainPath);
  } catch (err) {
    // Removed since readdir, or a dangling link: not an entry (a read would say why).
    if (errno(err) === 'ENOENT') return undefined;
    // A link loop (ELOOP) or the like: an entry whose read fails, refused by its name and path with the others
    // served, rather than a store that cannot be listed (every entry's change held back by one bad file).
    return { name, ...paths, mtimeMs: 0, size: 0, metaMtimeMs: undefined, statId: `unreadable:${errno(err)}`, changedAtMs: 0, link: isLink };
  }
  if (!chain.isFile()) {
    // A directory named like a chain is not an entry. A link to something other than a file (certbot's live/NAME
    // directory for its fullchain.pem, say) is an operator's mistake: an entry whose read fails, naming it, so
    // what it served keeps serving, rather than an entry silently gone.
    if (!isLink) return undefined;
    return { name, ...paths, mtimeMs: 0, size: 0, metaMtimeMs: undefined, statId: `notfile:${identity(chain)}`, changedAtMs: 0, link: true };
  }
  // lstat only for links: the readdir entry already says which ones are.
  const link = isLink ? lstatIdentity(paths.chainPath) : undefined;
  const meta = mayHaveMeta ? metaStat(paths.metaPath) : undefined;
  return {
    name,
    ...paths,
    mtimeMs: chain.mtimeMs,
    size: chain.size,
    metaMtimeMs: meta?.mtimeMs,
    statId: `${identity(chain)}|${link ?? '-'}|${meta === undefined ? '-' : identity(meta)}`,
    changedAtMs: Math.max(chain.ctimeMs, chain.mtimeMs),
    link: isLink,
  };
}
