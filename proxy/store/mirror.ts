/**
 * The node's in-memory copy of the fleet's etcd prefix (etcd-link.ts keeps
 * it current): every key below the prefix but the lock keys, with the
 * revision it was written at, and the etcd revision the whole copy holds.
 *
 * Revisions order everything: a change older than what the mirror holds for
 * its key (a watch event behind this node's own write) is dropped, and a
 * whole snapshot is only ever taken at a revision the caller checked against
 * `floor`, the highest revision this node has served (kept in cache.ts's
 * file across restarts), so the node never goes back to an older state.
 *
 * `keys(under)` costs what it returns, not the whole mirror: the first call
 * for an `under` builds an index of the keys below it (one walk), kept up to
 * date by every set, delete and snapshot from then on. Callers ask for a few
 * fixed prefixes (certs/, routes/, the ACME state's parts), several of them on
 * every ACME change or once a second, and a fleet with 100,000 certificate
 * names holds as many keys: a walk each time cost milliseconds per call.
 * An index keeps the mirror's own (insertion) order, so the answer is the
 * same as a walk's.
 *
 * Every change is told once, by kind (layout.ts), to `onChange`; the
 * certificates and routes follow to the on-disk cache a moment later (a
 * burst of writes costs one file write; a burst that never ends, one every
 * CACHE_MAX_DELAY_MS). Secrets: the ticket keys are held
 * here, in memory, and never reach the cache.
 */
import type { Logger } from '../../keyserver/shared/log.js';
import { readCache, writeCache } from './cache.js';
import { CERTS, kindOf, LOCKS, ROUTES, type StoreChange } from './layout.js';

/** The on-disk cache follows the mirror this long after a change: a burst of writes costs one file write. */
const CACHE_DEBOUNCE_MS = 500;
/**
 * And never more than this after the first change it has not written: changes coming faster than the debounce for
 * ever (a writer rewriting one key in a loop, a mass renewal) put it off each time, and the file (and the floor it
 * carries) stayed at the state before them: a restart while etcd was away served that older state.
 */
const CACHE_MAX_DELAY_MS = 2_000;

/**
 * At most this many `under` values get an index (each costs a prefix test per set or delete); callers use a handful of
 * fixed prefixes, so one past this is a caller bug, and it is answered by a walk rather than grow the set.
 */
const MAX_INDEXES = 32;

export interface MirrorItem {
  readonly value: string;
  readonly modRevision: number;
}

export interface MirrorOptions {
  readonly prefix: string;
  /** The non-secret cache of the last good state (cache.ts). */
  readonly cacheFile: string;
  readonly log: Logger;
  /** Told after the mirror changed; `changes` says which kinds of state moved. */
  readonly onChange: (changes: ReadonlySet<StoreChange>) => void;
}

export class Mirror {
  readonly #options: MirrorOptions;
  #items = new Map<string, MirrorItem>();
  /** `under` to the keys below it (whole keys, in the order `#items` holds them); built on first ask. */
  #indexes = new Map<string, Set<string>>();
  #revision = 0;
  #floor = 0;
  #cacheTimer: NodeJS.Timeout | undefined;
  /** When the oldest change not yet in the cache file came (ms since the epoch); undefined: none waits. */
  #cacheDueSince: number | undefined;

  constructor(options: MirrorOptions) {
    this.#options = options;
  }

  /** The etcd revision the mirror holds. */
  get revision(): number {
    return this.#revision;
  }

  /** The highest revision this node has served: a snapshot below it is refused. */
  get floor(): number {
    return this.#floor;
  }

