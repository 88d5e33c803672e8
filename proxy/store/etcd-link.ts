/**
 * The fleet store's link to etcd: whether etcd answers, and the mirror
 * (mirror.ts) following it. A probe every second (a quorum read) notices a
 * lost etcd, marks the store degraded (/readyz says so; the store refuses
 * writes while it is) and, once etcd answers again, or after any other doubt
 * (the start, a lost watch), reads the prefix whole and follows it anew from
 * that snapshot's revision (prefix-watch.ts): the node converges within a
 * probe period or two, and nothing between the snapshot and the watch is
 * lost. A watch that shows nothing of what etcd did a probe period before
 * (its member stalled or cut off: probes answered by the others find etcd up)
 * is moved to another member, from the mirror's revision (`#checkWatch`).
 *
 * A snapshot older than the revision this node has already served (the
 * mirror's floor, kept across restarts in cache.ts's file) is refused: an etcd
 * restored from an older backup never takes the node back in time.
 *
 * The store (etcd-store.ts) owns the reads, writes and locks, and asks
 * this link whether a write may go (`up`).
 */
import type { Etcd3 } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';
import { etcdCall } from './etcd-calls.js';
import { TICKETS } from './layout.js';
import type { Mirror } from './mirror.js';
import { PrefixWatch } from './prefix-watch.js';

/** How often etcd is probed; also the bound on how long a lost watch goes unnoticed. */
const PROBE_MS = 1_000;

export interface StoreHealth {
  readonly up: boolean;
  /** Why it is degraded; undefined while up. */
  readonly reason: string | undefined;
  /** Since when it is in its current state (ms since the epoch). */
  readonly since: number;
  /** The etcd revision the mirror holds. */
  readonly revision: number;
}

export interface EtcdLinkOptions {
  readonly prefix: string;
  readonly timeoutMs: number;
  /** Named in the refusal of an older snapshot: removing it accepts one. */
  readonly cacheFile: string;
  readonly log: Logger;
}

export class EtcdLink {
  readonly #client: Etcd3;
  readonly #options: EtcdLinkOptions;
  readonly #mirror: Mirror;
  readonly #watch: PrefixWatch;
  #up = false;
  #reason: string | undefined = 'not connected yet';
  #since = Date.now();
  #stale = true;
  #probing = false;
  /** The revision the last probe found etcd at, while the watch had not shown it yet. */
  #ahead: number | undefined;
  #closed = false;
  #probeTimer: NodeJS.Timeout | undefined;

  constructor(client: Etcd3, options: EtcdLinkOptions, mirror: Mirror) {
    this.#client = client;
    this.#options = options;
    this.#mirror = mirror;
    // The next probe reads the prefix whole and starts a new watch: nothing between is lost, revisions order it.
    this.#watch = new PrefixWatch(client, options.prefix, mirror, () => void (this.#stale = true));
  }

  /** Probes once (resolves either way: `up` says how it went), then every PROBE_MS. */
  async start(): Promise<void> {
    await this.#probe();
    this.#probeTimer = setInterval(() => void this.#probe(), PROBE_MS);
    this.#probeTimer.unref();
  }

  get up(): boolean {
    return this.#up;
  }

  get health(): StoreHealth {
    return { up: this.#up, reason: this.#reason, since: this.#since, revision: this.#mirror.revision };
  }

  /** Stops probing and following; the client is the store's to close. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#probeTimer);
    this.#watch.drop();
  }

  /** A quorum read; after any doubt (start, a lost watch, etcd back) the whole prefix is read again. */
  async #probe(): Promise<void> {
    if (this.#probing || this.#closed) return;
    this.#probing = true;
    try {
      if (this.#stale) await this.#resync();
      else {
        const answer = await etcdCall('answer a probe', this.#options.timeoutMs, () => this.#client.get(this.#options.prefix + TICKETS).exec());
        this.#checkWatch(Number(answer.header.revision));
      }
      this.#setUp(undefined);
    } catch (err) {
      this.#stale = true;
      this.#watch.drop();
      this.#setUp((err as Error).message);
    } finally {
      this.#probing = false;
    }
  }

  /**
   * A watch whose member stalled or was cut off from its quorum delivers
   * nothing, and etcd3 keeps it there (watch-stream.ts), while the probes,
   * sent to members that answer, find etcd up: the node said it was up and
   * served changes 1.3-8 s late, or not until the member ran again. etcd was
   * at `revision` when it answered this probe; the watch must have shown the
   * revision the previous probe saw by now, a probe period later (it shows
   * each change within milliseconds, and its creation's revision when it is
   * started or moved). When it has not, it is moved to another member from
   * the mirror's revision. A write under another prefix of the same cluster
   * moves the revision too, and the watch, which has nothing to show for it,
   * is moved once as well (a new stream and a watch on it, nothing read).
   */
  #checkWatch(revision: number): void {
    const previous = this.#ahead;
    if (previous !== undefined && this.#watch.shown < previous) {
      this.#ahead = undefined;
      const shown = this.#watch.shown;
      const left = this.#watch.move(this.#mirror.revision);
      this.#options.log.info(
        { member: left ?? null, watchRevision: shown, etcdRevision: previous },
        "the fleet's watch on etcd showed nothing etcd had done a probe period before: following it again on another member",
      );
      return;
    }
    this.#ahead = revision > this.#watch.shown ? revision : undefined;
  }

  async #resync(): Promise<void> {
    const { prefix } = this.#options;
    // Dropped before the read: what it would still deliver is in the snapshot.
    this.#watch.drop();
    const range = await etcdCall('read the fleet state', this.#options.timeoutMs, () => this.#client.getAll().prefix(prefix).exec());
    const revision = Number(range.header.revision);
    const floor = this.#mirror.floor;
    if (revision < floor) {
      throw new Error(
        `etcd is at revision ${revision}, older than revision ${floor} this node already served; it keeps serving that (remove ${this.#options.cacheFile} to accept an etcd restored from an older backup)`,
      );
    }
    this.#watch.follow(revision);
    this.#ahead = undefined;
    this.#stale = false;
    // Events come no sooner than the next turn: the snapshot is in place first.
    this.#mirror.replace(
      range.kvs.map(
        (kv) => [kv.key.toString('utf8').slice(prefix.length), { value: kv.value.toString('utf8'), modRevision: Number(kv.mod_revision) }] as const,
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
