/**
 * The version of each store entry the workers last served, kept in the
 * state directory across restarts, so that an entry whose files are refused
 * at start (replaced by a bad version while the proxy was down, or refused
 * while it ran) serves that version, as a running proxy keeps serving it
 * (prepare.ts). For every store size, and always the version last served,
 * not an older one.
 *
 * `<stateDir>/serving/served.log`: a header line naming its base, then one
 * line per change. The base is the kept serving state's pack (kept.ts),
 * written for stores whose state goes to the workers as a file (over
 * PACK_THRESHOLD certificates); its rows are what served when it was
 * written. Each line after the header is a change since: an entry's new
 * served version (its validated chain, the names it serves, its key id and
 * input id) or its removal. A smaller store has no pack: its log has no base
 * and is written whole, every row in it. Who writes what (next-start.ts): a
 * commit's delta is appended (one write and one fsync per commit); a whole
 * state written as a pack starts a new log on it; a small store's first
 * commit, and one whose log has grown past twice its rows, write it whole
 * (temp file, fsync, rename). So the log holds a few thousand rows at most
 * (the workers are sent a whole state every REBASE_AFTER changes,
 * distribute.ts), and a start with 100,000 unchanged entries neither reads
 * nor writes it: it is read only when an entry is refused at start.
 *
 * Integrity: every line carries the SHA-256 of its text. A log whose header
 * names another base than the kept state's, or another store directory than
 * the config's (certStore.dir changed between runs: an entry of the same name
 * there is another entry), or holds a line that does not
 * match (a write torn by a crash), is not used at all: better no fallback
 * than one on a version older than the last served.
 *
 * A fleet's node (certificates in etcd) keeps its own log,
 * `<stateDir>/serving/fleet-served.log`, for its etcd prefix, never based on
 * a pack (a fleet keeps no serving state) and written whole when a change
 * does not follow the last one logged. Each of its rows also names the etcd
 * revision (the entry's statId, `rev:<mod revision>`) this node last judged
 * of the entry while that version served: the version itself, or the refused
 * value that followed it. A start falls back on a row only when the entry's
 * value in etcd is still at that revision (serve-last.ts): nothing was written
 * to it since, so no good version superseded the one logged, and an entry
 * deleted (and written again) since has another revision.
 *
 * Chains, names and key ids only: what the workers are sent anyway, nothing
 * secret; the directory is 0700. One owner (the cluster primary).
 */
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { syncDirQuietly } from '../certs/store-files.js';
import type { KeptState } from './kept.js';
import { readPack } from './pack.js';
import type { CertificateRecord } from './spec.js';

const FORMAT = 'keyedge-last-served-1';
export const LAST_SERVED_FILE = 'served.log';
/** A fleet node's log: its rows name the etcd revision they speak for. */
export const FLEET_SERVED_FILE = 'fleet-served.log';

/** What a fallback needs of a version: judged again from it (serve-last.ts). */
export type ServedVersion = Pick<CertificateRecord, 'name' | 'chainPem' | 'names' | 'keyId' | 'inputId'> & {
  /** A fleet's row: the entry's statId in etcd it speaks for (null: unknown, never fallen back on); absent for a store directory. */
  readonly revision?: string | null;
};

/** [name, inputId, chainPem, names, keyId] (a fleet's: then its revision), or [name] for a removal. */
type Line = [string, string, string, readonly string[], string] | [string, string, string, readonly string[], string, string | null] | [string];

/** A fleet node's log (FLEET_SERVED_FILE): `revisionOf` names the etcd revision each row speaks for. */
export interface FleetLog {
  readonly revisionOf: (record: CertificateRecord) => string | undefined;
}

export class LastServed {
  readonly #dir: string;
  readonly #file: string;
  /** The store directory the log speaks for (the config's certStore.dir). */
  readonly #store: string;
  readonly #warn: (message: string) => void;
  /** Rows written since the header by this run; undefined: this run has not written the log yet. */
  #lines: number | undefined;
  readonly #fleet: FleetLog | undefined;
  readonly #name: string;

  /** `store`: the store directory, or with `fleet` the fleet's store (`etcd:<prefix>`). */
  constructor(dir: string, store: string, warn: (message: string) => void, fleet?: FleetLog) {
    this.#dir = dir;
    this.#name = fleet === undefined ? LAST_SERVED_FILE : FLEET_SERVED_FILE;
    this.#file = join(dir, this.#name);
    this.#store = fleet === undefined ? resolve(store) : store;
    this.#warn = warn;
    this.#fleet = fleet;
  }

  /** Rows since the header this run wrote, or undefined before its first write. */
  get lines(): number | undefined {
    return this.#lines;
  }

  /**
   * The log as the last run left it, as a lookup by entry name: its own rows, then the base's (the kept state,
   * `kept`, when the log is based on its pack). Undefined when there is none, or it cannot be trusted (`warn` says why).
   * Read once, when first asked; call it before this run writes the log.
   */
  reader(kept: KeptState | undefined): (name: string) => ServedVersion | undefined {
    // undefined: not read yet; null: none, or not to be trusted.
    let rows: Map<string, ServedVersion | null> | undefined | null;
    let base: ((name: string) => ServedVersion | undefined) | undefined;
    return (name) => {
      if (rows === undefined) {
        const read = this.#read();
        rows = read?.rows ?? null;
        if (read !== undefined && read.base !== null) {
          if (kept !== undefined && read.base === basename(kept.packed.file)) base = baseReader(kept);
          else {
            rows = null;
            this.#warn(`${this.#file} is based on a serving state that is not kept; it is not used`);
          }
        }
      }
      if (rows === null) return undefined;
      const row = rows.get(name);
      return row === null ? undefined : (row ?? base?.(name));
    };
  }

