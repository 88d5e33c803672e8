/**
 * A large serving delta (a worker's start, a mass renewal) handed to a
 * worker through a file instead of the IPC pipe, with its chains read on
 * demand.
 *
 * Why: the state of 100,000 certificates is ~170 MB of JSON, most of it
 * chains. Through node:cluster's IPC pipe it took tens of seconds per worker
 * on a loaded 2-core machine, and each worker then held every chain although
 * it builds a secure context for only `tls.contextCacheSize` of them at a
 * time (proxy/tls/contexts.ts). Here the primary writes one file per delta:
 * the delta as JSON without the chains, then the chains back to back. The
 * worker parses the JSON part and gets each chain with one positioned read
 * when its context is built (the page cache serves it); the chain is not
 * kept, the context is.
 *
 * The file holds only what the workers are sent anyway (certificate chains,
 * names, routing: nothing secret), in a directory the primary makes, 0700.
 * A worker opens it on receipt and keeps the descriptor while any record of
 * that delta is alive (FinalizationRegistry closes it after), so the primary
 * may unlink the file as soon as every worker it was sent to has answered.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CertificateRecord, ServingDelta } from './spec.js';

/** Deltas with more certificates than this travel as a pack; a renewal or two stays inline. */
export const PACK_THRESHOLD = 256;

/** What crosses the IPC pipe instead of the delta. */
export interface PackedDelta {
  readonly file: string;
  /** Length of the JSON part, bytes; the chains follow one newline after it. */
  readonly jsonBytes: number;
}

type PackedRecord = Omit<CertificateRecord, 'chainPem'> & { readonly chainAt: readonly [offset: number, length: number] };

/** Writes `delta` to `<dir>/<name>` and returns its reference. */
export function writePack(dir: string, name: string, delta: ServingDelta): PackedDelta {
  const chains: Buffer[] = [];
  let offset = 0;
  const upsert: PackedRecord[] = delta.upsert.map(({ chainPem, ...rest }) => {
    const bytes = Buffer.from(chainPem, 'utf8');
    chains.push(bytes);
    const chainAt = [offset, bytes.length] as const;
    offset += bytes.length;
    return { ...rest, chainAt };
  });
  const json = Buffer.from(JSON.stringify({ ...delta, upsert }), 'utf8');
  const file = join(dir, name);
  const fd = openSync(file, 'wx', 0o600);
  try {
    writeSync(fd, json);
    writeSync(fd, '\n');
    for (const chain of chains) writeSync(fd, chain);
  } finally {
    closeSync(fd);
  }
  return { file, jsonBytes: json.length };
}

/** One open pack: its descriptor lives as long as the records that read from it. */
class PackFile {
  readonly fd: number;
  readonly base: number;

  constructor(packed: PackedDelta) {
    this.fd = openSync(packed.file, 'r');
    this.base = packed.jsonBytes + 1;
  }

  /** A chain, by its place in the chain section. */
  read(offset: number, length: number): string {
    return this.readAt(this.base + offset, length);
  }

  readAt(position: number, length: number): string {
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
 * The delta a pack holds. Opens the file now (the primary may unlink it once
 * told the delta was received); each record's `chainPem` is read from it on
 * access and not kept.
 */
export function readPack(packed: PackedDelta): ServingDelta {
  const pack = new PackFile(packed);
  let delta: Omit<ServingDelta, 'upsert'> & { upsert: PackedRecord[] };
  try {
    delta = JSON.parse(pack.readAt(0, packed.jsonBytes)) as typeof delta;
  } catch (err) {
    closeSync(pack.fd);
    throw err;
  }
  closer.register(pack, pack.fd);
  const upsert = delta.upsert.map(({ chainAt, ...rest }) => {
    const [offset, length] = chainAt;
    return Object.defineProperty(rest, 'chainPem', { enumerable: true, get: () => pack.read(offset, length) }) as CertificateRecord;
  });
  return { ...delta, upsert };
}

/** Whether `message` holds a PackedDelta. */
export function isPackedDelta(value: unknown): value is PackedDelta {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { file?: unknown }).file === 'string' &&
    Number.isSafeInteger((value as { jsonBytes?: unknown }).jsonBytes)
  );
}

/** How a delta travels to a worker: inline, or as a pack. */
export type WireDelta = { readonly delta: ServingDelta } | { readonly packed: PackedDelta };

/**
 * The primary's packs: one file per delta generation, shared by every worker
 * it is sent to, unlinked once each of them said it opened it (`opened`) or
 * died (`gone`). The directory goes at `close`.
 */
export class PackShelf<W> {
  #dir: string | undefined;
  /** By kind and generation: a snapshot of generation G (everything) is not the delta that made G. */
  readonly #packs = new Map<string, { readonly packed: PackedDelta; readonly waiting: Set<W> }>();
  #written = 0;

  wire(kind: 'snapshot' | 'delta', delta: ServingDelta, to: W): WireDelta {
    if (delta.upsert.length <= PACK_THRESHOLD) return { delta };
    const key = `${kind}-${delta.generation}`;
    let pack = this.#packs.get(key);
    if (pack === undefined) {
      this.#dir ??= mkdtempSync(join(tmpdir(), 'keyedge-serving-'));
      pack = { packed: writePack(this.#dir, `${key}-${++this.#written}.pack`, delta), waiting: new Set() };
      this.#packs.set(key, pack);
    }
    pack.waiting.add(to);
    return { packed: pack.packed };
  }

  opened(by: W, file: string): void {
    for (const [key, pack] of [...this.#packs]) if (pack.packed.file === file) this.#release(key, by);
  }

  gone(worker: W): void {
    for (const key of [...this.#packs.keys()]) this.#release(key, worker);
  }

  close(): void {
    this.#packs.clear();
    if (this.#dir !== undefined) rmSync(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
  }

  #release(key: string, worker: W): void {
    const pack = this.#packs.get(key);
    if (pack === undefined || !pack.waiting.delete(worker) || pack.waiting.size > 0) return;
    this.#packs.delete(key);
    try {
      unlinkSync(pack.packed.file);
    } catch {
      // Gone already (the directory removed at shutdown).
    }
  }
}
