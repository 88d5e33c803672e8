/**
 * The fleet's shared store in etcd: every node naming the same prefix serves
 * the same certificates and routes and shares its session-ticket keys.
 * What lives where below the prefix: layout.ts.
 *
 * The node keeps a mirror of the prefix in memory: one range read at start
 * (or after any doubt), then a watch from the next revision applies every
 * change in order, and tells the primary, whose reload path validates and
 * serves it exactly as it does a file change. Reads never wait on etcd, so
 * when etcd is away the node keeps serving its last good state; a probe
 * every second (a quorum read) notices, marks the store degraded (/readyz
 * says so), refuses writes with StoreUnavailableError, and once etcd answers
 * again reads the prefix whole and resumes the watch: the node converges
 * within a probe period or two.
 *
 * Revisions order everything. A watch event older than what the mirror holds
 * for its key is dropped, and a whole snapshot older than the revision this
 * node has served (kept in cache.ts's file across restarts) is refused, so no
 * node ever goes back to an older state (the mirror itself: mirror.ts).
 *
 * Here: the mirror's link to etcd (the probe and the snapshot; the watch
 * between snapshots is prefix-watch.ts's), the store's health, and its
 * writes and locks. The certificate entries as the
 * reload path reads them are etcd-entries.ts's; each etcd call's deadline and
 * errors are etcd-calls.ts's.
 *
 * Secrets: the ticket keys sit in etcd and in this process's memory only,
 * never in the on-disk cache; etcd's TLS and auth protect them (README).
 */
import type { Etcd3 } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';
import type { StoreEntry, StoreEntryRef, StoreMeta } from '../certs/store-meta.js';
import { assertFits, etcdCall } from './etcd-calls.js';
import { entryValue, fencedEntries, listEntries, notFound, readEntry } from './etcd-entries.js';
import { CERTS, LOCKS, type StoreChange, TICKETS } from './layout.js';
import { acquireLock, type HeldLock, type LockOptions } from './lock.js';
import { Mirror, type MirrorItem } from './mirror.js';
import { PrefixWatch } from './prefix-watch.js';
import { type EntryStorage, StoreUnavailableError } from './storage.js';

export { ACME, CERTS, LOCKS, ROUTES, type StoreChange, TICKETS } from './layout.js';

/** How often etcd is probed; also the bound on how long a lost watch goes unnoticed. */
const PROBE_MS = 1_000;

/** Why `writeIf` wrote nothing: the lock is another holder's now, or the key changed since the revision the writer read. */
export type WriteRefusal = 'lock-lost' | 'changed';

export interface StoreHealth {
  readonly up: boolean;
  /** Why it is degraded; undefined while up. */
  readonly reason: string | undefined;
  /** Since when it is in its current state (ms since the epoch). */
  readonly since: number;
  /** The etcd revision the mirror holds. */
  readonly revision: number;
}

export interface EtcdStoreOptions {
  readonly prefix: string;
  readonly timeoutMs: number;
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
  readonly #options: EtcdStoreOptions;
  readonly #mirror: Mirror;
  #up = false;
  #reason: string | undefined = 'not connected yet';
  #since = Date.now();
  #stale = true;
  #probing = false;
  #closed = false;
  readonly #watch: PrefixWatch;
  #probeTimer: NodeJS.Timeout | undefined;

  constructor(client: Etcd3, options: EtcdStoreOptions) {
    this.client = client;
    this.prefix = options.prefix;
    this.dir = `etcd:${options.prefix}`;
    this.#options = options;
    this.#mirror = new Mirror(options);
    // The next probe reads the prefix whole and starts a new watch: nothing between is lost, revisions order it.
    this.#watch = new PrefixWatch(client, options.prefix, this.#mirror, () => void (this.#stale = true));
  }

  /** Loads the cached state, then tries etcd once; resolves either way (degraded when etcd did not answer). */
  async start(): Promise<void> {
    const cached = this.#mirror.loadCache();
    await this.#probe();
    if (!this.#up) {
      this.#options.log.warn(
        { reason: this.#reason, cachedRevision: cached ?? null },
        cached === undefined
          ? 'etcd unreachable at start and no cached state: serving the config file only until it answers'
          : 'etcd unreachable at start: serving the cached state',
      );
    }
    this.#probeTimer = setInterval(() => void this.#probe(), PROBE_MS);
    this.#probeTimer.unref();
  }

