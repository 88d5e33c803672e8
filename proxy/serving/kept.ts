/**
 * The serving state kept in the state directory between runs, so that a
 * start with 100,000 unchanged store entries reads none of their files: the
 * newest whole pack the primary wrote for its workers (pack.ts) stays in
 * `<stateDir>/serving/`, and beside it `kept.json` says, per row, the store
 * entry, the stat identity of its files when that version was read
 * (certs/store.ts statId), the input id its verdict is kept under
 * (certs/verdicts.ts) and where its validated chain is in the pack.
 *
 * At the next start an entry whose files still have that stat identity is
 * taken from its row: its verdict gives the record (names, key, dates) and
 * the rules that depend on time or on the key server are checked again
 * (prepare.ts); its chain is read from the pack only when something asks
 * for it. When every entry came from its row, the workers are sent the same
 * pack (with a new header) instead of a new one being written.
 *
 * A row's stat identity is written only when it is settled: the files had
 * not changed for QUIET_MS before they were read, so any later change moves
 * their ctime (which cannot be set back) and so the identity. A row that
 * does not match is read and judged as on a first start; a kept state that
 * is missing, of another format, or does not match its checksum is ignored
 * with a warning (losing it costs one start's reads, nothing else).
 *
 * The files hold what the workers are sent anyway (chains, names), nothing
 * secret; the directory is 0700. One owner per state directory (the cluster
 * primary), as for the verdict file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { syncDirQuietly } from '../certs/store-files.js';
import { type PackedDelta, PackFile } from './pack.js';
import type { CertificateRecord } from './spec.js';

const FORMAT = 'keyedge-serving-kept-1';
export const KEPT_DIR = 'serving';
const SIDECAR = 'kept.json';

/** One kept row: the entry's version in the pack. */
export interface KeptRow {
  readonly statId: string;
  readonly inputId: string;
  /** The validated chain, read from the pack on each call. */
  readonly chain: () => string;
}

export interface KeptState {
  readonly packed: PackedDelta;
  /** Rows in the pack, config certificates included: it can be sent again only for a state of exactly its store rows. */
  readonly count: number;
  /** Store entry name → its row, in pack order. */
  readonly rows: ReadonlyMap<string, KeptRow>;
}

/** [entry name, statId ('' when not settled), inputId, chain offset, chain bytes] */
type SidecarRow = [string, string, string, number, number];

interface Sidecar {
  readonly format: typeof FORMAT;
  readonly pack: string;
  readonly jsonBytes: number;
  readonly indexBytes: number;
  readonly count: number;
  readonly rows: SidecarRow[];
}

export function keptDir(stateDir: string): string {
  return join(stateDir, KEPT_DIR);
}

/** Makes the directory (0700) and removes packs a crash left behind, all but `keep` (the kept state's, when it loaded). */
export function prepareKeptDir(stateDir: string, keep: string | undefined): string {
  const dir = keptDir(stateDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const file of readdirSync(dir)) if (file.endsWith('.pack') && join(dir, file) !== keep) unlinkQuiet(join(dir, file));
  return dir;
}

/** The kept state of `stateDir`, or undefined (none, or `warn` told why it is ignored). */
export function loadKept(stateDir: string, warn: (message: string) => void): KeptState | undefined {
  const dir = keptDir(stateDir);
  const file = join(dir, SIDECAR);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      warn(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}; every store entry is read`);
    return undefined;
  }
  const ignore = (why: string): undefined => {
    warn(`${file} ${why}; it is ignored and every store entry is read`);
    return undefined;
  };
  const newline = text.indexOf('\n');
  let sidecar: Sidecar;
  try {
    const head = JSON.parse(text.slice(0, newline)) as { sha256?: unknown };
    const body = text.slice(newline + 1);
    if (newline < 0 || head.sha256 !== createHash('sha256').update(body).digest('hex')) return ignore('does not match its checksum');
    sidecar = JSON.parse(body) as Sidecar;
  } catch {
    // The parser's message may quote the file: it is not kept.
    return ignore('is not a kept serving state');
  }
  if (sidecar.format !== FORMAT || typeof sidecar.pack !== 'string' || basename(sidecar.pack) !== sidecar.pack || !Array.isArray(sidecar.rows))
    return ignore('is of another format');
  let pack: PackFile;
  try {
    pack = new PackFile(join(dir, sidecar.pack));
  } catch (err) {
    return ignore(`names a pack that cannot be opened (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const size = fstatSync(pack.fd).size;
  const rows = new Map<string, KeptRow>();
  for (const row of sidecar.rows) {
    const [name, statId, inputId, at, bytes] = row;
    if (typeof name !== 'string' || typeof statId !== 'string' || typeof inputId !== 'string' || !(at >= 0 && bytes >= 0 && at + bytes <= size)) {
      closeSync(pack.fd);
      return ignore('holds a malformed row');
    }
    rows.set(name, { statId, inputId, chain: () => pack.read(at, bytes) });
  }
  return { packed: { file: join(dir, sidecar.pack), jsonBytes: sidecar.jsonBytes, indexBytes: sidecar.indexBytes }, count: sidecar.count, rows };
}

/**
 * Records `packed` (a whole state just written, its chains at `chains`) as
 * the kept state: `statOf` gives each store record's settled stat identity,
 * or undefined. Written whole (temp file, fsync, rename, the directory synced); a failure is told
 * to `warn` and costs only the next start's reads. Whether it was written.
 */
export function keepPacked(
  stateDir: string,
  packed: PackedDelta,
  records: readonly CertificateRecord[],
  chains: Float64Array,
  statOf: (record: CertificateRecord) => string | undefined,
  warn: (message: string) => void,
): boolean {
  const dir = keptDir(stateDir);
  const rows: SidecarRow[] = [];
  for (const [i, record] of records.entries()) {
    if (record.from === 'store') rows.push([record.name, statOf(record) ?? '', record.inputId, chains[i * 2]!, chains[i * 2 + 1]!]);
  }
  const body = JSON.stringify({
    format: FORMAT,
    pack: basename(packed.file),
    jsonBytes: packed.jsonBytes,
    indexBytes: packed.indexBytes,
    count: records.length,
    rows,
  } satisfies Sidecar);
  const temp = join(dir, `.${SIDECAR}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fd = openSync(temp, 'wx', 0o600);
    try {
      writeFileSync(fd, `${JSON.stringify({ sha256: createHash('sha256').update(body).digest('hex') })}\n${body}`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, join(dir, SIDECAR));
    // rename(2) is atomic, not durable: a crash could otherwise bring back the sidecar this one replaced. Best effort: the
    // rename is done, and a file system that cannot sync a directory (EINVAL) must not undo it.
    syncDirQuietly(dir);
    return true;
  } catch (err) {
    unlinkQuiet(temp);
    warn(`cannot write ${join(dir, SIDECAR)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; the next start reads every store entry`);
    return false;
  }
}

function unlinkQuiet(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Gone already.
  }
}
