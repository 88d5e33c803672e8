/**
 * Remembered certificate verdicts: a chain is judged once, when it is first
 * seen (written to the store, or met at a start), and the verdict is kept
 * under the hash of exactly what was judged (the chain text, the pinned
 * names and key id), so a start with 100,000 unchanged entries parses none
 * of them: judging one cost ~3 ms of X.509 decoding and signature checks
 * (bench/results/2026-11-22-cert-scale-profile.md), looking one up costs a
 * map read. Where the entries come from (files, a shared store) does not
 * matter: the key is their content.
 *
 * A verdict holds only what the input and the issuer pool decide: the served
 * names, the key id and SPKI, the leaf's serial, issuer and validity window,
 * the chain certificates' ends, whether it staples, the warnings that do not
 * depend on time, and the validated chain when it differs from the input.
 * Nothing secret. What changes for the same bytes is checked again at every
 * use: the validity window against the clock (validity.ts
 * checkValidityWindow) and the key server's key (once per key id per pass,
 * not per entry). Only accepted chains are remembered; a refused one is
 * judged again each time it is read.
 *
 * Invalidation: the file names a context, the hash of VERDICT_SCHEMA (raised
 * whenever a validation rule changes), the Node and OpenSSL versions
 * (they decode and verify) and the issuer pool's fingerprint (the
 * configured intermediates, the bundled roots). A file for another context
 * is dropped whole. Integrity: the header carries the SHA-256 of the body; a
 * file that does not parse, does not match its hash or holds a malformed
 * verdict is ignored with a warning and rewritten, never trusted in part.
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
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { ocspResponderUrl } from '../tls/ocsp.js';
import type { ServedCertificate } from './certificate.js';
import { decodeVerdicts, encodeVerdicts } from './verdict-file.js';
import type { CertificateCandidate, ValidationContext } from './candidate.js';
import { checkKeyserverKey } from './key-match.js';
import { inspectStructure } from './validate.js';
import { type ChainValidity, checkValidityWindow, validityOf } from './validity.js';

/** Raised whenever a rule of validate.ts (or a module of its rules) changes what it accepts or what it derives: every verdict is then reached again. */
export const VERDICT_SCHEMA = 2;
export const VERDICT_FILE = 'cert-verdicts.json';
const FORMAT = 'keyedge-cert-verdicts';
/**
 * Changes arrive in bursts (a renewal run): one write per burst. Writing
 * 100,000 verdicts blocks the primary's event loop for a few hundred ms,
 * so not after every single renewal of a burst.
 */
const SAVE_DELAY_MS = 5_000;

export interface Verdict {
  /** The names served, lower-case. */
  readonly names: readonly string[];
  readonly keyId: string;
  /** The leaf's SubjectPublicKeyInfo, base64. */
  readonly spki: string;
  readonly serial: string;
  readonly issuer: string;
  /** ISO 8601. */
  readonly notBefore: string;
  readonly notAfter: string;
  /** Every chain certificate after the leaf: its subject and end (ISO 8601). */
  readonly chainExpiries: readonly { readonly subject: string; readonly notAfter: string }[];
  /** The leaf names an OCSP responder and the chain holds its issuer. */
  readonly stapled: boolean;
  /** Warnings found when judged that do not depend on the time. */
  readonly warnings: readonly string[];
  /** The validated chain (leaf first), when it is not the input text itself. */
  readonly chainPem?: string;
}

const headerSchema = z.strictObject({ format: z.literal(FORMAT), context: z.string(), count: z.number().int().nonnegative(), sha256: z.string() });

/** What a verdict depends on besides its input: a verdict reached under another context is not reused. */
export function verdictContext(issuerFingerprint: string): string {
  return createHash('sha256').update(`${FORMAT}\0${VERDICT_SCHEMA}\0${process.versions.node}\0${process.versions.openssl}\0${issuerFingerprint}`).digest('hex');
}