  /** Takes the cached state, if any (a start while etcd is away serves it); resolves with its revision. */
  loadCache(): number | undefined {
    const cached = readCache(this.#options.cacheFile, this.#options.prefix);
    if (cached === undefined) return undefined;
    this.#take(new Map(Object.entries(cached.entries)));
    this.#revision = this.#floor = cached.revision;
    return cached.revision;
  }

  item(key: string): MirrorItem | undefined {
    return this.#items.get(key);
  }

  /** Keys below `under`, without it. */
  keys(under: string): string[] {
    const index = this.#indexes.get(under) ?? this.#index(under);
    const keys: string[] = [];
    for (const key of index ?? this.#walk(under)) keys.push(key.slice(under.length));
    return keys;
  }

  /**
   * Changes of keys below the prefix (`value` undefined: a delete), then the mirror is at `revision` at least: the
   * watch's answer holds every change up to it. Without `revision` (this node's own write, before its watch event),
   * the mirror's revision stays: other nodes' writes before that one may still be on their way, and `revision` says
   * what the mirror holds all of (etcd-store.ts `reached`: a new lock holder works on no older state).
   */
  apply(changed: Iterable<{ readonly key: string; readonly value: string | undefined; readonly revision: number }>, revision?: number): void {
    const changes = new Set<StoreChange>();
    for (const { key, value, revision: at } of changed) this.#apply(key, value, at, changes);
    if (revision !== undefined) this.#revision = Math.max(this.#revision, revision);
    this.#changed(changes);
  }

  /** The whole prefix as read at `revision` (the caller checked it against `floor`), in place of what the mirror held. */
  replace(snapshot: Iterable<readonly [string, MirrorItem]>, revision: number): void {
    const next = new Map<string, MirrorItem>();
    for (const [key, item] of snapshot) if (!key.startsWith(LOCKS)) next.set(key, item);
    const changes = new Set<StoreChange>();
    for (const key of new Set([...next.keys(), ...this.#items.keys()])) {
      if (next.get(key)?.modRevision !== this.#items.get(key)?.modRevision || next.get(key)?.value !== this.#items.get(key)?.value) {
        const kind = kindOf(key);
        if (kind !== undefined) changes.add(kind);
      }
    }
    this.#take(next);
    this.#revision = revision;
    this.#changed(changes);
  }

  /** Writes a cache write still waiting, at once (the store closes). */
  flush(): void {
    if (this.#cacheTimer === undefined) return;
    clearTimeout(this.#cacheTimer);
    this.#cacheTimer = undefined;
    this.#persist();
  }

  #apply(key: string, value: string | undefined, revision: number, changes: Set<StoreChange>): void {
    if (key.startsWith(LOCKS)) return;
    const held = this.#items.get(key);
    // Older than what the mirror holds (a watch event behind a local write): already superseded.
    if (held !== undefined && held.modRevision >= revision) return;
    if (value === undefined) {
      if (held === undefined) return;
      this.#items.delete(key);
      for (const [under, index] of this.#indexes) if (key.startsWith(under)) index.delete(key);
    } else {
      this.#items.set(key, { value, modRevision: revision });
      // A new key goes last in `#items` and so last in each index (Set.add keeps an existing key where it is, as Map.set does).
      if (held === undefined) for (const [under, index] of this.#indexes) if (key.startsWith(under)) index.add(key);
    }
    const kind = kindOf(key);
    if (kind !== undefined) changes.add(kind);
  }

  /** `items` in place of what the mirror held; every index is rebuilt from it (one walk per index, as the swap itself walks). */
  #take(items: Map<string, MirrorItem>): void {
    this.#items = items;
    for (const under of this.#indexes.keys()) this.#indexes.set(under, new Set(this.#walk(under)));
  }

  /** A new index for `under`, kept from now on; undefined past MAX_INDEXES. */
  #index(under: string): Set<string> | undefined {
    if (this.#indexes.size >= MAX_INDEXES) return undefined;
    const index = new Set(this.#walk(under));
    this.#indexes.set(under, index);
    return index;
  }

  /** The keys below `under` by a walk of the whole mirror, in its order. */
  *#walk(under: string): Generator<string> {
    for (const key of this.#items.keys()) if (key.startsWith(under)) yield key;
  }

  #changed(changes: ReadonlySet<StoreChange>): void {
    if (changes.size === 0) return;
    if (changes.has('certificates') || changes.has('routes')) {
      clearTimeout(this.#cacheTimer);
      const now = Date.now();
      this.#cacheDueSince ??= now;
      const wait = Math.max(0, Math.min(CACHE_DEBOUNCE_MS, this.#cacheDueSince + CACHE_MAX_DELAY_MS - now));
      this.#cacheTimer = setTimeout(() => {
        this.#cacheTimer = undefined;
        this.#persist();
      }, wait);
      this.#cacheTimer.unref();
    }
    this.#options.onChange(changes);
  }

  /** The non-secret part of the mirror to the cache file: certificates and routes, never the ticket keys. */
  #persist(): void {
    this.#cacheDueSince = undefined;
    const entries: Record<string, MirrorItem> = {};
    for (const [key, item] of this.#items) if (key.startsWith(CERTS) || key.startsWith(ROUTES)) entries[key] = item;
    try {
      writeCache(this.#options.cacheFile, { prefix: this.#options.prefix, revision: this.#revision, entries });
      this.#floor = Math.max(this.#floor, this.#revision);
    } catch (err) {
      this.#options.log.warn(
        { file: this.#options.cacheFile, reason: (err as NodeJS.ErrnoException).code ?? (err as Error).message },
        'cannot write the fleet cache',
      );
    }
  }
}
