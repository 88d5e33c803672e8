/**
 * The time rules of certificate validation (validate.ts): not_yet_valid,
 * expired, and the expiry warnings. The only rules whose answer changes for
 * the same bytes, so a remembered verdict (verdicts.ts) keeps what they need
 * (ChainValidity) and is checked against them again every time it is used.
 * Pure: the clock is an argument.
 */
import type * as x509 from '../../keyserver/shared/x509.js';
import { type CertificateCandidate, refuser } from './candidate.js';

/** What the time-dependent rules need of a chain: the leaf's window and the other certificates' ends. */
export interface ChainValidity {
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Every certificate after the leaf, by subject. */
  readonly chainExpiries: readonly { readonly subject: string; readonly notAfter: Date }[];
}

const WARN_EXPIRY_MS = 7 * 86_400_000;

export function validityOf(chain: readonly x509.X509Certificate[]): ChainValidity {
  const leaf = chain[0]!;
  return { notBefore: leaf.notBefore, notAfter: leaf.notAfter, chainExpiries: chain.slice(1).map((c) => ({ subject: c.subject, notAfter: c.notAfter })) };
}

/** The not_yet_valid and expired rules and the expiry warnings, at `now`. */
export function checkValidityWindow(candidate: Pick<CertificateCandidate, 'name' | 'source'>, validity: ChainValidity, now: Date): string[] {
  const refuse = refuser(candidate);
  const warnings: string[] = [];
  // RFC 5280 §4.1.2.5: both bounds are inclusive.
  if (now < validity.notBefore) throw refuse('not_yet_valid', `the leaf is not valid before ${validity.notBefore.toISOString()} (now ${now.toISOString()})`);
  if (now > validity.notAfter) throw refuse('expired', `the leaf expired at ${validity.notAfter.toISOString()} (now ${now.toISOString()})`);
  const left = validity.notAfter.getTime() - now.getTime();
  if (left < WARN_EXPIRY_MS) warnings.push(`the leaf expires in ${formatDuration(left)}, at ${validity.notAfter.toISOString()}`);
  // Not refused: a chain may carry an expired cross-sign on purpose for old
  // clients (Let's Encrypt served one until 2024), and other clients build
  // a path around it.
  for (const cert of validity.chainExpiries) {
    if (now > cert.notAfter) warnings.push(`chain certificate "${cert.subject}" expired at ${cert.notAfter.toISOString()}`);
  }
  return warnings;
}

function formatDuration(ms: number): string {
  const hours = Math.max(0, Math.floor(ms / 3_600_000));
  return hours >= 48 ? `${Math.floor(hours / 24)} days` : `${hours} hours`;
}
