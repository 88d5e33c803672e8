/**
 * The fleet's shared store in etcd: every node naming the same prefix serves
 * the same certificates and routes and shares its session-ticket keys.
 * What lives where below the prefix: layout.ts.
 *
 * The node keeps a mirror of the prefix in memory (mirror.ts), which its
 * link to etcd (etcd-link.ts: a probe every second, a snapshot after any
 * doubt, a watch between) keeps current, telling the primary of every change,
 * whose reload path validates and serves it exactly as it does a file
 * change. Reads never wait on etcd, so when etcd is away the node keeps
 * serving its last good state; writes are refused then, with
 * StoreUnavailableError. Revisions order everything: no node ever goes back
 * to an older state.
 *
 * Here: the reads from the mirror, the writes (plain, conditional, fenced by
 * an issuance lock) and the locks. The certificate entries as the reload path
 * reads them are etcd-entries.ts's; each etcd call's deadline and errors are
 * etcd-calls.ts's.
 *
 * Secrets: the ticket keys sit in etcd and in this process's memory only,
 * never in the on-disk cache; etcd's TLS and auth protect them (README).
 */
import type { Etcd3 } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';
import type { StoreEntry, StoreEntryRef, StoreMeta } from '../certs/store-meta.js';
import { assertFits, etcdCall } from './etcd-calls.js';
import { entryValue, fencedEntries, listEntries, notFound, readEntry, writeEntryIf } from './etcd-entries.js';
import { EtcdLink, type StoreHealth } from './etcd-link.js';
import { CERTS, LOCKS, type StoreChange } from './layout.js';
import { Revocations } from './lease-revocation.js';
import { acquireLock, type HeldLock, type LockOptions } from './lock.js';
import { Mirror, type MirrorItem } from './mirror.js';
import { type EntryStorage, StoreUnavailableError } from './storage.js';

export type { StoreHealth } from './etcd-link.js';
export { ACME, ACME_ON_DEMAND, CERTS, LOCKS, ROUTES, type StoreChange, TICKETS } from './layout.js';

/**
 * How long a close waits for the lease revocations under way (lease-revocation.ts): a stopping node's challenge report
 * and locks go from etcd at once, not a TTL later. Bounded: an etcd that is away costs the stop no more than this.
 */
const CLOSE_REVOCATIONS_MS = 2_000;

/** Why `writeIf` wrote nothing: the lock is another holder's now, or the key changed since the revision the writer read. */
export type WriteRefusal = 'lock-lost' | 'changed';

export interface EtcdStoreOptions {
  readonly prefix: string;
  readonly timeoutMs: number;
  /** The largest request etcd accepts (config `etcd.maxRequestBytes`): a larger write is refused before it is sent. */
  readonly maxRequestBytes: number;
  /** The non-secret cache of the last good state (cache.ts). */
  readonly cacheFile: string;
  readonly log: Logger;
  /** Told after the mirror changed; `changes` says which kinds of state moved. */
  readonly onChange: (changes: ReadonlySet<StoreChange>) => void;
}

export class EtcdStore implements EntryStorage {
  readonly dir: string;
  readonly client: Etcd3;
  readonly prefix: string;
  /** The client's lease revocations: revoke through it, and the close waits for them. */
  readonly revocations: Revocations;
  readonly #options: EtcdStoreOptions;
  readonly #mirror: Mirror;
  readonly #link: EtcdLink;

  constructor(client: Etcd3, options: EtcdStoreOptions) {
    this.client = client;
    this.prefix = options.prefix;
    this.dir = `etcd:${options.prefix}`;
    this.#options = options;
    this.revocations = new Revocations(options.log);
    this.#mirror = new Mirror(options);
    this.#link = new EtcdLink(client, options, this.#mirror);
  }

  /** Loads the cached state, then tries etcd once; resolves either way (degraded when etcd did not answer). */
  async start(): Promise<void> {
    const cached = this.#mirror.loadCache();
    await this.#link.start();
    if (!this.#link.up) {
      this.#options.log.warn(
        { reason: this.#link.health.reason, cachedRevision: cached ?? null },
        cached === undefined
          ? 'etcd unreachable at start and no cached state: serving the config file only until it answers'
          : 'etcd unreachable at start: serving the cached state',
      );
    }
  }

  get health(): StoreHealth {
    return this.#link.health;
  }

  /** The value at `key` (below the prefix) as the mirror holds it. */
  item(key: string): MirrorItem | undefined {
    return this.#mirror.item(key);
  }

  /** Mirror keys below `under`, without it. */
  keys(under: string): string[] {
    return this.#mirror.keys(under);
  }

  list(): StoreEntryRef[] {
    return listEntries(this);
  }

  has(name: string): boolean {
    return this.#mirror.item(CERTS + name) !== undefined;
  }

  read(name: string): StoreEntry {
    return readEntry(this, name);
  }

  /** The entry's key's mod revision as the mirror holds it, 0 when absent: what a conditional `write` compares. */
  version(name: string): number {
    return this.#mirror.item(CERTS + name)?.modRevision ?? 0;
  }

  /** With `expected` (a `version` read before validating): refused with StoreConflictError if the entry changed since. */
  async write(name: string, chainText: string, meta: StoreMeta, expected?: number): Promise<void> {
    const value = entryValue(chainText, meta);
    if (expected !== undefined) return writeEntryIf(this, name, value, expected);
    await this.put(CERTS + name, value);
  }

