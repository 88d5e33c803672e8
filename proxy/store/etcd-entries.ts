/**
 * The fleet store's certificate entries as the reload path's EntryStorage
 * (storage.ts): `<prefix>certs/<name>` holds one JSON value
 * {"chain": PEM, "meta": StoreMeta}, the same entry the certificate store
 * directory keeps in two files (certs/store-meta.ts). Listed and read from
 * the store's mirror (never waiting on etcd), written through the store.
 *
 * An entry is written whole by one transaction, so it is never half-written
 * (a listing never calls it "recent"), and its statId is its revision.
 * `fencedEntries` is the same view whose writes are fenced by an issuance
 * lock (lock.ts): a node that lost the lock mid-order (a long pause, a
 * partition) cannot put its result over the one its successor wrote.
 */
import { CertificateError, CertificateStoreError } from '../certs/errors.js';
import { parseStoreMeta, STORE_ENTRY_NAME, type StoreEntry, type StoreEntryRef, type StoreMeta } from '../certs/store-meta.js';
import type { EtcdStore } from './etcd-store.js';
import { CERTS } from './layout.js';
import { fencedPut, type HeldLock } from './lock.js';
import { type EntryStorage, StoreUnavailableError } from './storage.js';

/** The value of an entry's key. */
export function entryValue(chainText: string, meta: StoreMeta): string {
  return JSON.stringify({ chain: chainText, meta });
}

export function listEntries(store: EtcdStore): StoreEntryRef[] {
  const refs: StoreEntryRef[] = [];
  for (const name of store.keys(CERTS)) {
    const item = store.item(CERTS + name)!;
    if (!STORE_ENTRY_NAME.test(name)) continue;
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
export function readEntry(store: EtcdStore, name: string): StoreEntry {
  const item = store.item(CERTS + name);
  const where = `${store.dir}${CERTS}${name}`;
  if (item === undefined) throw notFound(store, name);
  let raw: { chain?: unknown; meta?: unknown };
  try {
    raw = JSON.parse(item.value) as typeof raw;
  } catch {
    throw new CertificateError(where, 'the stored entry is not valid JSON', { reason: 'parse', entry: name });
  }
  if (typeof raw?.chain !== 'string') throw new CertificateError(where, 'the stored entry has no "chain" text', { reason: 'parse', entry: name });
  const meta = parseStoreMeta(raw.meta ?? {});
  if (typeof meta === 'string') throw new CertificateError(where, meta, { reason: 'parse', entry: name });
  return { name, chainPath: where, metaPath: where, mtimeMs: 0, size: item.value.length, metaMtimeMs: undefined, chainText: raw.chain, meta };
}

export function notFound(store: EtcdStore, name: string): CertificateStoreError {
  return new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${store.dir}`);
}

/** The entries of `store`, written only while `lock` is still held (its fence compared in the write's transaction). */
export function fencedEntries(store: EtcdStore, lock: HeldLock): EntryStorage {
  return {
    dir: store.dir,
    list: () => store.list(),
    has: (name) => store.has(name),
    read: (name) => store.read(name),
    write: async (name, chainText, meta) => {
      const value = entryValue(chainText, meta);
      store.assertFits(CERTS + name, value);
      store.assertWritable();
      const revision = await store.call(`write ${CERTS}${name}`, () => fencedPut(store.client, lock, store.prefix + CERTS + name, value));
      if (revision === undefined) {
        throw new StoreUnavailableError(`the lock ${lock.key} was lost before ${name} was written (another node holds it now); nothing was written`);
      }
      store.applyLocal(CERTS + name, value, revision);
    },
  };
}