/** The verdict of a chain judged acceptable (validate.ts), and the warnings that do not depend on time. */
export function verdictOf(certificate: ServedCertificate, chainText: string, structuralWarnings: readonly string[]): Verdict {
  const validity = validityOf(certificate.chain);
  return {
    names: certificate.names,
    keyId: certificate.keyId,
    spki: certificate.spki.toString('base64'),
    serial: certificate.serial,
    issuer: certificate.leaf.issuer,
    notBefore: validity.notBefore.toISOString(),
    notAfter: validity.notAfter.toISOString(),
    chainExpiries: validity.chainExpiries.map((c) => ({ subject: c.subject, notAfter: c.notAfter.toISOString() })),
    stapled: ocspResponderUrl(certificate.leaf) !== undefined && certificate.chain.length > 1,
    warnings: structuralWarnings,
    ...(certificate.chainPem === chainText ? {} : { chainPem: certificate.chainPem }),
  };
}

/**
 * The rules a remembered verdict does not settle, applied now: the validity
 * window and the key server's key. Resolves with the warnings to report;
 * rejects with the same CertificateError a full validation would.
 */
export async function rejudge(candidate: Pick<CertificateCandidate, 'name' | 'source'>, verdict: Verdict, ctx: ValidationContext): Promise<string[]> {
  const timed = checkValidityWindow(candidate, validityOfVerdict(verdict), ctx.now);
  await checkKeyserverKey(candidate, { keyId: verdict.keyId, spki: memo(spkis, verdict.spki, () => Buffer.from(verdict.spki, 'base64')) }, ctx.keyserverSpki);
  return [...verdict.warnings, ...timed];
}

/**
 * Every rule, with the verdict remembered under `inputId` when there is one
 * (only the validity window and the key server's key are checked then), else
 * a full validation whose verdict is remembered when it accepts. Resolves
 * with the verdict and the warnings to report; rejects with a
 * CertificateError on a refusal, or with whatever the key-server lookup
 * throws.
 */
export async function judgeCertificate(
  candidate: CertificateCandidate,
  inputId: string,
  ctx: ValidationContext,
  cache: VerdictCache,
): Promise<{ readonly verdict: Verdict; readonly warnings: readonly string[] }> {
  const known = cache.get(inputId);
  if (known !== undefined) return { verdict: known, warnings: await rejudge(candidate, known, ctx) };
  let timed: string[] = [];
  // The time rules where a full validation checks them, so a refusal names the same rule.
  const structure = await inspectStructure(candidate, ctx.issuers, (chain) => {
    timed = checkValidityWindow(candidate, validityOf(chain), ctx.now);
  });
  await checkKeyserverKey(candidate, structure.certificate, ctx.keyserverSpki);
  const verdict = verdictOf(structure.certificate, candidate.chainText, structure.warnings);
  cache.set(inputId, verdict);
  return { verdict, warnings: [...structure.warnings, ...timed] };
}

/** Parsed times and decoded keys, by their text: 100,000 verdicts share a few of each (a start rejudges every one). */
const dates = new Map<string, Date>();
const spkis = new Map<string, Buffer>();
function memo<V>(map: Map<string, V>, key: string, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    if (map.size >= 4096) map.clear();
    value = make();
    map.set(key, value);
  }
  return value;
}
const dateOf = (iso: string): Date => memo(dates, iso, () => new Date(iso));

function validityOfVerdict(verdict: Verdict): ChainValidity {
  return {
    notBefore: dateOf(verdict.notBefore),
    notAfter: dateOf(verdict.notAfter),
    chainExpiries: verdict.chainExpiries.map((c) => ({ subject: c.subject, notAfter: dateOf(c.notAfter) })),
  };
}

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
    const header = JSON.stringify({ format: FORMAT, context, count: this.#verdicts.size, sha256: createHash('sha256').update(body).digest('hex') });
    const temp = join(dirname(file), `.${VERDICT_FILE}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
    const fd = openSync(temp, 'wx', 0o644);
    try {
      try {
        writeFileSync(fd, `${header}\n${body}`);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temp, file);
    } catch (err) {
      try {
        unlinkSync(temp);
      } catch {
        // Already renamed or never created.
      }
      throw err;
    }
  }
}
