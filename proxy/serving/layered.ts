/**
 * An immutable map made of a base and the changes on top of it, so that a
 * serving state (state.ts) with 100,000 certificates takes a one-name
 * change in time and memory proportional to the changes since the base was
 * built, not to the store: `with()` copies the top layer only, the base is
 * shared by every state built on it.
 *
 * The base is any ReadonlyMap: a plain Map, or a view that reads entries on
 * demand (a packed table, pack.ts). Whoever builds states decides when to
 * start again from a new base (state.ts flattens a plain base once the top
 * layer outgrows it; a packed base is replaced by the primary's next whole
 * state). Iterating visits every entry of the base: a view materialises each.
 *
 * Pure and synchronous.
 */

/** A deleted key in the top layer. */
const DELETED: unique symbol = Symbol('deleted');
type Slot<V> = V | typeof DELETED;

export class LayeredMap<K, V> implements ReadonlyMap<K, V> {
  readonly base: ReadonlyMap<K, V>;
  readonly #top: ReadonlyMap<K, Slot<V>>;
  readonly size: number;

  constructor(base: ReadonlyMap<K, V>, top: ReadonlyMap<K, Slot<V>> = new Map(), size = base.size) {
    this.base = base;
    this.#top = top;
    this.size = size;
  }

  /** How many keys the top layer holds (set or deleted since the base). */
  get changes(): number {
    return this.#top.size;
  }

  /** A new map: this one with `set` set and `remove` deleted (a key in both ends set). O(changes + this.changes). */
  with(set: Iterable<readonly [K, V]>, remove: Iterable<K> = []): LayeredMap<K, V> {
    const top = new Map(this.#top);
    let size = this.size;
    for (const key of remove) {
      if (this.#has(top, key)) size--;
      top.set(key, DELETED);
    }
    for (const [key, value] of set) {
      if (!this.#has(top, key)) size++;
      top.set(key, value);
    }
    return new LayeredMap(this.base, top, size);
  }

  get(key: K): V | undefined {
    const slot = this.#top.get(key);
    if (slot !== undefined) return slot === DELETED ? undefined : slot;
    return this.base.get(key);
  }

  has(key: K): boolean {
    return this.#has(this.#top, key);
  }

  /** Every entry in the base's order (a key set on top keeps its place), then the keys the base does not hold, as a Map would. */
  *entries(): MapIterator<[K, V]> {
    for (const [key, value] of this.base) {
      const slot = this.#top.get(key);
      if (slot === undefined) yield [key, value];
      else if (slot !== DELETED) yield [key, slot];
    }
    for (const [key, slot] of this.#top) if (slot !== DELETED && !this.base.has(key)) yield [key, slot];
  }

  *keys(): MapIterator<K> {
    for (const [key] of this.entries()) yield key;
  }

  *values(): MapIterator<V> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.entries();
  }

  forEach(callback: (value: V, key: K, map: ReadonlyMap<K, V>) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) callback.call(thisArg, value, key, this);
  }

  #has(top: ReadonlyMap<K, Slot<V>>, key: K): boolean {
    const slot = top.get(key);
    if (slot !== undefined) return slot !== DELETED;
    return this.base.has(key);
  }
}
