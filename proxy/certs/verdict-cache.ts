/**
 * The file that keeps remembered certificate verdicts (verdicts.ts) across
 * starts, and the verdicts of the current context in memory. Context: the
 * hash verdictContext makes (the rules' schema, the Node and OpenSSL
 * versions, the issuer pool); a file for another context is dropped whole.
 * Integrity: the header carries the SHA-256 of the body; a file that does
 * not parse, does not match its hash or holds a malformed verdict is ignored
 * with a warning and rewritten, never trusted in part.
 *
 * Persistence: `<stateDir>/cert-verdicts.json` (a JSON header line, then
 * the body as verdict-file.ts writes it), written whole (temp file,
 * fsync, rename) at most once per `SAVE_DELAY_MS` (5 s) after a change; losing it
 * costs one full validation at the next start, nothing else. Verdicts of
 * inputs no longer served are dropped when the file is written (`retain`).
 *
 * Concurrency: one owner per file (the cluster primary, or a worker started
 * on its own); synchronous apart from the save timer.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { writeAtomic } from './store-files.js';
import { decodeVerdicts, encodeVerdicts, type Verdict } from './verdict-file.js';

export const VERDICT_FILE = 'cert-verdicts.json';
/** The file's format name, in its header and in every verdict context. */
export const VERDICT_FORMAT = 'keyedge-cert-verdicts';
/**
 * Changes arrive in bursts (a renewal run): one write per burst. Writing
 * 100,000 verdicts blocks the primary's event loop for a few hundred ms,
 * so not after every single renewal of a burst.
 */
const SAVE_DELAY_MS = 5_000;

const headerSchema = z.strictObject({ format: z.literal(VERDICT_FORMAT), context: z.string(), count: z.number().int().nonnegative(), sha256: z.string() });

export interface VerdictCacheOptions {
  /** The file; null keeps verdicts in memory only. */
  readonly file: string | null;
  /** Told when the file is unusable (ignored) or cannot be written. */
  readonly warn: (message: string) => void;
}

export class VerdictCache {
  readonly #file: string | null;
  readonly #warn: (message: string) => void;
  #context: string | undefined;
  #verdicts = new Map<string, Verdict>();
  /** SPKIs by key id: thousands of entries share a few keys, so each string is kept once. */
  readonly #spkis = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #dirty = false;
  #loaded = false;
  #saveFailed = false;

  constructor(options: VerdictCacheOptions) {
    this.#file = options.file;
    this.#warn = options.warn;
  }

  /** Where verdicts of a proxy with this state directory are kept. */
  static fileIn(stateDir: string): string {
    return join(stateDir, VERDICT_FILE);
  }

  get size(): number {
    return this.#verdicts.size;
  }

  /**
   * Sets the context of the verdicts about to be asked for (verdictContext):
   * the first call reads the file, and a context unlike the one the
   * verdicts were reached under drops them all.
   */
  useContext(context: string): void {
    if (!this.#loaded) {
      this.#loaded = true;
      this.#load(context);
    }
    if (this.#context !== context) {
      if (this.#verdicts.size > 0) this.#dirty = true;
      this.#verdicts = new Map();
      this.#context = context;
    }
  }

  /** The verdict on input `inputId` (a content hash), if one was reached under the current context. */
  get(inputId: string): Verdict | undefined {
    return this.#verdicts.get(inputId);
  }

  set(inputId: string, verdict: Verdict): void {
    this.#verdicts.set(inputId, this.#interned(verdict));
    this.#changed();
  }

  /** Forgets every verdict but those of `inputIds` (what serves now). */
  retain(inputIds: ReadonlySet<string>): void {
    for (const id of this.#verdicts.keys()) {
      if (!inputIds.has(id)) {
        this.#verdicts.delete(id);
        this.#dirty = true;
      }
    }
    if (this.#dirty) this.#changed();
  }

  /** Forgets the verdicts of these inputs (replaced or removed by a targeted pass). */
  forget(inputIds: Iterable<string>): void {
    let any = false;
    for (const id of inputIds) any = this.#verdicts.delete(id) || any;
    if (any) this.#changed();
  }

  /** Writes now if anything changed since the last write; cancels a pending timer. */
  flush(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#dirty || this.#file === null || this.#context === undefined) return;
    this.#dirty = false;
    try {
      this.#write(this.#file, this.#context);
      this.#saveFailed = false;
    } catch (err) {
      // Once per run of failures: the cache only saves time.
      if (!this.#saveFailed)
        this.#warn(
          `cannot write ${this.#file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; the next start validates every certificate again`,
        );
      this.#saveFailed = true;
    }
  }

  /** Stops the save timer without writing (the owner is going away; a lost write costs only time). */
  close(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #changed(): void {
    this.#dirty = true;
    if (this.#file === null || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => this.flush(), SAVE_DELAY_MS);
    this.#timer.unref();
  }

  #interned(verdict: Verdict): Verdict {
    const known = this.#spkis.get(verdict.keyId);
    if (known === undefined) this.#spkis.set(verdict.keyId, verdict.spki);
    // Same key id, same bytes: one string for all of them.
    return known === verdict.spki ? { ...verdict, spki: known } : verdict;
  }

  #load(context: string): void {
    if (this.#file === null) return;
    let text: string;
    try {
      text = readFileSync(this.#file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.#warn(`cannot read ${this.#file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}; it is ignored`);
      return;
    }
    const ignore = (why: string): void => {
      this.#warn(`${this.#file} ${why}; it is ignored, certificates are validated again and the file rewritten`);
      this.#dirty = true;
    };
    const newline = text.indexOf('\n');
    if (newline < 0) return ignore('has no header line');
    const bodyText = text.slice(newline + 1);
    let header: z.infer<typeof headerSchema>;
    try {
      header = headerSchema.parse(JSON.parse(text.slice(0, newline)));
    } catch {
      // The parser's message may quote the file: it is not kept.
      return ignore('is not a verdict file');
    }
    if (createHash('sha256').update(bodyText).digest('hex') !== header.sha256) return ignore('does not match its checksum');
    // A context of its own is not an error: the rules, the Node or the issuers changed since it was written.
    if (header.context !== context) {
      this.#dirty = true;
      return;
    }
    const verdicts = decodeVerdicts(bodyText);
    if (typeof verdicts === 'string') return ignore(verdicts);
    if (verdicts.size !== header.count) return ignore(`holds ${verdicts.size} verdicts, its header says ${header.count}`);
    this.#verdicts = verdicts;
    this.#context = context;
  }

  #write(file: string, context: string): void {
    const body = encodeVerdicts(this.#verdicts);
    const header = JSON.stringify({ format: VERDICT_FORMAT, context, count: this.#verdicts.size, sha256: createHash('sha256').update(body).digest('hex') });
    // A state file, its owner's alone, like the rest of the state directory.
    writeAtomic(dirname(file), file, `${header}\n${body}`, 0o600);
  }
}