  async remove(name: string): Promise<void> {
    if (!this.has(name)) throw notFound(this, name);
    await this.delete(CERTS + name);
  }

  /** Writes `value` at `key` (below the prefix); the mirror holds it at once. Resolves with the write's revision; rejects with StoreUnavailableError. */
  async put(key: string, value: string): Promise<number> {
    this.assertFits(key, value);
    this.assertWritable();
    const result = await this.call(`write ${key}`, () =>
      this.client
        .put(this.prefix + key)
        .value(value)
        .exec(),
    );
    const revision = Number(result.header.revision);
    this.applyLocal(key, value, revision);
    return revision;
  }

  /**
   * The certificate entries, written only while `lock` is still held (its
   * fence compared in the same transaction, lock.ts): a node that lost its
   * issuance lock (a long pause, a partition) cannot put its result over the
   * one its successor wrote. Reads are the store's own.
   */
  fenced(lock: HeldLock): EntryStorage {
    return fencedEntries(this, lock);
  }

  /**
   * Writes `value` at `key` (undefined: deletes it) only while the key's
   * revision is still `expected` (0: absent) and, with `lock`, while the lock
   * is held (its fence, lock.ts), in one transaction: a node writing from an
   * older state, or one that lost its lock (a long pause, a partition),
   * writes nothing over what another node wrote since. Resolves with the
   * write's revision (the mirror holds it at once), or why it was refused;
   * rejects as `put` does.
   */
  async writeIf(
    key: string,
    value: string | undefined,
    expected: number,
    lock?: HeldLock,
  ): Promise<{ readonly revision: number } | { readonly refused: WriteRefusal }> {
    if (value !== undefined) this.assertFits(key, value);
    this.assertWritable();
    // Its lease is known to be gone: refused without asking etcd, whose fence would refuse it (or soon would).
    if (lock?.lost.aborted) return { refused: 'lock-lost' };
    const target = this.prefix + key;
    const result = await this.call(`${value === undefined ? 'delete' : 'write'} ${key}`, () => {
      let txn = this.client.if(target, 'Mod', '==', expected);
      if (lock !== undefined) txn = txn.and(lock.key, 'Create', '==', lock.fence);
      const write = value === undefined ? this.client.delete().key(target) : this.client.put(target).value(value);
      // Refused: the lock key as etcd holds it now says which compare failed.
      return txn
        .then(write)
        .else(this.client.get(lock?.key ?? target))
        .commit();
    });
    if (!result.succeeded) {
      const holder = result.responses[0]?.response_range?.kvs[0];
      return { refused: lock !== undefined && holder?.create_revision !== lock.fence ? 'lock-lost' : 'changed' };
    }
    const revision = Number(result.header.revision);
    this.applyLocal(key, value, revision);
    return { revision };
  }

  /** Resolves true once the mirror holds every change up to `revision` (the watch caught up), false after `timeoutMs`. */
  async reached(revision: number, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.#mirror.revision < revision) {
      if (Date.now() > deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return true;
  }

  async delete(key: string): Promise<void> {
    this.assertWritable();
    const result = await this.call(`delete ${key}`, () =>
      this.client
        .delete()
        .key(this.prefix + key)
        .exec(),
    );
    this.applyLocal(key, undefined, Number(result.header.revision));
  }

  /**
   * A write this node made (at `revision`), into the mirror before its watch event arrives; `value` undefined: a
   * delete. The mirror's revision is not moved: it did not see the writes of other nodes before this one.
   */
  applyLocal(key: string, value: string | undefined, revision: number): void {
    this.#mirror.apply([{ key, value, revision }]);
  }

  /**
   * A fleet-wide lock named `name` (`issue/<domain>` for a certificate order,
   * say): resolves with it once held (its `fence` to compare in every write
   * made under it, lock.ts), or undefined when another node kept it for
   * `waitMs`. Refused with StoreUnavailableError while etcd is away.
   */
  async lock(name: string, options: LockOptions): Promise<HeldLock | undefined> {
    this.assertWritable();
    try {
      return await acquireLock(this.client, this.prefix + LOCKS + name, options, this.#options.log, this.revocations);
    } catch (err) {
      throw new StoreUnavailableError(`the fleet's store (etcd) could not lock ${name}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Stops following etcd; closes the client once the lease revocations under way ended (within CLOSE_REVOCATIONS_MS). */
  async close(): Promise<void> {
    this.#link.close();
    await this.revocations.settled(CLOSE_REVOCATIONS_MS);
    this.#mirror.flush();
    this.client.close();
  }

  /** Throws StoreValueTooLargeError, naming `key`, when a write of `value` at it is past etcd's request limit. */
  assertFits(key: string, value: string): void {
    assertFits(key, value, this.#options.maxRequestBytes);
  }

  /** Throws StoreUnavailableError while etcd is unreachable: a change is refused before any work is done for it. */
  assertWritable(): void {
    if (!this.#link.up) {
      throw new StoreUnavailableError(
        `the fleet's store (etcd) is unreachable (${this.#link.health.reason}); changes are refused until it is back, and this node serves its last good state`,
      );
    }
  }

  /** One etcd call with this store's deadline, its failures as the store's errors (etcd-calls.ts), never etcd3's. */
  call<T>(what: string, call: () => Promise<T>): Promise<T> {
    return etcdCall(what, this.#options.timeoutMs, call);
  }
}
