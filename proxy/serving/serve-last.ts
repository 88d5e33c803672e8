/**
 * At start (nothing served yet), a store entry whose files are refused
 * serves the version the last run served (`lastServed`, last-served.ts) once
 * the rules that time and the key server decide pass again: what a running
 * proxy does for a refused replacement, kept across a restart. The refusal
 * is still reported, with a warning that the last served version serves. A
 * fleet's version (one naming its etcd revision) only while the entry is
 * still at the revision this node judged when it last served that version:
 * nothing written since, no entry deleted and written again since. Apart
 * from the pass (prepare.ts) because it runs only after every other verdict
 * is in, on the refusals alone.
 */
import { CertificateError } from '../certs/errors.js';
import type { CertificateCandidate, ValidationContext } from '../certs/validate.js';
import type { VerdictCache } from '../certs/verdict-cache.js';
import { judgeCertificate } from '../certs/verdicts.js';
import type { ServedVersion } from './last-served.js';
import { forEachLimited } from './limited.js';
import { type PassTally, storeInputId } from './pass-tally.js';
import { VALIDATION_CONCURRENCY } from './prepare-judge.js';
import type { PrepareOptions } from './prepare-types.js';
import { recordOfVerdict, type Refusal } from './spec.js';

/**
 * A store entry whose files were refused serves the version the last run
 * served, judged again: the validity window and the key server's key (from
 * its verdict when one is remembered, else in full), so a version expired
 * since or whose key was deleted is not served. Whatever the refusal, a
 * `names` one included (a renewal that drops a name the entry pins, a leaf
 * with IP SANs alone): a running proxy keeps the old version for it too, and
 * the fallback serves the names the old version served. Not for a name the config's
 * certificates hold (refused for it, or now in the config), nor for an entry
 * gone from the store (it is not listed, so not refused); nor, for a fleet's
 * version, once the entry's etcd revision is another than the one logged
 * with it (`refusedAt`: this pass's).
 */
export async function serveLastOnRefusal(
  options: PrepareOptions,
  refusedAt: ReadonlyMap<string, string>,
  validation: ValidationContext,
  verdicts: VerdictCache,
  tally: PassTally,
): Promise<void> {
  const { lastServed } = options;
  if (lastServed === undefined) return;
  const fallbacks: { refusal: Refusal; last: ServedVersion }[] = [];
  for (const refusal of tally.refused) {
    if (tally.records.has(refusal.name) || options.previous.has(refusal.name)) continue;
    if (options.config.certificates.some((c) => c.name === refusal.name)) continue;
    const last = lastServed(refusal.name);
    if (last === undefined || (last.revision !== undefined && last.revision !== refusedAt.get(refusal.name))) continue;
    fallbacks.push({ refusal, last });
  }
  await forEachLimited(fallbacks, VALIDATION_CONCURRENCY, async ({ refusal, last }) => {
    const { name } = refusal;
    // The version as it served: its validated chain, pinned to the names it served and its key id.
    const candidate: CertificateCandidate = { name, chainText: last.chainPem, source: refusal.source, names: last.names, keyId: last.keyId };
    const inputId = verdicts.get(last.inputId) !== undefined ? last.inputId : storeInputId(candidate);
    try {
      const { verdict, warnings } = await judgeCertificate(candidate, inputId, validation, verdicts);
      const record = recordOfVerdict(verdict, candidate, 'store', inputId, validation.now);
      tally.records.set(name, record);
      tally.changed.push(name);
      for (const message of warnings) tally.warnings.push({ name, message });
      tally.warnings.push({
        name,
        message: `its files were refused (${refusal.reason}): the version the last run served (serial ${record.serial}) serves until they change`,
      });
    } catch (err) {
      // The last served version fails now too (expired, its key gone): the refusal stands alone.
      if (!(err instanceof CertificateError)) throw err;
    }
  });
}
