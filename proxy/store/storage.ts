/**
 * The storage seam of the serving path: what the reload path (serving/) and
 * the admin API need from wherever certificates, routes and session-ticket
 * keys are kept, and nothing more.
 *
 * Two implementations:
 *   - the certificate store directory (certs/store.ts), the embedded default,
 *     for one node on its own: certificates only; routes stay in the config
 *     file and ticket keys in the primary's memory;
 *   - the fleet's store in etcd (store/etcd-store.ts), shared by every node
 *     naming the same prefix: certificates, routes and ticket keys.
 *
 * Reads are synchronous on purpose: the etcd store answers them from its
 * in-memory mirror (kept current by a watch), so the validation pass reads
 * 10,000 entries as fast as from a directory and keeps reading the last good
 * state while etcd is away. Writes are asynchronous (a round trip to etcd)
 * and may be refused with StoreUnavailableError.
 */
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import type { StoreEntry, StoreEntryRef, StoreMeta } from '../certs/store-meta.js';

export interface EntryStorage {
  /** Where the entries live, for messages: a directory, or `etcd:<prefix>`. */
  readonly dir: string;
  /** Entries present now, sorted by name; `statId` changes whenever an entry does. */
  list(): StoreEntryRef[];
  has(name: string): boolean;
  /** Throws CertificateStoreError KEYEDGE_ERR_CERT_NOT_FOUND when there is no such entry. */
  read(name: string): StoreEntry;
  /**
   * Throws, before anything is validated or written, when the entry is not
   * this store's to write (the directory: a file of it is a symbolic link to
   * another tool's, KEYEDGE_ERR_CERT_LINKED). write() checks it again.
   */
  assertOwned?(name: string): void;
  /**
   * The entry's version as read now (0: absent), for a write conditional on it: in the fleet's store, the key's etcd
   * mod revision; in the store directory, the identity of its files (certs/store-files.ts entryVersion), compared under
   * the entry's lock: the proxy's uploads of an entry go in turn (serving/in-turn.ts), but `keyedge cert` and renewal
   * hooks write the same directory from other processes.
   */
  version?(name: string): number;
  /**
   * Creates or replaces the entry, whole; the caller validated it. With `expected` (a `version` read before the
   * validation), written only while the entry is still at it, else StoreConflictError and nothing is written.
   */
  write(name: string, chainText: string, meta: StoreMeta, expected?: number): void | Promise<void>;
}

/**
 * A change refused because the shared store cannot take it now (etcd
 * unreachable or without quorum): nothing was written, the node keeps
 * serving its last good state, and the same request succeeds once etcd is
 * back. The admin API answers it with 503.
 */
export class StoreUnavailableError extends KeyedgeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KEYEDGE_ERR_STORE_UNAVAILABLE', message, options);
  }
}

/**
 * A write refused because the entry changed since it was read, on another
 * node (an upload or an ACME renewal of the same entry at once): what was
 * validated against (its pinned names and key id) is no longer what is
 * there, so nothing was written and the other write stands. The same request
 * is validated anew against it when retried. The admin API answers it with
 * 409.
 */
export class StoreConflictError extends KeyedgeError {
  constructor(message: string) {
    super('KEYEDGE_ERR_STORE_CONFLICT', message);
  }
}

/**
 * A value the fleet's store cannot hold: larger than one etcd request may be
 * (etcd's --max-request-bytes, 1.5 MiB by default). Refused before it is
 * sent, naming the key and the size; etcd itself is fine, and retrying the
 * same value fails the same way. The admin API answers it with 413.
 */
export class StoreValueTooLargeError extends KeyedgeError {
  constructor(message: string) {
    super('KEYEDGE_ERR_STORE_TOO_LARGE', message);
  }
}
