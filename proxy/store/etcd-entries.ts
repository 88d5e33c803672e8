/**
 * The fleet store's certificate entries as the reload path's EntryStorage
 * (storage.ts): `<prefix>certs/<name>` holds one JSON value
 * {"chain": PEM, "meta": StoreMeta}, the same entry the certificate store
 * directory keeps in two files (certs/store-meta.ts). Listed and read from
 * the store's mirror (never waiting on etcd), written through the store.
 *
 * An entry is written whole by one transaction, so it is never half-written
 * (a listing never calls it "recent"), and its statId is its revision. Every
 * key below certs/ is listed: one whose name is no entry name (written by
 * hand, or by another tool) is refused when read, naming it, not left out
 * unsaid.
 * `fencedEntries` is the same view whose writes are fenced by an issuance
 * lock (lock.ts): a node that lost the lock mid-order (a long pause, a
 * partition) cannot put its result over the one its successor wrote.
 *
 * A write given the version its validation read (`version`: the key's mod
 * revision, 0 when absent) is conditional on it, in the same transaction:
 * two nodes taking an upload of one entry at once (or an upload and another
 * node's renewal) each validated against the entry before the other wrote;
 * the second write is refused (StoreConflictError) instead of putting over
 * the first one's chain and pins a chain never checked against them.
 */
import { CertificateError, CertificateStoreError } from '../certs/errors.js';
import { MAX_CHAIN_BYTES, MAX_META_BYTES } from '../certs/store-files.js';
import { parseStoreMeta, STORE_ENTRY_NAME, type StoreEntry, type StoreEntryRef, type StoreMeta } from '../certs/store-meta.js';
import type { EtcdStore } from './etcd-store.js';
import { CERTS } from './layout.js';
import { fencedPut, type HeldLock } from './lock.js';
import { type EntryStorage, StoreConflictError, StoreUnavailableError } from './storage.js';

/**
 * What the entries are listed and read from: the store's mirror, or one read of the prefix (fleet-entries.ts, for
 * `keyedge key delete`), so that an entry means the same to both.
 */
export type EntrySource = Pick<EtcdStore, 'dir' | 'keys' | 'item'>;

/** The value of an entry's key. */
export function entryValue(chainText: string, meta: StoreMeta): string {
  return JSON.stringify({ chain: chainText, meta });
}

export function listEntries(store: EntrySource): StoreEntryRef[] {
  const refs: StoreEntryRef[] = [];
  for (const name of store.keys(CERTS)) {
    const item = store.item(CERTS + name)!;
    // Listed whatever its name: one that is no entry name is refused when read, named, rather than never served unsaid.
    const where = `${store.dir}${CERTS}${name}`;
    refs.push({
      name,
      chainPath: where,
      metaPath: where,
      mtimeMs: 0,
      size: item.value.length,
      metaMtimeMs: undefined,
      statId: `rev:${item.modRevision}`,
      // Written whole by one transaction: never half-written, so never "recent".
      changedAtMs: 0,
      link: false,
    });
  }
  return refs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The entry `name`; CertificateStoreError KEYEDGE_ERR_CERT_NOT_FOUND when there is none, CertificateError naming it when it is unreadable. */
export function readEntry(store: EntrySource, name: string): StoreEntry {
  const item = store.item(CERTS + name);
  const where = `${store.dir}${CERTS}${name}`;
  if (item === undefined) throw notFound(store, name);
  if (!STORE_ENTRY_NAME.test(name)) {
    // Written by hand or by another tool: a name such as a domain over 64 characters, a nested key, a space.
    throw new CertificateError(
      where,
      `${JSON.stringify(name)} is not a certificate entry name (1-64 letters, digits, _ . -, not starting with a dot): the key is not served; store the entry under such a name`,
      { reason: 'parse', entry: name },
    );
  }
  // The store directory's caps (certs/store-files.ts), so that an entry means the same in either home: judged there, a
  // chain over 1 MiB is refused unread. etcd's own limit (--max-request-bytes, 1.5 MiB by default) lets such a value in.
  if (item.value.length > MAX_CHAIN_BYTES + MAX_META_BYTES) {
    throw new CertificateError(
      where,
      `the stored entry is ${item.value.length} characters; an entry holds a chain of at most ${MAX_CHAIN_BYTES} bytes (a chain is a few KB)`,
      {
        reason: 'parse',
        entry: name,
      },
    );
  }
  let raw: { chain?: unknown; meta?: unknown };
  try {
    raw = JSON.parse(item.value) as typeof raw;
  } catch {
    throw new CertificateError(where, 'the stored entry is not valid JSON', { reason: 'parse', entry: name });
  }
  if (typeof raw?.chain !== 'string') throw new CertificateError(where, 'the stored entry has no "chain" text', { reason: 'parse', entry: name });
  const chainBytes = Buffer.byteLength(raw.chain);
  if (chainBytes > MAX_CHAIN_BYTES) {
    throw new CertificateError(where, `the chain is ${chainBytes} bytes; a chain holds at most ${MAX_CHAIN_BYTES} (a chain is a few KB)`, {
      reason: 'parse',
      entry: name,
    });
  }
  const meta = parseStoreMeta(raw.meta ?? {});
  if (typeof meta === 'string') throw new CertificateError(where, meta, { reason: 'parse', entry: name });
  return { name, chainPath: where, metaPath: where, mtimeMs: 0, size: item.value.length, metaMtimeMs: undefined, chainText: raw.chain, meta };
}

export function notFound(store: Pick<EtcdStore, 'dir'>, name: string): CertificateStoreError {
  return new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${store.dir}`);
}

/** The entries of `store`, written only while `lock` is still held (its fence compared in the write's transaction). */
export function fencedEntries(store: EtcdStore, lock: HeldLock): EntryStorage {
  return {
    dir: store.dir,
    list: () => store.list(),
    has: (name) => store.has(name),
    read: (name) => store.read(name),
    version: (name) => store.version(name),
    write: async (name, chainText, meta, expected) => {
      const value = entryValue(chainText, meta);
      if (expected !== undefined) return writeEntryIf(store, name, value, expected, lock);
      store.assertFits(CERTS + name, value);
      store.assertWritable();
      const revision = await store.call(`write ${CERTS}${name}`, () => fencedPut(store.client, lock, store.prefix + CERTS + name, value));
      if (revision === undefined) throw lockLost(lock, name);
      store.applyLocal(CERTS + name, value, revision);
    },
  };
}

/**
 * Writes entry `name` only while its key is still at revision `expected` (0: absent) and, with `lock`, while the lock
 * is held, in one transaction (the store's `writeIf`). Refused: StoreConflictError when another node wrote the entry
 * since (its pins were not the ones validated against), StoreUnavailableError when the lock was lost.
 */
export async function writeEntryIf(store: EtcdStore, name: string, value: string, expected: number, lock?: HeldLock): Promise<void> {
  const written = await store.writeIf(CERTS + name, value, expected, lock);
  if (!('refused' in written)) return;
  if (written.refused === 'lock-lost' && lock !== undefined) throw lockLost(lock, name);
  const now = store.version(name);
  throw new StoreConflictError(
    `certificate '${name}' changed in the store ${store.dir} while this write was validated (another node wrote it${now === 0 ? ' or removed it' : ''}); nothing was written: retry to validate against what it holds now`,
  );
}

function lockLost(lock: HeldLock, name: string): StoreUnavailableError {
  return new StoreUnavailableError(`the lock ${lock.key} was lost before ${name} was written (another node holds it now); nothing was written`);
}
