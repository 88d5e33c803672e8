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
 * node ever goes back to an older state.
 *
 * Secrets: the ticket keys sit in etcd and in this process's memory only,
 * never in the on-disk cache; etcd's TLS and auth protect them (README).
 */
import type { Etcd3, IWatchResponse, Watcher } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';
import { CertificateError, CertificateStoreError } from '../certs/errors.js';
import { parseStoreMeta, STORE_ENTRY_NAME, type StoreEntry, type StoreEntryRef, type StoreMeta } from '../certs/store.js';
import { readCache, writeCache } from './cache.js';
import { assertFits, etcdCall } from './etcd-calls.js';
import { CERTS, kindOf, keyOf, LOCKS, ROUTES, type StoreChange, TICKETS } from './layout.js';
import { acquireLock, fencedPut, type HeldLock, type LockOptions } from './lock.js';
import { type EntryStorage, StoreUnavailableError } from './storage.js';

export { ACME, CERTS, LOCKS, ROUTES, type StoreChange, TICKETS } from './layout.js';

/** How often etcd is probed; also the bound on how long a lost watch goes unnoticed. */
const PROBE_MS = 1_000;
/** The on-disk cache follows the mirror this long after a change: a burst of writes costs one file write. */
const CACHE_DEBOUNCE_MS = 500;

