/**
 * Adding and replacing store entries with the rules `keyedge cert` documents,
 * in one place so the admin API applies exactly the same ones: validate
 * first (nothing is written on a refusal), then write chain and metadata
 * atomically (store.ts).
 *
 * A replace keeps the entry's names and pinned key id unless the request
 * gives new ones, so a renewal for another key is refused (key_mismatch)
 * unless the caller pins the new key or the entry pins none. The stored chain
 * is the validated one: certificates only, leaf first.
 */
import { CertificateStoreError } from './errors.js';
import type { EntryStorage } from '../store/storage.js';
import type { StoreEntry, StoreMeta } from './store.js';
import { type CertificateCandidate, type ValidatedCertificate, type ValidationContext, validateCertificate } from './validate.js';

export interface PutRequest {
  /** add: the name must be free; replace: the entry must exist. */
  readonly mode: 'add' | 'replace';
  readonly name: string;
  readonly chainText: string;
  /** Where the chain came from (a file path, "admin API"), for messages. */
  readonly source: string;
  /** Names to serve; default: the entry's current names (replace), else every DNS SAN of the leaf. */
  readonly names?: readonly string[];
  /** Key id to pin; default: the entry's current pin (replace), else none. */
  readonly keyId?: string;
}

export interface PutResult {
  readonly validated: ValidatedCertificate;
  /** The metadata written next to the chain. */
  readonly meta: StoreMeta;
  /** The entry as it was before a replace (its chain text and metadata). */
  readonly previous: StoreEntry | undefined;
}

export interface PutOptions extends ValidationContext {
  /** Names that may not be added (the config file's certificates), so one name never means two chains. */
  readonly reserved?: readonly string[];
}

/**
 * Validates and writes one entry. Rejects with CertificateError (the chain is
 * refused), CertificateStoreError (exists, missing, bad name, another tool's
 * link, store not writable) or whatever the key-server lookup throws; on any
 * rejection the store is unchanged. One writer per entry at a time (store.ts); in a fleet, the write is refused
 * (StoreConflictError) when another node wrote the entry after it was read here.
 */
export async function putCertificate(store: EntryStorage, request: PutRequest, options: PutOptions): Promise<PutResult> {
  const { name, mode } = request;
  // The entry's version as read with its pins (the fleet's store): written only if it is still that one (storage.ts).
  const expected = store.version?.(name);
  // Another tool's entry (a link to certbot's live file) is refused before the key server is asked.
  store.assertOwned?.(name);
  let previous: StoreEntry | undefined;
  if (mode === 'add') {
    if (store.has(name))
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_EXISTS', name, `certificate '${name}' is already in the store ${store.dir}; replace it instead`);
    if (options.reserved?.includes(name)) {
      throw new CertificateStoreError('KEYEDGE_ERR_CERT_EXISTS', name, `certificate '${name}' is configured in the proxy config file; choose another name`);
    }
  } else {
    previous = store.read(name);
  }
  const names = request.names ?? previous?.meta.names;
  const keyId = request.keyId?.toLowerCase() ?? previous?.meta.keyId;
  const candidate: CertificateCandidate = {
    name,
    chainText: request.chainText,
    source: request.source,
    ...(names === undefined ? {} : { names }),
    ...(keyId === undefined ? {} : { keyId }),
  };
  const validated = await validateCertificate(candidate, options);
  const now = options.now.toISOString();
  const meta: StoreMeta = {
    // A new entry pins the names it serves now, so a later renewal that drops one is refused ('names').
    ...(names === undefined && mode === 'replace' ? {} : { names: validated.certificate.names }),
    ...(keyId === undefined ? {} : { keyId: validated.certificate.keyId }),
    addedAt: previous?.meta.addedAt ?? now,
    ...(previous === undefined ? {} : { replacedAt: now }),
  };
  await store.write(name, validated.certificate.chainPem, meta, expected);
  return { validated, meta, previous };
}

/** A store entry as a validation candidate: its chain with the names and key id its metadata pins. */
export function entryCandidate(entry: StoreEntry): CertificateCandidate {
  return {
    name: entry.name,
    chainText: entry.chainText,
    source: entry.chainPath,
    ...(entry.meta.names === undefined ? {} : { names: entry.meta.names }),
    ...(entry.meta.keyId === undefined ? {} : { keyId: entry.meta.keyId }),
  };
}
