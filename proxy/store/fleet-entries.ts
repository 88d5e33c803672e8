/**
 * The fleet's certificate entries (`<prefix>certs/<name>`, layout.ts) read
 * once, for a command that runs and ends rather than a node that follows the
 * store: `keyedge key delete`, which must know whether a fleet certificate
 * uses a key before it destroys it (certs/key-users.ts). No mirror, no cache
 * file, no watch: one range read through the client a node makes from the
 * same `etcd` settings (etcd-client.ts: its TLS, its auth, its deadline), the
 * whole read bounded by `timeoutMs` (etcd-calls.ts), and the client closed
 * after it.
 *
 * The read is etcd's default, linearizable (etcd docs, "KV API guarantees"):
 * a member cut off from its quorum refuses it rather than answering from an
 * older state, where a certificate added since might be missing.
 *
 * Entries are listed and read by etcd-entries.ts, as the reload path reads
 * them from the mirror: an entry means the same to both. Failures are the
 * store's errors (StoreUnavailableError), whose messages name the operation
 * and never a value, a password or a key.
 */
import type { EtcdSettings } from '../../config/proxy-schema.js';
import type { StoreEntry, StoreEntryRef } from '../certs/store-meta.js';
import { etcdCall } from './etcd-calls.js';
import { etcdClient } from './etcd-client.js';
import { type EntrySource, listEntries, readEntry } from './etcd-entries.js';
import { CERTS } from './layout.js';
import type { MirrorItem } from './mirror.js';

/** The entries as they were at the read: what a listing and a read of the store would have given then. */
export interface FleetEntries {
  /** `etcd:<prefix>`, as the store names itself in messages. */
  readonly dir: string;
  list(): StoreEntryRef[];
  /** Throws CertificateError naming the entry when its value is not an entry. */
  read(name: string): StoreEntry;
}

/** Rejects with StoreUnavailableError when etcd does not answer within `settings.timeoutMs`; ConfigError when a TLS or password file cannot be read. */
export async function readFleetEntries(settings: EtcdSettings, configSource: string): Promise<FleetEntries> {
  const client = etcdClient(settings, configSource);
  let items: Map<string, MirrorItem>;
  try {
    const range = await etcdCall(`read ${CERTS}`, settings.timeoutMs, () =>
      client
        .getAll()
        .prefix(settings.prefix + CERTS)
        .exec(),
    );
    items = new Map(
      range.kvs.map((kv) => [
        kv.key.toString('utf8').slice(settings.prefix.length),
        { value: kv.value.toString('utf8'), modRevision: Number(kv.mod_revision) },
      ]),
    );
  } finally {
    client.close();
  }
  const source: EntrySource = {
    dir: `etcd:${settings.prefix}`,
    item: (key) => items.get(key),
    keys: (under) => [...items.keys()].filter((key) => key.startsWith(under)).map((key) => key.slice(under.length)),
  };
  return { dir: source.dir, list: () => listEntries(source), read: (name) => readEntry(source, name) };
}
