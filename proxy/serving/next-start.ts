/**
 * What a serving source keeps for the next start (the cluster primary's,
 * `keepState`; source.ts): the whole state last sent to the workers as a pack
 * (kept.ts), which a start whose entries' files still match serves again
 * unread, and the log of the version of each store entry last served
 * (last-served.ts), which a start that refuses an entry's files falls back on
 * (serve-last.ts). A fleet's node keeps no pack (its store is etcd), only its
 * own log, of etcd revisions.
 *
 * The log speaks for one generation (`#servedGeneration`): brought to each
 * commit's (`committed`), or started anew on each whole state written or sent
 * again as a pack (`keepWritten`, `keptPackFor`). Owned by the serving source;
 * called in its order (one pass at a time: coordinator.ts).
 */
import type { EtcdStore } from '../store/etcd-store.js';
import { type KeptState, keepPacked, keptDir, loadKept, prepareKeptDir } from './kept.js';
import { LastServed, type ServedVersion } from './last-served.js';
import { PACK_THRESHOLD, type PackedDelta } from './pack.js';
import type { SeenStat } from './prepare.js';
import type { NextServing } from './next-serving.js';
import type { CertificateRecord, Refusal, ServingDelta } from './spec.js';

export class NextStart {
  readonly #keepState: boolean;
  readonly #stateDir: string;
  readonly #fleet: boolean;
  readonly #warn: (message: string) => void;
  /** The serving source's stats of what each pass read (prepare.ts), for the revision a fleet's row speaks for. */
  readonly #seen: ReadonlyMap<string, SeenStat>;
  /** The version of each store entry last served, for a start that refuses its files (last-served.ts); with the kept state. */
  readonly #lastServed: LastServed | undefined;
  /** The generation the log of last served versions speaks for; 0: the last run's, not yet written by this one. */
  #servedGeneration = 0;
  /** A fleet's entries whose latest value is refused: the etcd revision judged (statId), for the log of last served versions. */
  readonly #refusedAt = new Map<string, string>();
  /** The serving state the last run kept (kept.ts), until the first pass has used it; then only what can be sent again. */
  #kept: KeptState | undefined;
  /** Records made from the kept state's rows at start: a state of exactly these is the kept pack. */
  readonly #fromKept = new WeakSet<CertificateRecord>();

