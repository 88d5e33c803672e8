/**
 * Provisional validation (replaced by the full checks): parses the chain and
 * checks the leaf's key against the key server.
 */
import { CertificateError } from '../../keyserver/errors.js';
import { parseCertificateChain, type ServedCertificate } from './certificate.js';

export type CertificateRefusal = 'parse' | 'private_key' | 'chain' | 'expired' | 'not_yet_valid' | 'names' | 'weak_key' | 'weak_signature' | 'key_mismatch' | 'key_unknown';
export interface CertificateCandidate {
  readonly name: string;
  readonly chainText: string;
  readonly source: string;
  readonly names?: readonly string[];
  readonly keyId?: string;
}
export interface ValidatedCertificate {
  readonly certificate: ServedCertificate;
  readonly warnings: readonly string[];
}
export interface ValidationContext {
  readonly now: Date;
  readonly keyserverSpki: (keyId: string, leafSpki: Buffer) => Promise<Buffer | undefined>;
}

export async function validateCertificate(candidate: CertificateCandidate, ctx: ValidationContext): Promise<ValidatedCertificate> {
  const certificate = parseCertificateChain(candidate.name, candidate.chainText, candidate.source);
  const spki = await ctx.keyserverSpki(certificate.keyId, certificate.spki);
  if (spki === undefined) throw new CertificateError(candidate.source, `the key server has no key ${certificate.keyId}`);
  if (!spki.equals(certificate.spki)) throw new CertificateError(candidate.source, `the leaf's public key does not match key ${certificate.keyId}`);
  return { certificate: candidate.names === undefined ? certificate : { ...certificate, names: candidate.names }, warnings: [] };
}
