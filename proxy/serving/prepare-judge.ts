/**
 * The verdicts of a preparing pass (prepare.ts): every certificate read
 * that changed (or taken from the kept state) is judged, a few at once,
 * each key id asked of the key server once per pass (thousands of entries
 * share a few keys). A refusal is remembered so that the next pass neither
 * judges nor says it again, unless time or the key server may lift it
 * (RETRIED): then the next pass judges it again.
 */
import { CertificateError } from '../certs/errors.js';
import type { ValidationContext } from '../certs/validate.js';
import type { VerdictCache } from '../certs/verdict-cache.js';
import { judgeCertificate, rejudge } from '../certs/verdicts.js';
import { forEachLimited } from './limited.js';
import type { PassTally } from './pass-tally.js';
import type { PrepareOptions } from './prepare-types.js';
import { recordOfVerdict, type Refusal } from './spec.js';

/** Validations in flight at once: each asks the key server for a public key. */
export const VALIDATION_CONCURRENCY = 16;
/** Refusals that can lift with no change to the files: their entries are read again by the next pass. */
const RETRIED: ReadonlySet<Refusal['reason']> = new Set(['not_yet_valid', 'key_unknown']);

/** `options.validation` asking the key server once per key id: the context this pass judges (and serve-last.ts) with. */
export function passValidation(options: PrepareOptions): ValidationContext {
  const spkis = new Map<string, Promise<Buffer | undefined>>();
  return {
    ...options.validation,
    keyserverSpki: (keyId, leafSpki) => {
      let held = spkis.get(keyId);
      if (held === undefined) {
        held = options.validation.keyserverSpki(keyId, leafSpki);
        spkis.set(keyId, held);
      }
      return held;
    },
  };
}

/** Judges `tally.pending` into records or refusals. */
export async function judgePending(
  options: PrepareOptions,
  validation: ValidationContext,
  verdicts: VerdictCache,
  issuers: string,
  tally: PassTally,
): Promise<void> {
  const { seen } = options;
  await forEachLimited(tally.pending, VALIDATION_CONCURRENCY, async ({ candidate, from, inputId, kept }) => {
    try {
      const known = kept === undefined ? undefined : verdicts.get(inputId);
      const { verdict, warnings: found } =
        known === undefined
          ? await judgeCertificate(candidate, inputId, validation, verdicts)
          : { verdict: known, warnings: await rejudge(candidate, known, validation) };
      tally.records.set(
        candidate.name,
        recordOfVerdict(verdict, kept === undefined ? candidate : { ...candidate, chainText: kept.chain }, from, inputId, validation.now),
      );
      if (kept !== undefined) tally.fromKept.add(candidate.name);
      tally.changed.push(candidate.name);
      for (const message of found) tally.warnings.push({ name: candidate.name, message });
    } catch (err) {
      if (!(err instanceof CertificateError)) throw err;
      tally.refuse(candidate.name, candidate.source, err.reason, err.message);
      // A refused store entry is looked at again when its files change, not on every rescan; but a refusal that
      // time or the key server lifts (a renewal dated a moment ahead of this clock, a key imported after its
      // chain) is looked at again by the next pass: else the previous version served on until it expired.
      if (from === 'config' && !RETRIED.has(err.reason)) {
        const refusal = { name: candidate.name, source: candidate.source, reason: err.reason, message: err.message };
        options.refusedConfig?.set(candidate.name, { inputId, issuers, refusal });
      }
      if (from === 'store' && RETRIED.has(err.reason)) seen.delete(candidate.name);
      else if (from === 'store' && kept === undefined) {
        // Remembered with the issuer pool it was judged under. Nothing of it serving, the refusal is carried over by
        // later passes; a previous version serving, it serves on, until the files or the pool change (prepare-store.ts).
        const last = seen.get(candidate.name);
        const refusal = { name: candidate.name, source: candidate.source, reason: err.reason, message: err.message };
        if (last?.inputId === inputId) seen.set(candidate.name, { ...last, refused: { issuers, refusal } });
      }
    }
  });
}