  /**
   * `keepState`: keep whole states and the log (the cluster primary); else this keeps nothing. `stateDir`, `storeDir`:
   * restart-only settings (restart-only.ts), fixed for the run. `shared`: the fleet's store, whose log is of revisions.
   */
  constructor(options: {
    readonly keepState: boolean;
    readonly stateDir: string;
    readonly storeDir: string;
    readonly shared: EtcdStore | undefined;
    readonly seen: ReadonlyMap<string, SeenStat>;
    readonly warn: (message: string) => void;
  }) {
    const { keepState, stateDir, storeDir, shared, warn } = options;
    this.#keepState = keepState;
    this.#stateDir = stateDir;
    this.#fleet = shared !== undefined;
    this.#warn = warn;
    this.#seen = options.seen;
    this.#lastServed = !keepState
      ? undefined
      : shared === undefined
        ? new LastServed(keptDir(stateDir), storeDir, warn)
        : new LastServed(keptDir(stateDir), shared.dir, warn, { revisionOf: (record) => this.#revisionOf(record) });
    // A fleet's node keeps its own log, of etcd revisions (last-served.ts): one left by an earlier run on the store
    // directory would, after this run, name versions older than what served since.
    if (keepState && shared !== undefined) new LastServed(keptDir(stateDir), storeDir, warn).discard();
  }

  /** The state the last run kept, read for the first pass; undefined when none is kept (or in a fleet). */
  loadKept(): KeptState | undefined {
    return this.#keepState && !this.#fleet ? loadKept(this.#stateDir, this.#warn) : undefined;
  }

  /** What the last run served of each entry, for the first pass (serve-last.ts); undefined when no log is kept. */
  lastServedReader(kept: KeptState | undefined): ((name: string) => ServedVersion | undefined) | undefined {
    return this.#lastServed?.reader(kept);
  }

  /** The first pass used `kept`: the records it made of `fromKept`'s rows make the kept pack's state, while they serve. */
  adopt(kept: KeptState, fromKept: Iterable<string>, records: ReadonlyMap<string, CertificateRecord>): void {
    this.#kept = kept;
    for (const name of fromKept) {
      const record = records.get(name);
      if (record !== undefined) this.#fromKept.add(record);
    }
  }

  /**
   * The etcd revision a fleet's served record speaks for (last-served.ts): the refused value judged after it, while it
   * serves on; else its own, as read. Undefined when not known (the row is then never fallen back on).
   */
  #revisionOf(record: CertificateRecord): string | undefined {
    const refused = this.#refusedAt.get(record.name);
    if (refused !== undefined) return refused;
    const seen = this.#seen.get(record.name);
    return seen?.inputId === record.inputId ? seen.statId : undefined;
  }

  /**
   * Brings the log of last served versions (last-served.ts) to the generation just committed (`next`, leaving
   * `records` serving and `refusals` refused): the delta appended when the log speaks for the one before; else, for a
   * state that goes to the workers inline, the log written whole; else (a large state, or a large change) it waits for
   * the whole state the workers are sent as a pack, which starts it anew (keepWritten): until then it holds what they
   * served last.
   */
  committed(next: NextServing, records: ReadonlyMap<string, CertificateRecord>, refusals: ReadonlyMap<string, Refusal>): void {
    const { delta } = next;
    const log = this.#lastServed;
    if (log === undefined || this.#servedGeneration >= delta.generation) return;
    const fleet = this.#fleet;
    // A fleet's entry whose new value is refused while its previous version serves on: that version's row now speaks
    // for the refused revision (the one a restart may find and fall back from). Kept until the entry changes.
    const refusedOn: CertificateRecord[] = [];
    if (fleet) {
      for (const record of delta.upsert) this.#refusedAt.delete(record.name);
      for (const name of delta.remove) this.#refusedAt.delete(name);
      for (const [name, statId] of next.refusedAt ?? []) {
        const record = records.get(name);
        if (record === undefined || this.#refusedAt.get(name) === statId) continue;
        this.#refusedAt.set(name, statId);
        if (!delta.upsert.includes(record)) refusedOn.push(record);
      }
      for (const name of this.#refusedAt.keys()) if (!records.has(name) || !refusals.has(name)) this.#refusedAt.delete(name);
    }
    const size = records.size;
    const lines = log.lines;
    const follows = lines !== undefined && this.#servedGeneration === delta.generation - 1 && delta.upsert.length + delta.remove.length <= PACK_THRESHOLD;
    // A small state's log is written whole again once it holds twice its rows; a large one's starts anew with each pack
    // (a fleet's, which keeps no pack, is written whole instead).
    if (follows && ((size > PACK_THRESHOLD && !fleet) || lines <= 2 * size + 64)) log.append([...delta.upsert, ...refusedOn], delta.remove);
    else if (size <= PACK_THRESHOLD || fleet) log.rewrite(null, records.values());
    else return;
    this.#servedGeneration = delta.generation;
  }

  /** The directory whole states are kept in for the next start (kept.ts), made now; undefined when none are kept. */
  keptDir(): string | undefined {
    return this.#keepState && !this.#fleet ? prepareKeptDir(this.#stateDir, this.#kept?.packed.file) : undefined;
  }

  /** The file of the pack kept by the last run, until a newer whole state is written. */
  get keptPack(): string | undefined {
    return this.#kept?.packed.file;
  }

  /** The kept pack when `whole` is exactly the state it holds (every record taken from it at start): sent again, not written. */
  keptPackFor(whole: ServingDelta): PackedDelta | undefined {
    const kept = this.#kept;
    if (kept === undefined || whole.upsert.length !== kept.count) return undefined;
    for (const record of whole.upsert) if (!this.#fromKept.has(record)) return undefined;
    // What serves is the kept pack's state: the log of last served versions starts anew on it.
    if (!this.#fleet) this.#lastServed?.rewrite(kept.packed.file, []);
    this.#servedGeneration = whole.generation;
    return kept.packed;
  }

  /** Records a whole state just written for the workers as the one kept for the next start. */
  keepWritten(packed: PackedDelta, whole: ServingDelta, chains: Float64Array): void {
    this.#kept = undefined;
    const statOf = (record: CertificateRecord): string | undefined => {
      const seen = this.#seen.get(record.name);
      return seen?.settled && seen.inputId === record.inputId ? seen.statId : undefined;
    };
    // The log of last served versions starts anew on it; or, when it could not be kept, goes (it would be stale).
    if (keepPacked(this.#stateDir, packed, whole.upsert, chains, statOf, this.#warn)) this.#lastServed?.rewrite(packed.file, []);
    else this.#lastServed?.discard();
    this.#servedGeneration = whole.generation;
  }
}
