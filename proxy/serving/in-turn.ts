/**
 * Work keyed by name, one at a time per name and in the order asked: the
 * certificate uploads of one store entry (source.ts). Each reads the entry's
 * pinned names and key id, validates against them and writes; two at once
 * each validated against what was there before the other wrote, so both were
 * answered as stored while the last write silently undid the first (for a
 * new entry, both took it as new, the second overwriting the names the
 * first had pinned, unchecked). In turn, each sees what the one before wrote,
 * as if they had come one after the other. Different names never wait for
 * each other. This orders one node's uploads; across a fleet's nodes, the
 * entry's write is conditional on the revision the validation read instead
 * (store/etcd-entries.ts), and the later one is refused.
 */
export class InTurn<K> {
  /** The last work queued per key, settled either way; gone once nothing waits behind it. */
  readonly #tails = new Map<K, Promise<unknown>>();

  /** Runs `work` once every earlier work for `key` has settled; its result or rejection is the caller's alone. */
  async run<T>(key: K, work: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(key) ?? Promise.resolve();
    const mine = before.then(work);
    const tail = mine.catch(() => undefined);
    this.#tails.set(key, tail);
    try {
      return await mine;
    } finally {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}