  /** Removes the log (its base could not be kept): none is better than a stale one. Whether none is left. */
  discard(): boolean {
    this.#lines = undefined;
    try {
      unlinkSync(this.#file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return true;
      // A read-only state directory: the log stays as it was, older than what serves now, and nothing here can mark it.
      this.#warn(
        `cannot remove ${this.#file} (${code ?? 'error'}): an entry refused at the next start could serve an older version than the last served; remove it before the next start`,
      );
      return false;
    }
    return true;
  }

  /** Starts the log anew on `base` (a kept pack, or null: `rows` are every store entry that serves). */
  rewrite(base: string | null, rows: Iterable<CertificateRecord>): void {
    const lines: string[] = [`${JSON.stringify({ format: FORMAT, base: base === null ? null : basename(base), store: this.#store })}\n`];
    for (const record of rows) if (record.from === 'store') lines.push(lineOf(this.#row(record)));
    const temp = join(this.#dir, `.${this.#name}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      mkdirSync(this.#dir, { recursive: true, mode: 0o700 });
      const fd = openSync(temp, 'wx', 0o600);
      try {
        writeSync(fd, lines.join(''));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temp, this.#file);
      // rename(2) is atomic, not durable: a crash could otherwise bring back the log this one replaced. Best effort: the
      // rename is done, and a file system that cannot sync a directory (EINVAL) must not undo it.
      syncDirQuietly(this.#dir);
      this.#lines = lines.length - 1;
    } catch (err) {
      unlinkQuiet(temp);
      this.#fail(err);
    }
  }

  /** Appends a committed delta: the store's new versions, and the removal of every other name it touches. */
  append(upsert: readonly CertificateRecord[], remove: readonly string[]): void {
    if (this.#lines === undefined) return;
    const lines: string[] = [];
    for (const record of upsert) lines.push(lineOf(record.from === 'store' ? this.#row(record) : [record.name]));
    for (const name of remove) lines.push(lineOf([name]));
    if (lines.length === 0) return;
    try {
      const fd = openSync(this.#file, 'a', 0o600);
      try {
        appendFileSync(fd, lines.join(''));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      this.#lines += lines.length;
    } catch (err) {
      this.#fail(err);
    }
  }

  #row(record: CertificateRecord): Line {
    const row: Line = [record.name, record.inputId, record.chainPem, record.names, record.keyId];
    return this.#fleet === undefined ? row : [...row, this.#fleet.revisionOf(record) ?? null];
  }

  /** A log that could not be written is removed: a stale one would fall back on an older version than the last served. */
  #fail(err: unknown): void {
    const removed = this.discard();
    this.#warn(
      `cannot write ${this.#file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}${removed ? '; an entry refused at the next start is not served until its files are fixed' : ''}`,
    );
  }

  #read(): { base: string | null; rows: Map<string, ServedVersion | null> } | undefined {
    let text: string;
    try {
      text = readFileSync(this.#file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#warn(`cannot read ${this.#file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      return undefined;
    }
    const ignore = (why: string): undefined => {
      this.#warn(`${this.#file} ${why}; it is not used`);
      return undefined;
    };
    const lines = text.split('\n');
    // A whole log ends with a newline: anything after the last one is a torn write.
    if (lines.pop() !== '') return ignore('ends in a torn line');
    let head: { format?: unknown; base?: unknown; store?: unknown };
    try {
      head = JSON.parse(lines[0] ?? '') as typeof head;
    } catch {
      return ignore('is not a log of served versions');
    }
    if (head.format !== FORMAT || !(head.base === null || typeof head.base === 'string')) return ignore('is of another format');
    if (head.store !== this.#store) return ignore(`was written for another ${this.#fleet === undefined ? 'store directory' : 'store'} than ${this.#store}`);
    // A fleet's log is never based on a pack: it keeps no serving state.
    if (this.#fleet !== undefined && head.base !== null) return ignore('is of another format');
    const rows = new Map<string, ServedVersion | null>();
    for (const line of lines.slice(1)) {
      const space = line.indexOf(' ');
      const json = line.slice(space + 1);
      if (space < 0 || line.slice(0, space) !== sha256(json)) return ignore('holds a line that does not match its checksum');
      const row = JSON.parse(json) as Line;
      if (row.length === 1) rows.set(row[0], null);
      else {
        const version: ServedVersion = { name: row[0], inputId: row[1], chainPem: row[2], names: row[3], keyId: row[4] };
        // A fleet's row that names no revision is never fallen back on.
        rows.set(row[0], this.#fleet === undefined ? version : { ...version, revision: row.length === 6 ? row[5] : null });
      }
    }
    return { base: head.base, rows };
  }
}

/** The kept pack's store rows by entry name, its index read when first asked. */
function baseReader(kept: KeptState): (name: string) => ServedVersion | undefined {
  let view: ReadonlyMap<string, CertificateRecord> | undefined;
  return (name) => {
    if (!kept.rows.has(name)) return undefined;
    view ??= readPack({ file: kept.packed.file, jsonBytes: kept.packed.jsonBytes, indexBytes: kept.packed.indexBytes }).table?.recordsView();
    const record = view?.get(name);
    return record?.from === 'store' ? record : undefined;
  };
}

function lineOf(line: Line): string {
  const json = JSON.stringify(line);
  return `${sha256(json)} ${json}\n`;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function unlinkQuiet(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Gone already.
  }
}
