/**
 * The names rule of certificate validation (validate.ts): which names a
 * certificate is served for. Pure: the leaf's DNS SANs and the entry's
 * pinned names in, the names (or a refusal) out.
 *
 * A SAN no client accepts covers nothing: one that is not an LDH name (an
 * IDN's U-label, a wildcard not alone in the leftmost label), or a wildcard
 * over a single label (`*.com`: RFC 6125 §7.2, which clients refuse), which
 * would otherwise take every unknown name under that top-level domain from
 * the default answer and from on-demand issuance.
 */
import type * as x509 from '../../keyserver/shared/x509.js';
import { coveredBy, normaliseName } from '../tls/names.js';
import type { CertificateCandidate, Refuse } from './candidate.js';
import { dnsNames } from './certificate.js';

const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * The names to serve, lower-case and unique, each covered by a DNS SAN of the
 * leaf (wildcards per RFC 6125 §6.4.3). Without pinned names, the leaf's SANs
 * that no client could be served for are left out with a warning.
 */
export function servedNames(candidate: CertificateCandidate, leaf: x509.X509Certificate, refuse: Refuse, warnings: string[]): string[] {
  const sans = dnsNames(leaf);
  if (sans.length === 0) throw refuse('names', 'the leaf has no DNS subjectAltName (RFC 6125 §6.4.4: the common name is not used)');
  if (candidate.names === undefined) {
    const served = new Set<string>();
    const unservable: string[] = [];
    for (const san of sans) {
      const name = normaliseName(san);
      if (name !== undefined && unservableBecause(name) === undefined) served.add(name);
      else unservable.push(san);
    }
    if (unservable.length > 0) {
      const because = unservableBecause(normaliseName(unservable[0]!) ?? '');
      warnings.push(`${unservable.length} DNS name(s) of the leaf are not served (${listed(unservable.map((n) => JSON.stringify(n)))}): the first ${because}`);
    }
    if (served.size === 0) throw refuse('names', `the leaf has no DNS name that can be served (its DNS names: ${listed(sans)})`);
    return [...served];
  }
  if (candidate.names.length === 0) throw refuse('names', 'the entry lists no names to serve');
  const names = new Set<string>();
  // Only by SANs a client accepts: `*.com` covers `shop.com` for no browser (RFC 6125 §7.2).
  const covered = coveredBy(sans.filter((san) => unservableBecause(normaliseName(san) ?? '') === undefined));
  for (const raw of candidate.names) {
    const name = normaliseName(raw.trim());
    const because = name === undefined ? 'is not a DNS name' : unservableBecause(name);
    if (because !== undefined) throw refuse('names', `"${raw}" ${because}`);
    if (!covered(name!)) throw refuse('names', `the leaf does not cover "${name}" (its DNS names: ${listed(sans)})`);
    names.add(name!);
  }
  return [...names];
}

/** Why a normalised name cannot be served, or undefined when it can. */
function unservableBecause(name: string): string | undefined {
  if (!DNS_NAME.test(name) || name.length > 253) return 'is not a DNS name (letters, digits, hyphens; an IDN in its xn-- form)';
  if (name.startsWith('*.') && !name.slice(2).includes('.')) return 'is a wildcard over a top-level domain (RFC 6125 §7.2)';
  return undefined;
}

/** The first few of `names`, then how many more: a message names a certificate's thousands of SANs in a line, not in 200 KB. */
function listed(names: readonly string[], shown = 10): string {
  return names.length <= shown ? names.join(', ') : `${names.slice(0, shown).join(', ')} and ${names.length - shown} more`;
}
