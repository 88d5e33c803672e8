/**
 * What serves, as the serving source (source.ts) keeps it between passes:
 * each store entry's and config certificate's record, the entries whose
 * latest version is refused, and every entry present, served or refused. A
 * commit applies one pass's delta (`apply`); a targeted pass answers for its
 * names alone, so the rest stay as they were.
 *
 * The records are layered (layered.ts): a commit of k changes costs
 * O(k + changes since the base), not a copy of every record. Owned by the
 * serving source; one commit at a time (coordinator.ts).
 */
import { LayeredMap } from './layered.js';
import type { NextServing } from './next-serving.js';
import type { CertificateRecord, Refusal, ServingDelta } from './spec.js';

export class ServedRecords {
  #records = new LayeredMap<string, CertificateRecord>(new Map());
  readonly #refusals = new Map<string, Refusal>();
  /** Owned here, updated in place by each commit (a targeted pass answers for its names alone). */
  #present = new Set<string>();

  get records(): ReadonlyMap<string, CertificateRecord> {
    return this.#records;
  }

  /** Entries whose latest version was refused, until they change or are removed. */
  get refusals(): ReadonlyMap<string, Refusal> {
    return this.#refusals;
  }

  /** Applies the pass `next` found; answers the input ids of the records it replaced or removed (their verdicts are moot). */
  apply(next: NextServing): string[] {
    const previous = this.#records;
    const superseded: string[] = [];
    for (const name of next.delta.remove) {
      const old = previous.get(name);
      if (old !== undefined) superseded.push(old.inputId);
      this.#refusals.delete(name);
    }
    for (const record of next.delta.upsert) {
      const old = previous.get(record.name);
      if (old !== undefined && old.inputId !== record.inputId) superseded.push(old.inputId);
      this.#refusals.delete(record.name);
    }
    let records = previous.with(
      next.delta.upsert.map((r) => [r.name, r] as const),
      next.delta.remove,
    );
    // A new base once the changes on top outgrow a quarter of it: each commit copies the top layer.
    if (records.changes > Math.max(1024, records.base.size / 4)) records = new LayeredMap(new Map(records));
    for (const refusal of next.refused) this.#refusals.set(refusal.name, refusal);
    if (next.targeted) {
      for (const name of next.answered) {
        if (next.present.has(name)) this.#present.add(name);
        else this.#present.delete(name);
      }
    } else this.#present = new Set(next.present);
    // Refusals of entries that have since gone from the store are moot.
    for (const name of this.#refusals.keys()) if (!this.#present.has(name)) this.#refusals.delete(name);
    this.#records = records;
    return superseded;
  }

  /** What serves once `delta` (not yet applied) is, as one whole delta: a rebase of the workers (serving/distribute.ts). */
  wholeWith(delta: ServingDelta): ServingDelta {
    const records = new Map(this.#records);
    for (const name of delta.remove) records.delete(name);
    for (const record of delta.upsert) records.set(record.name, record);
    return { generation: delta.generation, routing: delta.routing, upsert: [...records.values()], remove: [], whole: true };
  }
}