interface Item {
  readonly value: string;
  readonly modRevision: number;
}

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
  #items = new Map<string, Item>();
  #revision = 0;
  /** The highest revision this node has served: a snapshot below it is refused. */
  #floor = 0;
  #up = false;
  #reason: string | undefined = 'not connected yet';
  #since = Date.now();
  #stale = true;
  #probing = false;
  #closed = false;
  #watcher: Watcher | undefined;
  readonly #endedByEtcd = new WeakSet<Watcher>();
  #probeTimer: NodeJS.Timeout | undefined;
  #cacheTimer: NodeJS.Timeout | undefined;

  constructor(client: Etcd3, options: EtcdStoreOptions) {
    this.client = client;
    this.prefix = options.prefix;
    this.dir = `etcd:${options.prefix}`;
    this.#options = options;
  }

  /** Loads the cached state, then tries etcd once; resolves either way (degraded when etcd did not answer). */
  async start(): Promise<void> {
    const cached = readCache(this.#options.cacheFile, this.prefix);
    if (cached !== undefined) {
      this.#items = new Map(Object.entries(cached.entries));
      this.#revision = this.#floor = cached.revision;
    }
    await this.#probe();
    if (!this.#up) {
      this.#options.log.warn(
        { reason: this.#reason, cachedRevision: cached?.revision ?? null },
        cached === undefined
          ? 'etcd unreachable at start and no cached state: serving the config file only until it answers'
          : 'etcd unreachable at start: serving the cached state',
      );
    }
    this.#probeTimer = setInterval(() => void this.#probe(), PROBE_MS);
    this.#probeTimer.unref();
  }

  get health(): StoreHealth {
    return { up: this.#up, reason: this.#reason, since: this.#since, revision: this.#revision };
  }

  /** The value at `key` (below the prefix) as the mirror holds it. */
  item(key: string): { readonly value: string; readonly modRevision: number } | undefined {
    return this.#items.get(key);
  }

  /** Mirror keys below `under`, without it. */
  keys(under: string): string[] {
    return [...this.#items.keys()].filter((k) => k.startsWith(under)).map((k) => k.slice(under.length));
  }

  list(): StoreEntryRef[] {
    const refs: StoreEntryRef[] = [];
    for (const name of this.keys(CERTS)) {
      const item = this.#items.get(CERTS + name)!;
      if (!STORE_ENTRY_NAME.test(name)) continue;
      const where = `${this.dir}${CERTS}${name}`;
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

  has(name: string): boolean {
    return this.#items.has(CERTS + name);
  }

  read(name: string): StoreEntry {
    const item = this.#items.get(CERTS + name);
    const where = `${this.dir}${CERTS}${name}`;
    if (item === undefined) throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${this.dir}`);
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

  async write(name: string, chainText: string, meta: StoreMeta): Promise<void> {
    await this.put(CERTS + name, JSON.stringify({ chain: chainText, meta }));
  }

  async remove(name: string): Promise<void> {
    if (!this.has(name)) throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${this.dir}`);
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
    return {
      dir: this.dir,
      list: () => this.list(),
      has: (name) => this.has(name),
      read: (name) => this.read(name),
      write: async (name, chainText, meta) => {
        const value = JSON.stringify({ chain: chainText, meta });
        assertFits(CERTS + name, value);
        this.assertWritable();
        const revision = await this.call(`write ${CERTS}${name}`, () => fencedPut(this.client, lock, this.prefix + CERTS + name, value));
        if (revision === undefined) {
          throw new StoreUnavailableError(`the lock ${lock.key} was lost before ${name} was written (another node holds it now); nothing was written`);
        }
        this.applyLocal(CERTS + name, value, revision);
      },
    };
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
    while (this.#revision < revision) {
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
    const changes = new Set<StoreChange>();
    this.#apply(key, value, revision, changes);
    this.#revision = Math.max(this.#revision, revision);
    this.#changed(changes);
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
    if (this.#cacheTimer !== undefined) {
      clearTimeout(this.#cacheTimer);
      this.#persist();
    }
    this.#dropWatcher();
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
      this.#dropWatcher();
      this.#setUp((err as Error).message);
    } finally {
      this.#probing = false;
    }
  }

  async #resync(): Promise<void> {
    // Dropped before the read: what it would still deliver is in the snapshot.
    this.#dropWatcher();
    const range = await this.call('read the fleet state', () => this.client.getAll().prefix(this.prefix).exec());
    const revision = Number(range.header.revision);
    if (revision < this.#floor) {
      throw new Error(
        `etcd is at revision ${revision}, older than revision ${this.#floor} this node already served; it keeps serving that (remove ${this.#options.cacheFile} to accept an etcd restored from an older backup)`,
      );
    }
    const next = new Map<string, Item>();
    for (const kv of range.kvs) {
      const key = kv.key.toString('utf8').slice(this.prefix.length);
      if (!key.startsWith(LOCKS)) next.set(key, { value: kv.value.toString('utf8'), modRevision: Number(kv.mod_revision) });
    }
    const changes = new Set<StoreChange>();
    for (const key of new Set([...next.keys(), ...this.#items.keys()])) {
      if (next.get(key)?.modRevision !== this.#items.get(key)?.modRevision || next.get(key)?.value !== this.#items.get(key)?.value) {
        const kind = kindOf(key);
        if (kind !== undefined) changes.add(kind);
      }
    }
    this.#items = next;
    this.#revision = revision;
    const watcher = this.client
      .watch()
      .prefix(this.prefix)
      .startRevision(String(revision + 1))
      .watcher();
    watcher.on('data', (response: IWatchResponse) => this.#onEvents(response));
    // The next probe reads the prefix whole and starts a new watch: nothing between is lost, revisions order it.
    watcher.on('disconnected', () => void (this.#stale = true));
    watcher.on('error', () => {
      // etcd ended this watch itself (its revision compacted away): a cancel of it would go unanswered.
      this.#endedByEtcd.add(watcher);
      this.#stale = true;
    });
    this.#watcher = watcher;
    this.#stale = false;
    this.#changed(changes);
  }

  /**
   * Stops listening to the current watch and cancels it without waiting on
   * the cancel. A watch etcd itself ended (its revision compacted away while
   * the stream was down) is not cancelled at all: etcd answers such a cancel
   * for a watch etcd3 has already forgotten, which wedges etcd3's shared watch
   * stream (no later watch of this client ever starts), and awaiting the
   * cancel held the probe for ever. Either way the node stopped following
   * etcd while it said it was up.
   */
  #dropWatcher(): void {
    const watcher = this.#watcher;
    this.#watcher = undefined;
    if (watcher === undefined) return;
    watcher.removeAllListeners();
    // An 'error' with no listener would throw out of etcd3's stream handler.
    watcher.on('error', () => undefined);
    if (!this.#endedByEtcd.has(watcher)) void watcher.cancel().catch(() => undefined);
  }

  #onEvents(response: IWatchResponse): void {
    const changes = new Set<StoreChange>();
    for (const event of response.events) {
      // The watcher strips the namespace, not our prefix: keys arrive whole.
      const key = keyOf(event.kv, this.prefix);
      if (key === undefined) continue;
      this.#apply(key, event.type === 'Delete' ? undefined : event.kv.value.toString('utf8'), Number(event.kv.mod_revision), changes);
    }
    this.#revision = Math.max(this.#revision, Number(response.header.revision));
    this.#changed(changes);
  }

  #apply(key: string, value: string | undefined, revision: number, changes: Set<StoreChange>): void {
    if (key.startsWith(LOCKS)) return;
    const held = this.#items.get(key);
    // Older than what the mirror holds (a watch event behind a local write): already superseded.
    if (held !== undefined && held.modRevision >= revision) return;
    if (value === undefined) {
      if (held === undefined) return;
      this.#items.delete(key);
    } else this.#items.set(key, { value, modRevision: revision });
    const kind = kindOf(key);
    if (kind !== undefined) changes.add(kind);
  }

  #changed(changes: ReadonlySet<StoreChange>): void {
    if (changes.size === 0) return;
    if (changes.has('certificates') || changes.has('routes')) {
      clearTimeout(this.#cacheTimer);
      this.#cacheTimer = setTimeout(() => {
        this.#cacheTimer = undefined;
        this.#persist();
      }, CACHE_DEBOUNCE_MS);
      this.#cacheTimer.unref();
    }
    this.#options.onChange(changes);
  }

  /** The non-secret part of the mirror to the cache file: certificates and routes, never the ticket keys. */
  #persist(): void {
    const entries: Record<string, Item> = {};
    for (const [key, item] of this.#items) if (key.startsWith(CERTS) || key.startsWith(ROUTES)) entries[key] = item;
    try {
      writeCache(this.#options.cacheFile, { prefix: this.prefix, revision: this.#revision, entries });
      this.#floor = Math.max(this.#floor, this.#revision);
    } catch (err) {
      this.#options.log.warn(
        { file: this.#options.cacheFile, reason: (err as NodeJS.ErrnoException).code ?? (err as Error).message },
        'cannot write the fleet cache',
      );
    }
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
    if (up) this.#options.log.info({ revision: this.#revision }, "the fleet's store (etcd) answers: changes are accepted again");
    else
      this.#options.log.warn({ reason, revision: this.#revision }, "the fleet's store (etcd) is unreachable: serving the last good state, changes are refused");
  }
}
