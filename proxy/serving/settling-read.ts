/**
 * Reads of files that may still be being written, for the reload path
 * (prepare.ts). A file changed in the last QUIET_MS may be half-way through
 * a write (a tool that writes the leaf, then appends the intermediates): it
 * is read again SETTLE_MS later, and used only once two reads agree. One
 * that keeps changing for SETTLE_LIMIT_MS is reported by `settle`, to be left
 * as it serves and looked at again. A read that fails is kept as its Error,
 * so a file that cannot be read yet settles like one that can. The config
 * file itself (source.ts) is loaded again once quiet when a load of it
 * changed a moment ago is refused (`loadSettled`).
 */
import { statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkChainFile, readCheckedFile } from '../certs/store.js';

/** A file changed more recently than this may still be being written. */
export const QUIET_MS = 1_000;
/** Between the two reads that must agree: as long as the watch's debounce, so a writer pausing less is seen as one write. */
const SETTLE_MS = 150;
/** A file still changing after this is left for a later pass rather than read half-way. */
export const SETTLE_LIMIT_MS = 2_000;

/** A config certificate's chain file as read. */
export interface ChainFile {
  readonly text: string;
  readonly changedAtMs: number;
}

/** The text and its last change, from one descriptor so that both describe the same file. */
export function readChainFile(file: string, name: string): ChainFile {
  const { text, stat } = readCheckedFile(file, (s) => checkChainFile(s, file, name));
  return { text, changedAtMs: Math.max(stat.ctimeMs, stat.mtimeMs) };
}

export interface Settling {
  readonly recent: boolean;
  again(): boolean;
}

/** One file's content as last read (or why it could not be read), read again on demand. */
export class SettlingRead<T> implements Settling {
  #value: T | Error;
  #print: string;
  readonly #read: () => T;
  readonly #fingerprint: (value: T) => string;
  /** Whether the file changed recently enough to need a second read. */
  readonly recent: boolean;

  /** `first`: the first read's result when it was made already (asynchronously); else read now. */
  constructor(read: () => T, fingerprint: (value: T) => string, changedAtMs: (value: T) => number, first?: T | Error) {
    this.#read = read;
    this.#fingerprint = fingerprint;
    [this.#value, this.#print] = first === undefined ? this.#attempt() : this.#printed(first);
    // A time ahead of the clock (a network file system's) counts as recent.
    this.recent = !(this.#value instanceof Error) && Date.now() - changedAtMs(this.#value) < QUIET_MS;
  }

  get value(): T | Error {
    return this.#value;
  }

  /** The fingerprint of the value last read. */
  get print(): string {
    return this.#print;
  }

  /** Reads again: true when the content equals the previous read's. */
  again(): boolean {
    const before = this.#print;
    [this.#value, this.#print] = this.#attempt();
    return this.#print === before;
  }

  #attempt(): [T | Error, string] {
    try {
      const value = this.#read();
      return [value, this.#fingerprint(value)];
    } catch (err) {
      const error = asError(err);
      return [error, `error:${error.message}`];
    }
  }

  #printed(value: T | Error): [T | Error, string] {
    if (value instanceof Error) return [value, `error:${value.message}`];
    try {
      return [value, this.#fingerprint(value)];
    } catch (err) {
      const error = asError(err);
      return [error, `error:${error.message}`];
    }
  }
}

/** Reads the recent files again every SETTLE_MS until two reads agree; those still changing at SETTLE_LIMIT_MS are returned. */
export async function settle(reads: readonly Settling[]): Promise<ReadonlySet<Settling>> {
  let changing = reads.filter((r) => r.recent);
  const deadline = Date.now() + SETTLE_LIMIT_MS;
  while (changing.length > 0 && Date.now() < deadline) {
    await sleep(SETTLE_MS);
    changing = changing.filter((r) => !r.again());
  }
  return new Set(changing);
}

/** What was thrown, as an Error (a read's failure is kept and compared by its message). */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * Loads the config file with `load`; when that refuses a file changed in the last QUIET_MS, waits until it has been
 * quiet for QUIET_MS (at most SETTLE_LIMIT_MS) and loads it once more, and only that answer counts. A tool writing
 * the file in two parts (a truncate and a write, an editor saving in chunks) set off the watch between them: the half
 * file was refused, logged at error level and counted as a refused reload, though the whole file served a moment later.
 * A file refused as it is, quiet, is refused at once; one refused again after the wait is refused as before.
 */
export async function loadSettled<T>(file: string, load: (file: string) => T): Promise<T> {
  try {
    return load(file);
  } catch (err) {
    const deadline = Date.now() + SETTLE_LIMIT_MS;
    let quietIn = QUIET_MS - (Date.now() - changedAtMs(file));
    if (!(quietIn > 0)) throw err;
    while (quietIn > 0 && Date.now() < deadline) {
      await sleep(Math.min(quietIn, deadline - Date.now()) + 10);
      quietIn = QUIET_MS - (Date.now() - changedAtMs(file));
    }
    return load(file);
  }
}

/** The file's last change (the later of mtime and ctime, as readChainFile's); NaN when it cannot be stat'ed. */
function changedAtMs(file: string): number {
  try {
    const stat = statSync(file);
    return Math.max(stat.ctimeMs, stat.mtimeMs);
  } catch {
    return Number.NaN;
  }
}
