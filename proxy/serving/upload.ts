/**
 * A certificate upload (the admin API's PUT /certs/:name, the ACME issuer's
 * result): the chain validated for store entry `name` against the key server
 * and written, keeping the entry's pinned names and key id unless the upload
 * pins new ones (a renewal with a new key). Refused, the store is unchanged.
 * Nothing here serves it: the next pass of the reload path reads it (source.ts).
 * One upload of an entry at a time is the caller's to ensure (in-turn.ts).
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { keyserverSpkiLookup } from '../certs/keyserver-lookup.js';
import { loadIssuerPool } from '../certs/issuers.js';
import { putCertificate } from '../certs/manage.js';
import { CertificateStore } from '../certs/store.js';
import { assertStoreNotReplaced, presentDirectoryId } from '../certs/store-dir.js';
import type { EtcdStore } from '../store/etcd-store.js';
import type { HeldLock } from '../store/lock.js';
import type { EntryStorage } from '../store/storage.js';
import { connectKeyserver } from './keyserver-check.js';
import { servesFromStore } from './prepare.js';
import type { CertificateRecord } from './spec.js';

/** What an upload pins instead of the entry's current names and key id, where it came from, and the issuance lock it holds. */
export type UploadPin = {
  readonly keyId?: string;
  readonly names?: readonly string[];
  readonly source?: string;
  readonly lock?: HeldLock;
  /** Only as a new entry: refused (KEYEDGE_ERR_CERT_EXISTS) when the store has one of that name (an on-demand certificate's first). */
  readonly newEntry?: boolean;
};

/** What serves now, as the serving source knows it: the upload is judged and written against it. */
export interface UploadContext {
  /** The running config as it is now (restart-only settings as started: restart-only.ts). */
  readonly config: () => ProxyConfig;
  /** The fleet's store (etcd), else undefined: the store directory. */
  readonly shared: EtcdStore | undefined;
  readonly store: EntryStorage;
  /** The store directory the last committed pass listed (certs/store-dir.ts). */
  readonly storeDirId: string | undefined;
  readonly records: ReadonlyMap<string, CertificateRecord>;
}

export async function uploadCertificate(context: UploadContext, name: string, chainText: string, pin: UploadPin): Promise<void> {
  const { shared } = context;
  // An ACME order's result in a fleet: written only while its issuance lock is held (store/lock.ts).
  let store = pin.lock !== undefined && shared !== undefined ? shared.fenced(pin.lock) : context.store;
  // Refused before any validation when the shared store cannot take it.
  shared?.assertWritable();
  // A store directory renamed away is not recreated empty by an upload, nor is one an empty directory took the place
  // of filled with it: the next pass would take it for the whole store, and serve that entry alone (certs/store-dir.ts).
  if (store instanceof CertificateStore) {
    const now = presentDirectoryId(store.dir);
    // Cheapest first: the identity (a stat) rules out nearly every upload before the records are walked or the store listed.
    if (now !== context.storeDirId && servesFromStore(context.records) && store.list().length === 0) assertStoreNotReplaced(store.dir, context.storeDirId, now);
    // Written into the directory checked here or into none: one swapped in during the validation or the write is
    // refused too (certs/store-write.ts).
    store = new CertificateStore(store.dir, { dirId: now });
  }
  const client = await connectKeyserver(context.config());
  try {
    await putCertificate(
      store,
      {
        mode: pin.newEntry === true || !store.has(name) ? 'add' : 'replace',
        name,
        chainText,
        source: pin.source ?? 'admin API',
        ...(pin.keyId === undefined ? {} : { keyId: pin.keyId }),
        ...(pin.names === undefined ? {} : { names: pin.names }),
      },
      {
        now: new Date(),
        keyserverSpki: keyserverSpkiLookup(client),
        issuers: loadIssuerPool(context.config().certStore.intermediates, context.config().source),
        reserved: context.config().certificates.map((c) => c.name),
      },
    );
  } finally {
    client.close();
  }
}
