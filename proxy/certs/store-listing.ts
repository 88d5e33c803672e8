/**
 * What the store directory holds, as the reload path compares it from one
 * pass to the next: each entry's chain and metadata described by stat alone
 * (StoreEntryRef, its statId changing whenever either file does), without
 * reading them. Only `<name>.pem` files are entries; dot files (temp files
 * of a write, store-files.ts), metadata without a chain and anything else
 * are ignored. A `.pem` file whose name is no entry name (a space, a letter
 * outside ASCII, a domain over 64 characters) is listed apart, as misnamed,
 * for the reload to refuse by its file (it was never served, and never said):
 * the fleet's store refuses such a key the same way (store/etcd-entries.ts).
 * A listing of 10,000 entries is a readdir and a stat or two per entry: the
 * watch and the rescan list often.
 */
import { type Dirent, lstatSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CertificateStoreError } from './errors.js';
import { errno, identity, lstatIdentity, metaStat } from './store-files.js';
import { STORE_ENTRY_NAME, type StoreEntryRef } from './store-meta.js';
import { byName, CHAIN_FILE, entryPaths } from './store-paths.js';

/** A `.pem` file of the store whose name is no entry name: never served, refused by the reload naming it. */
export interface MisnamedFile {
  /** The file's name without `.pem`, as an entry would be named. */
  readonly name: string;
  readonly chainPath: string;
  /** The file's identity (store-files.ts identity): its refusal is said once per version. */
  readonly statId: string;
}

/** Any `.pem` file but a dot file (a writer's temp file, or hidden on purpose); group 1: the name. */
const PEM_FILE = /^([^.].*)\.pem$/s;

/**
 * Entries with a chain file, sorted by name; an absent directory lists none.
 * A chain that cannot be looked at (a link loop) is listed: its read fails, naming it.
 */
export function listEntries(dir: string): StoreEntryRef[] {
  return listStore(dir).refs;
}

/** listEntries() and, from the same readdir, the misnamed `.pem` files, sorted by name. */
export function listStore(dir: string): { readonly refs: StoreEntryRef[]; readonly misnamed: MisnamedFile[] } {
  let files: Dirent[];
  try {
    files = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (errno(err) === 'ENOENT') return { refs: [], misnamed: [] };
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_STORE', '', `cannot list the certificate store ${dir}: ${errno(err)}`, { cause: err });
  }
  const refs: StoreEntryRef[] = [];
  const misnamed: MisnamedFile[] = [];
  // Stat a metadata file only where readdir saw one: a failed stat (throwing ENOENT) per entry was most of a rescan's cost at 10,000 entries.
  const present = new Set(files.map((f) => f.name));
  for (const file of files) {
    const name = CHAIN_FILE.exec(file.name)?.[1];
    if (name === undefined) {
      const odd = misnamedFile(dir, file.name);
      if (odd !== undefined) misnamed.push(odd);
      continue;
    }
    const ref = entryRef(dir, name, file.isSymbolicLink(), present.has(`${name}.json`));
    if (ref !== undefined) refs.push(ref);
  }
  return { refs: refs.sort(byName), misnamed: misnamed.sort(byName) };
}

/** The misnamed `.pem` files among `names` (the entries a watch event named, as `<name>.pem`), as listStore() describes them. */
export function namedMisnamed(dir: string, names: Iterable<string>): MisnamedFile[] {
  const out: MisnamedFile[] = [];
  for (const name of names) {
    // A name from the watch is a file's name in the directory: none with a slash is made into a path.
    if (STORE_ENTRY_NAME.test(name) || name.includes('/')) continue;
    const odd = misnamedFile(dir, `${name}.pem`);
    if (odd !== undefined) out.push(odd);
  }
  return out.sort(byName);
}

/** `file` of the directory when it is a misnamed `.pem` file: a regular file there or through its link, not an entry's name. */
function misnamedFile(dir: string, file: string): MisnamedFile | undefined {
  const name = PEM_FILE.exec(file)?.[1];
  if (name === undefined || STORE_ENTRY_NAME.test(name)) return undefined;
  const chainPath = join(dir, file);
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(chainPath);
  } catch {
    // Gone since readdir, or a link that leads nowhere: nothing that could have been served.
    return undefined;
  }
  return stat.isFile() ? { name, chainPath, statId: identity(stat) } : undefined;
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
    // directory for its fullchain.pem, say), or a FIFO, socket or device in the chain's place, is an operator's
    // mistake: an entry whose read fails, naming it, so what it served keeps serving, rather than an entry silently
    // gone (no refusal, no log, no last-served version at the next start).
    if (!isLink && chain.isDirectory()) return undefined;
    return { name, ...paths, mtimeMs: 0, size: 0, metaMtimeMs: undefined, statId: `notfile:${identity(chain)}`, changedAtMs: 0, link: isLink };
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
