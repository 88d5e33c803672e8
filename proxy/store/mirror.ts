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
 * Every change is told once, by kind (layout.ts), to `onChange`; the
 * certificates and routes follow to the on-disk cache a moment later (a
 * burst of writes costs one file write). Secrets: the ticket keys are held
 * here, in memory, and never reach the cache.
 */
import type { Logger } from '../../keyserver/shared/log.js';
import { readCache, writeCache } from './cache.js';
import { CERTS, kindOf, LOCKS, ROUTES, type StoreChange } from './layout.js';

/** The on-disk cache follows the mirror this long after a change: a burst of writes costs one file write. */
const CACHE_DEBOUNCE_MS = 500;

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
  #revision = 0;
  #floor = 0;
  #cacheTimer: NodeJS.Timeout | undefined;

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
    this.#items = new Map(Object.entries(cached.entries));
    this.#revision = this.#floor = cached.revision;
    return cached.revision;
  }

  item(key: string): MirrorItem | undefined {
    return this.#items.get(key);
  }

  /** Keys below `under`, without it. */
  keys(under: string): string[] {
    return [...this.#items.keys()].filter((k) => k.startsWith(under)).map((k) => k.slice(under.length));
  }

  /** Changes of keys below the prefix (`value` undefined: a delete), then the mirror is at `revision` at least. */
  apply(changed: Iterable<{ readonly key: string; readonly value: string | undefined; readonly revision: number }>, revision: number): void {
    const changes = new Set<StoreChange>();
    for (const { key, value, revision: at } of changed) this.#apply(key, value, at, changes);
    this.#revision = Math.max(this.#revision, revision);
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
    this.#items = next;
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
