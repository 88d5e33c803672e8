/**
 * The watch that keeps the node's mirror (mirror.ts) current between two
 * snapshots of the fleet's prefix (etcd-link.ts reads them): it starts at
 * the revision after the snapshot, so nothing between is lost, and applies
 * every change in order. When the watch is lost (the stream disconnected,
 * or etcd ended it because its revision was compacted away) it says so once
 * (`onLost`); the store then reads the prefix whole again and follows anew.
 * A watch that says nothing though etcd went on (its member stalled or cut
 * off: etcd3 does not notice) is moved to another member (`move`), from the
 * revision the mirror holds.
 */
import type { Etcd3, IWatchResponse, Watcher } from 'etcd3';
import { keyOf } from './layout.js';
import type { Mirror } from './mirror.js';
import { moveWatchStream } from './watch-stream.js';

export class PrefixWatch {
  readonly #client: Etcd3;
  readonly #prefix: string;
  readonly #mirror: Mirror;
  readonly #onLost: () => void;
  #watcher: Watcher | undefined;
  #shown = 0;
  readonly #endedByEtcd = new WeakSet<Watcher>();

  constructor(client: Etcd3, prefix: string, mirror: Mirror, onLost: () => void) {
    this.#client = client;
    this.#prefix = prefix;
    this.#mirror = mirror;
    this.#onLost = onLost;
  }

  /** Follows every change after `revision` (the snapshot's), in place of any watch before. */
  follow(revision: number): void {
    this.drop();
    this.#shown = revision;
    const watcher = this.#client
      .watch()
      .prefix(this.#prefix)
      .startRevision(String(revision + 1))
      .watcher();
    // etcd's answer to the watch's creation: its member was there at that revision.
    watcher.on('connected', (response: IWatchResponse) => this.#show(Number(response.header.revision)));
    watcher.on('data', (response: IWatchResponse) => this.#onEvents(response));
    watcher.on('disconnected', () => this.#onLost());
    watcher.on('error', () => {
      // etcd ended this watch itself (its revision compacted away): a cancel of it would go unanswered.
      this.#endedByEtcd.add(watcher);
      this.#onLost();
    });
    this.#watcher = watcher;
  }

  /**
   * The newest etcd revision the current watch has shown it reached: its
   * start, the revision etcd created it at, or that of its last answer. A
   * watch whose member stalled or was cut off shows none past it while etcd
   * goes on (etcd-link.ts compares it with its probes').
   */
  get shown(): number {
    return this.#shown;
  }

  /**
   * Follows every change after `revision` (the mirror's) on a new stream, on
   * another member (watch-stream.ts): the current watch's member no longer
   * delivers. Nothing is read again: the new watch starts where the mirror is.
   * Returns the address of the member left, undefined when there was no
   * stream to leave.
   */
  move(revision: number): string | undefined {
    this.drop();
    const left = moveWatchStream(this.#client);
    this.follow(revision);
    return left;
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
  drop(): void {
    const watcher = this.#watcher;
    this.#watcher = undefined;
    if (watcher === undefined) return;
    watcher.removeAllListeners();
    // An 'error' with no listener would throw out of etcd3's stream handler.
    watcher.on('error', () => undefined);
    if (!this.#endedByEtcd.has(watcher)) void watcher.cancel().catch(() => undefined);
  }

  #onEvents(response: IWatchResponse): void {
    const changed: { key: string; value: string | undefined; revision: number }[] = [];
    for (const event of response.events) {
      // The watcher strips the namespace, not our prefix: keys arrive whole.
      const key = keyOf(event.kv, this.#prefix);
      if (key === undefined) continue;
      changed.push({ key, value: event.type === 'Delete' ? undefined : event.kv.value.toString('utf8'), revision: Number(event.kv.mod_revision) });
    }
    this.#mirror.apply(changed, Number(response.header.revision));
    this.#show(Number(response.header.revision));
  }

  #show(revision: number): void {
    if (revision > this.#shown) this.#shown = revision;
  }
}
