/**
 * The certificates of a pack (pack.ts) as a worker holds them: the index
 * only (entry name → row, served name → row, where each row's record and
 * chain are in the file), and each record read with one positioned read when
 * something asks for it. A worker serving 100,000 names keeps a few maps of
 * strings and two typed arrays instead of 100,000 records and certificates;
 * what it materialises is bounded by MATERIALISED (plus the stapled rows,
 * pinned: the stapler knows a certificate by identity).
 *
 * The maps a serving state needs (state.ts) are views over the table that
 * materialise on `get`; iterating a view materialises every row, which only
 * a rebuild does.
 *
 * Concurrency: worker-local, synchronous. Immutable once built.
 */
import { LRUCache } from 'lru-cache';
import type { ServedCertificate } from '../certs/certificate.js';
import { buildNameIndex, type NameIndex } from '../tls/names.js';
import type { PackFile } from './pack.js';
import { servedFromRecord } from './served.js';
import type { CertificateRecord } from './spec.js';

/** One row of a pack's index: entry name, served names, record JSON length, chain length, stapled (1) or not (0). */
export type PackedRow = [name: string, names: readonly string[], recordBytes: number, chainBytes: number, stapled: 0 | 1];

/** Records and certificates kept once read: a handshake to a name whose context is cached reads nothing. */
const MATERIALISED = 2048;

interface Materialised {
  readonly record: CertificateRecord;
  readonly certificate: ServedCertificate;
}

export class PackedTable {
  readonly #pack: PackFile;
  /** Where each row's record starts in the file; its chain follows it. */
  readonly #at: Float64Array;
  /** Per row: record length, chain length. */
  readonly #lengths: Uint32Array;
  readonly #cache = new LRUCache<number, Materialised>({ max: MATERIALISED });
  readonly #pinned = new Map<number, Materialised>();
  /** Entry name → row, in pack order. */
  readonly rows: ReadonlyMap<string, number>;
  /** Served name → row; two rows claiming one name: the first keeps it (`conflicts`). */
  readonly sni: NameIndex<number>;
  readonly conflicts: readonly { readonly name: string; readonly kept: string; readonly dropped: string }[];
  /** Rows whose certificate staples (few): materialised and pinned. */
  readonly stapled: readonly number[];
  readonly names: readonly string[];

  constructor(pack: PackFile, dataStart: number, index: readonly PackedRow[]) {
    this.#pack = pack;
    this.#at = new Float64Array(index.length);
    this.#lengths = new Uint32Array(index.length * 2);
    const rows = new Map<string, number>();
    const names: string[] = [];
    const stapled: number[] = [];
    let at = dataStart;
    for (const [row, [name, , recordBytes, chainBytes, staples]] of index.entries()) {
      this.#at[row] = at;
      this.#lengths[row * 2] = recordBytes;
      this.#lengths[row * 2 + 1] = chainBytes;
      at += recordBytes + chainBytes;
      rows.set(name, row);
      names.push(name);
      if (staples === 1) stapled.push(row);
    }
    const conflicts: { name: string; kept: string; dropped: string }[] = [];
    this.sni = buildNameIndex(
      index.map((r, row) => ({ names: r[1], value: row })),
      (name, kept, dropped) => conflicts.push({ name, kept: names[kept]!, dropped: names[dropped]! }),
    );
    this.rows = rows;
    this.names = names;
    this.conflicts = conflicts;
    this.stapled = stapled;
    for (const row of stapled) this.#pinned.set(row, this.#read(row));
  }

  get size(): number {
    return this.names.length;
  }

  record(row: number): CertificateRecord {
    return this.#materialised(row).record;
  }

  certificate(row: number): ServedCertificate {
    return this.#materialised(row).certificate;
  }

  /** Every record, read now (not kept): a pack used as a plain delta. */
  records(): CertificateRecord[] {
    return this.names.map((_, row) => this.#read(row).record);
  }

  /** Entry name → record, read on `get`. */
  recordsView(): ReadonlyMap<string, CertificateRecord> {
    return new RowView(this.rows, (row) => this.record(row));
  }

  /** Entry name → certificate, read on `get`. */
  certificatesView(): ReadonlyMap<string, ServedCertificate> {
    return new RowView(this.rows, (row) => this.certificate(row));
  }

  #materialised(row: number): Materialised {
    const pinned = this.#pinned.get(row);
    if (pinned !== undefined) return pinned;
    let found = this.#cache.get(row);
    if (found === undefined) {
      found = this.#read(row);
      this.#cache.set(row, found);
    }
    return found;
  }

  #read(row: number): Materialised {
    const at = this.#at[row]!;
    const recordBytes = this.#lengths[row * 2]!;
    const chainBytes = this.#lengths[row * 2 + 1]!;
    const pack = this.#pack;
    const fields = JSON.parse(pack.read(at, recordBytes)) as Omit<CertificateRecord, 'chainPem'>;
    // The chain is read when a context is built, and not kept: the context is.
    const record = Object.defineProperty(fields, 'chainPem', { enumerable: true, get: () => pack.read(at + recordBytes, chainBytes) }) as CertificateRecord;
    return { record, certificate: servedFromRecord(record) };
  }
}

/** A read-only map of name → row, its values made by `value` on access. */
export class RowView<V> implements ReadonlyMap<string, V> {
  readonly #rows: ReadonlyMap<string, number>;
  readonly #value: (row: number) => V;

  constructor(rows: ReadonlyMap<string, number>, value: (row: number) => V) {
    this.#rows = rows;
    this.#value = value;
  }

  get size(): number {
    return this.#rows.size;
  }

  get(key: string): V | undefined {
    const row = this.#rows.get(key);
    return row === undefined ? undefined : this.#value(row);
  }

  has(key: string): boolean {
    return this.#rows.has(key);
  }

  *entries(): MapIterator<[string, V]> {
    for (const [key, row] of this.#rows) yield [key, this.#value(row)];
  }

  *keys(): MapIterator<string> {
    yield* this.#rows.keys();
  }

  *values(): MapIterator<V> {
    for (const row of this.#rows.values()) yield this.#value(row);
  }

  [Symbol.iterator](): MapIterator<[string, V]> {
    return this.entries();
  }

  forEach(callback: (value: V, key: string, map: ReadonlyMap<string, V>) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) callback.call(thisArg, value, key, this);
  }
}