  get health(): StoreHealth {
    return { up: this.#up, reason: this.#reason, since: this.#since, revision: this.#mirror.revision };
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

  async write(name: string, chainText: string, meta: StoreMeta): Promise<void> {
    await this.put(CERTS + name, entryValue(chainText, meta));
  }

  async remove(name: string): Promise<void> {
    if (!this.has(name)) throw notFound(this, name);
    await this.delete(CERTS + name);
  }

  /** Writes `value` at `key` (below the prefix); the mirror holds it at once. Resolves with the write's revision; rejects with StoreUnavailableError. */
  async put(key: string, value: string): Promise<number> {
    assertFits(key, value);
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
    if (value !== undefined) assertFits(key, value);
    this.assertWritable();
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

  /** A write this node made (at `revision`), into the mirror before its watch event arrives; `value` undefined: a delete. */
  applyLocal(key: string, value: string | undefined, revision: number): void {
    this.#mirror.apply([{ key, value, revision }], revision);
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
      return await acquireLock(this.client, this.prefix + LOCKS + name, options);
    } catch (err) {
      throw new StoreUnavailableError(`the fleet's store (etcd) could not lock ${name}: ${(err as Error).message}`, { cause: err });
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#probeTimer);
    this.#mirror.flush();
    this.#watch.drop();
    this.client.close();
  }

  /** Throws StoreUnavailableError while etcd is unreachable: a change is refused before any work is done for it. */
  assertWritable(): void {
    if (!this.#up) {
      throw new StoreUnavailableError(
        `the fleet's store (etcd) is unreachable (${this.#reason}); changes are refused until it is back, and this node serves its last good state`,
      );
    }
  }

  /** One etcd call with this store's deadline, its failures as the store's errors (etcd-calls.ts), never etcd3's. */
  call<T>(what: string, call: () => Promise<T>): Promise<T> {
    return etcdCall(what, this.#options.timeoutMs, call);
  }

  /** A quorum read; after any doubt (start, a lost watch, etcd back) the whole prefix is read again. */
  async #probe(): Promise<void> {
    if (this.#probing || this.#closed) return;
    this.#probing = true;
    try {
      if (this.#stale) await this.#resync();
      else await this.call('answer a probe', () => this.client.get(this.prefix + TICKETS).exec());
      this.#setUp(undefined);
    } catch (err) {
      this.#stale = true;
      this.#watch.drop();
      this.#setUp((err as Error).message);
    } finally {
      this.#probing = false;
    }
  }

  async #resync(): Promise<void> {
    // Dropped before the read: what it would still deliver is in the snapshot.
    this.#watch.drop();
    const range = await this.call('read the fleet state', () => this.client.getAll().prefix(this.prefix).exec());
    const revision = Number(range.header.revision);
    const floor = this.#mirror.floor;
    if (revision < floor) {
      throw new Error(
        `etcd is at revision ${revision}, older than revision ${floor} this node already served; it keeps serving that (remove ${this.#options.cacheFile} to accept an etcd restored from an older backup)`,
      );
    }
    this.#watch.follow(revision);
    this.#stale = false;
    // Events come no sooner than the next turn: the snapshot is in place first.
    this.#mirror.replace(
      range.kvs.map(
        (kv) => [kv.key.toString('utf8').slice(this.prefix.length), { value: kv.value.toString('utf8'), modRevision: Number(kv.mod_revision) }] as const,
      ),
      revision,
    );
  }

  #setUp(reason: string | undefined): void {
    const up = reason === undefined;
    if (up === this.#up) {
      this.#reason = reason;
      return;
    }
    this.#up = up;
    this.#reason = reason;
    this.#since = Date.now();
    if (up) this.#options.log.info({ revision: this.#mirror.revision }, "the fleet's store (etcd) answers: changes are accepted again");
    else
      this.#options.log.warn(
        { reason, revision: this.#mirror.revision },
        "the fleet's store (etcd) is unreachable: serving the last good state, changes are refused",
      );
  }
}
