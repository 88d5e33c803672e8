/**
 * A large serving delta (a worker's start, a rebase after many changes)
 * handed to a worker through a file instead of the IPC pipe, read on demand.
 *
 * Why: the state of 100,000 certificates is ~170 MB of JSON, most of it
 * chains. Through node:cluster's IPC pipe it took tens of seconds per worker
 * on a loaded 2-core machine, and a worker that materialised every record
 * held ~470 MB although it builds a secure context for only
 * `tls.contextCacheSize` of them at a time (proxy/tls/contexts.ts). Here the
 * primary writes one file per delta: a header line (generation, routing,
 * removals), an index line (per certificate: its entry name, the names it
 * serves, whether it staples, and the lengths of its record and chain), then
 * each record as JSON followed by its chain. The worker keeps only the index
 * as maps and typed arrays (table.ts) and reads a record with one positioned
 * read when a handshake needs it (the page cache serves it).
 *
 * The file holds only what the workers are sent anyway (certificate chains,
 * names, routing: nothing secret), 0600 in a directory the primary makes,
 * 0700. A worker opens it on receipt and keeps the descriptor while anything
 * read from it is alive (FinalizationRegistry closes it after), so the
 * primary may unlink the file as soon as every worker it was sent to has
 * answered.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CertificateRecord, ServingDelta } from './spec.js';
import { PackedTable, type PackedRow } from './table.js';

/** Deltas with more certificates than this travel as a pack; a renewal or two stays inline. */
export const PACK_THRESHOLD = 256;

/** The header line of a pack: the delta without its certificates. */
export type PackHead = Omit<ServingDelta, 'upsert' | 'table'>;

/** What crosses the IPC pipe instead of the delta. */
export interface PackedDelta {
  readonly file: string;
  /** Length of the header line, bytes (without its newline). */
  readonly jsonBytes: number;
  /** Length of the index line, bytes (without its newline); the records follow it. */
  readonly indexBytes: number;
  /** Replaces the file's header: a pack kept from an earlier generation (kept.ts) sent as the whole state of this one. */
  readonly head?: PackHead;
}

/** Writes `delta` to `<dir>/<name>` and returns its reference; `chains`, when given, gets each row's chain offset and length (2 per row). */
export function writePack(dir: string, name: string, delta: ServingDelta, chains?: Float64Array): PackedDelta {
  const { upsert, table: _table, ...rest } = delta;
  const header = JSON.stringify({ ...rest, count: upsert.length });
  // Text, not a Buffer per record: at 100,000 entries the copies and their collection cost seconds.
  const rows: PackedRow[] = [];
  const records: string[] = [];
  for (const { chainPem, ...record } of upsert) {
    const json = JSON.stringify(record);
    rows.push([record.name, record.names, Buffer.byteLength(json), Buffer.byteLength(chainPem), record.stapled ? 1 : 0]);
    records.push(json);
  }
  const index = JSON.stringify(rows);
  if (chains !== undefined) {
    let at = Buffer.byteLength(header) + Buffer.byteLength(index) + 2;
    for (const [i, row] of rows.entries()) {
      chains[i * 2] = at + row[2];
      chains[i * 2 + 1] = row[3];
      at += row[2] + row[3];
    }
  }
  const file = join(dir, name);
  const fd = openSync(file, 'wx', 0o600);
  let written = false;
  try {
    writeSync(fd, `${header}\n${index}\n`);
    // A few hundred records per write: one call per record would be 200,000 system calls at 100,000 entries.
    const parts: string[] = [];
    for (const [i, json] of records.entries()) {
      parts.push(json, upsert[i]!.chainPem);
      if (parts.length >= 512 || i === records.length - 1) {
        writeSync(fd, parts.join(''));
        parts.length = 0;
      }
    }
    written = true;
  } finally {
    closeSync(fd);
    // A write cut short (a full disk) left the part written, taking the room the next write needs.
    if (!written) rmSync(file, { force: true });
  }
  return { file, jsonBytes: Buffer.byteLength(header), indexBytes: Buffer.byteLength(index) };
}

/** One open pack: its descriptor lives as long as whatever reads from it. */
export class PackFile {
  readonly fd: number;

  constructor(file: string) {
    this.fd = openSync(file, 'r');
  }

  read(position: number, length: number): string {
    const buffer = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buffer, done, length - done, position + done);
      if (n === 0) throw new Error('the serving pack file is shorter than its index');
      done += n;
    }
    return buffer.toString('utf8');
  }
}

const closer = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    // Already closed: nothing to release.
  }
});

/**
 * The delta a pack holds, its certificates as a table read on demand
 * (`table`). Opens the file now (the primary may unlink it once told the
 * delta was received). `upsert` materialises every record when read: the
 * worker's apply (state.ts) uses the table instead.
 */
export function readPack(packed: PackedDelta): ServingDelta {
  const pack = new PackFile(packed.file);
  let head: PackHead;
  let rows: PackedRow[];
  try {
    head = packed.head ?? (JSON.parse(pack.read(0, packed.jsonBytes)) as PackHead);
    rows = JSON.parse(pack.read(packed.jsonBytes + 1, packed.indexBytes)) as PackedRow[];
  } catch (err) {
    closeSync(pack.fd);
    throw err;
  }
  closer.register(pack, pack.fd);
  const table = new PackedTable(pack, packed.jsonBytes + packed.indexBytes + 2, rows);
  const { count: _count, ...rest } = head as typeof head & { count?: number };
  let upsert: readonly CertificateRecord[] | undefined;
  return Object.defineProperty({ ...rest, table }, 'upsert', {
    enumerable: true,
    get: () => (upsert ??= table.records()),
  }) as ServingDelta;
}

