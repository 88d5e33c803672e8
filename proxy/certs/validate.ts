/**
 * Whether a certificate chain may be served, decided once, before it replaces
 * anything: the one gate for the certificate store, the `keyedge cert` command
 * and the reload path. Pure apart from the key-server lookup, which is
 * injected, so every rule is testable without a network.
 *
 * Rules, in the order they are checked (the first failure is reported, with
 * its CertificateRefusal word):
 *   parse          no complete PEM certificate, or one that does not decode
 *   private_key    any block other than CERTIFICATE (a pasted key is named by
 *                  its label only, never quoted)
 *   weak_signature a certificate other than a self-issued root signed with a
 *                  hash weaker than SHA-256 (SHA-1, MD5: Apple ATS and the CA/B
 *                  Baseline Requirements §7.1.3); roots are exempt because a
 *                  client trusts a root by its key, not by its signature
 *   chain          the certificates do not form one issuer path from a leaf
 *   weak_key       a leaf key other than RSA ≥ 2048 or EC P-256/P-384 (what the
 *                  key server signs with), or an intermediate weaker than
 *                  RSA 2048 / EC P-256
 *   not_yet_valid, expired   the leaf outside its validity window
 *   names          the leaf's DNS SANs do not cover every name to serve (SANs
 *                  no client accepts, such as `*.com`, cover nothing and are
 *                  not served)
 *   key_mismatch   a pinned key id that is not the leaf's, or a key server
 *                  key whose SPKI is not the leaf's
 *   usage          a leaf clients refuse as a server's certificate: an
 *                  extended key usage without serverAuth, or a CA
 *                  certificate issued by another CA (leaf-usage.ts)
 *   incomplete_chain  the leaf alone, not self-signed, and its issuer is not
 *                  a known CA certificate (IssuerPool: the configured
 *                  intermediates, the system roots) to complete it from
 *   key_unknown    the key server holds no key with that id
 *
 * The rules live in one module per concern, each pure but for what it names:
 * chain.ts (parse, private_key, weak_signature, chain: the PEM text in issuer
 * order), key-strength.ts (weak_signature, weak_key), validity.ts (the time
 * rules), served-names.ts (names), key-match.ts (key_mismatch, key_unknown), leaf-usage.ts (usage),
 * chain-completion.ts (incomplete_chain: a chain cut short, completed from
 * the known CA certificates). candidate.ts holds what they take and give.
 */
import type * as x509 from '../../keyserver/shared/x509.js';
import { type CertificateCandidate, type Refuse, refuser, type ValidatedCertificate, type ValidationContext } from './candidate.js';
import { servedCertificate } from './certificate.js';
import { firstLine, isSelfIssued, parseChain } from './chain.js';
import { completeChain, defaultIssuerPool } from './chain-completion.js';
import { CertificateError } from './errors.js';
import type { IssuerPool } from './issuers.js';
import { checkKeyserverKey, checkPinnedKey } from './key-match.js';
import { CA_CURVES, checkKey, LEAF_CURVES, signatureWeakness } from './key-strength.js';
import { checkLeafUsage } from './leaf-usage.js';
import { servedNames } from './served-names.js';
import { checkValidityWindow, validityOf } from './validity.js';

export type { CertificateRefusal } from './errors.js';
export type { CertificateCandidate, ValidatedCertificate, ValidationContext } from './candidate.js';
export { type ParsedChain, parseChain } from './chain.js';
export { defaultIssuerPool } from './chain-completion.js';

/**
 * Every check, the key server's included. Resolves with what to serve, or
 * rejects with a CertificateError naming the entry, its source and the rule.
 */
export async function validateCertificate(candidate: CertificateCandidate, ctx: ValidationContext): Promise<ValidatedCertificate> {
  const inspected = await inspectCertificate(candidate, ctx.now, ctx.issuers);
  await checkKeyserverKey(candidate, inspected.certificate, ctx.keyserverSpki);
  return inspected;
}

/**
 * Every check that needs no key server (all but key_unknown and the SPKI
 * comparison): for `keyedge cert show` and for callers that check the key
 * server separately.
 */
export async function inspectCertificate(candidate: CertificateCandidate, now: Date, issuers?: IssuerPool): Promise<ValidatedCertificate> {
  let timed: string[] = [];
  const structure = await inspectStructure(candidate, issuers, (chain) => {
    timed = checkValidityWindow(candidate, validityOf(chain), now);
  });
  return { certificate: structure.certificate, warnings: [...structure.warnings, ...timed] };
}

/**
 * Every rule that depends only on the input (the chain text, the pinned
 * names and key id) and the issuer pool, not on the time or the key server:
 * its verdict can be remembered by content hash (verdicts.ts).
 */
export async function inspectStructure(
  candidate: CertificateCandidate,
  issuers?: IssuerPool,
  /** Run after the key rules, before the names and completeness rules: where the time rules come in a full validation. */
  afterKeys?: (chain: readonly x509.X509Certificate[]) => void,
): Promise<ValidatedCertificate> {
  const refuse = refuser(candidate);
  try {
    return await inspectRules(candidate, refuse, issuers, afterKeys);
  } catch (err) {
    // A part of a certificate the library decodes only when a rule reads it (chain.ts decodes every part it
    // knows of up front; this is the backstop): a parse refusal of this entry, not an error that fails the
    // whole pass naming no entry. The library's messages describe structure (ASN.1 schema), never content.
    if (err instanceof CertificateError) throw err;
    throw refuse('parse', `a certificate does not decode as X.509: ${firstLine(err)}`, err);
  }
}

async function inspectRules(
  candidate: CertificateCandidate,
  refuse: Refuse,
  issuers: IssuerPool | undefined,
  afterKeys: ((chain: readonly x509.X509Certificate[]) => void) | undefined,
): Promise<ValidatedCertificate> {
  const { chain, warnings: chainWarnings } = await parseChain(candidate);
  const warnings = [...chainWarnings];
  const leaf = chain[0]!;

  checkKey(leaf, LEAF_CURVES, 'the leaf', refuse);
  for (const cert of chain.slice(1)) if (!isSelfIssued(cert)) checkKey(cert, CA_CURVES, `intermediate "${cert.subject}"`, refuse);
  afterKeys?.(chain);

  const names = servedNames(candidate, leaf, refuse, warnings);
  checkPinnedKey(candidate.keyId, leaf, refuse);
  checkLeafUsage(leaf, refuse);
  const completed = completeChain(chain, issuers ?? defaultIssuerPool(), refuse);
  for (const { cert, from } of completed.added) {
    warnings.push(`intermediate "${cert.subject}" added from ${from}: the file ends before it`);
    const weakness = signatureWeakness(cert);
    if (weakness !== undefined) {
      throw refuse('weak_signature', `intermediate "${cert.subject}" from ${from} is signed with ${weakness}; expected SHA-256 or stronger`);
    }
    checkKey(cert, CA_CURVES, `intermediate "${cert.subject}" from ${from}`, refuse);
  }
  return { certificate: servedCertificate(candidate.name, candidate.source, completed.chain, names), warnings };
}
