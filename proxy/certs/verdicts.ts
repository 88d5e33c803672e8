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
 * is dropped whole. The file that keeps verdicts across starts is
 * verdict-cache.ts's; its body's format, verdict-file.ts's.
 */
import { createHash } from 'node:crypto';
import { ocspResponderUrl } from '../tls/ocsp.js';
import type { CertificateCandidate, ValidationContext } from './candidate.js';
import type { ServedCertificate } from './certificate.js';
import { checkKeyserverKey } from './key-match.js';
import { inspectStructure } from './validate.js';
import { VERDICT_FORMAT, type VerdictCache } from './verdict-cache.js';
import type { Verdict } from './verdict-file.js';
import { type ChainValidity, checkValidityWindow, validityOf } from './validity.js';

/** Raised whenever a rule of validate.ts (or a module of its rules) changes what it accepts or what it derives: every verdict is then reached again. */
export const VERDICT_SCHEMA = 3;

/** What a verdict depends on besides its input: a verdict reached under another context is not reused. */
export function verdictContext(issuerFingerprint: string): string {
  return createHash('sha256')
    .update(`${VERDICT_FORMAT}\0${VERDICT_SCHEMA}\0${process.versions.node}\0${process.versions.openssl}\0${issuerFingerprint}`)
    .digest('hex');
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