/** Whether `message` holds a PackedDelta. */
export function isPackedDelta(value: unknown): value is PackedDelta {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { file?: unknown }).file === 'string' &&
    Number.isSafeInteger((value as { jsonBytes?: unknown }).jsonBytes) &&
    Number.isSafeInteger((value as { indexBytes?: unknown }).indexBytes)
  );
}

/** How a delta travels to a worker: inline, or as a pack. */
export type WireDelta = { readonly delta: ServingDelta } | { readonly packed: PackedDelta };

export interface PackShelfOptions {
  /**
   * Where whole states are written and kept (kept.ts): the newest stays
   * after its workers opened it, for the next start to send again; `keep`
   * is told of each. Without it, packs go to a temporary directory and
   * none is kept.
   */
  readonly keepIn?: string;
  /** `chains`: each row's chain offset and length in the file (2 per row, in `delta.upsert` order). */
  readonly keep?: (packed: PackedDelta, delta: ServingDelta, chains: Float64Array) => void;
  /** A whole state already on disk for `delta` (the pack kept by the last run), sent with a new header instead of written again. */
  readonly existing?: (delta: ServingDelta) => PackedDelta | undefined;
  /** The pack kept by the last run, if any: unlinked once a newer whole state replaces it. */
  readonly kept?: string;
}

/**
 * The primary's packs: one file per delta generation, shared by every worker
 * it is sent to, unlinked once each of them said it opened it (`opened`) or
 * died (`gone`), except the newest whole state when packs are kept. A
 * temporary directory goes at `close`.
 */
export class PackShelf<W> {
  readonly #options: PackShelfOptions;
  #dir: string | undefined;
  /** By kind and generation: a snapshot of generation G (everything) is not the delta that made G. */
  readonly #packs = new Map<string, { readonly packed: PackedDelta; readonly waiting: Set<W> }>();
  /** The whole state kept on disk for the next start: never unlinked here but when a newer one replaces it. */
  #kept: string | undefined;
  /** The generation of the whole state kept by this run, once one is. */
  #keptGeneration = -1;
  #written = 0;

  constructor(options: PackShelfOptions = {}) {
    this.#options = options;
    this.#kept = options.kept;
  }

  wire(kind: 'snapshot' | 'delta', delta: ServingDelta, to: W): WireDelta {
    if (delta.upsert.length <= PACK_THRESHOLD) return { delta };
    const key = `${kind}-${delta.generation}`;
    let pack = this.#packs.get(key);
    if (pack === undefined) {
      pack = { packed: this.#write(key, delta), waiting: new Set() };
      this.#packs.set(key, pack);
    }
    pack.waiting.add(to);
    return { packed: pack.packed };
  }

  #write(key: string, delta: ServingDelta): PackedDelta {
    // Not an older whole state than the one kept (a worker started while a reload's whole state goes out is sent the
    // committed one first): kept, it would take the next start, and the log of last served versions based on it
    // (last-served.ts), back to the state before that reload.
    const whole = delta.whole === true && this.#options.keepIn !== undefined && delta.generation >= this.#keptGeneration;
    if (whole) {
      this.#keptGeneration = delta.generation;
      const existing = this.#options.existing?.(delta);
      if (existing !== undefined) {
        const { upsert: _upsert, table: _table, ...head } = delta;
        this.#kept = existing.file;
        return { ...existing, head };
      }
    }
    this.#dir ??= this.#options.keepIn ?? mkdtempSync(join(tmpdir(), 'keyedge-serving-'));
    const chains = whole ? new Float64Array(delta.upsert.length * 2) : undefined;
    const packed = writePack(this.#dir, `${key}-${process.pid}-${Date.now()}-${++this.#written}.pack`, delta, chains);
    if (chains !== undefined) {
      const previous = this.#kept;
      this.#kept = packed.file;
      this.#options.keep?.(packed, delta, chains);
      // The one it replaces goes now unless a worker has yet to open it (then when the last one has).
      if (previous !== undefined && ![...this.#packs.values()].some((p) => p.packed.file === previous)) unlinkQuietly(previous);
    }
    return packed;
  }

  opened(by: W, file: string): void {
    for (const [key, pack] of [...this.#packs]) if (pack.packed.file === file) this.#release(key, by);
  }

  gone(worker: W): void {
    for (const key of [...this.#packs.keys()]) this.#release(key, worker);
  }

  close(): void {
    // Packs not yet opened by every worker: the workers go too; the kept one stays for the next start.
    for (const pack of this.#packs.values()) if (pack.packed.file !== this.#kept) unlinkQuietly(pack.packed.file);
    this.#packs.clear();
    if (this.#dir !== undefined && this.#options.keepIn === undefined) rmSync(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
  }

  #release(key: string, worker: W): void {
    const pack = this.#packs.get(key);
    if (pack === undefined || !pack.waiting.delete(worker) || pack.waiting.size > 0) return;
    this.#packs.delete(key);
    if (pack.packed.file !== this.#kept && ![...this.#packs.values()].some((p) => p.packed.file === pack.packed.file)) unlinkQuietly(pack.packed.file);
  }
}

function unlinkQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Gone already (the directory removed at shutdown).
  }
}
