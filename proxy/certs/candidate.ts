/**
 * What certificate validation takes and gives (validate.ts and its rules):
 * the candidate as read, the certificate to serve with its warnings, the
 * context a validation runs in, and the one way a rule refuses. A module of
 * types and one constructor, so every rule's module imports it and none
 * imports another rule's module for its vocabulary.
 */
import { CertificateError, type CertificateRefusal } from './errors.js';
import type { ServedCertificate } from './certificate.js';
import type { IssuerPool } from './issuers.js';

export interface CertificateCandidate {
  /** The store entry or config certificate name, for messages and the served certificate. */
  readonly name: string;
  /** The PEM text as read: any order, possibly garbage. */
  readonly chainText: string;
  /** Where the text came from (a file path, "admin API"), for messages. */
  readonly source: string;
  /** Names this entry must serve; default: every DNS SAN of the leaf. */
  readonly names?: readonly string[];
  /** The key id pinned at the key server; default: derived from the leaf. */
  readonly keyId?: string;
}

export interface ValidatedCertificate {
  readonly certificate: ServedCertificate;
  /** Facts an operator should act on that do not stop serving (near expiry, a root in the chain). */
  readonly warnings: readonly string[];
}

export interface ValidationContext {
  readonly now: Date;
  /**
   * The SPKI (DER) the key server holds under `keyId`; undefined when it has
   * no such key. Any other failure (key server unreachable) should throw: it
   * propagates unchanged, so a caller can tell "unfit" from "cannot check".
   * `leafSpki` is the leaf's own key, for a caller that must go ahead
   * without the key server (the proxy's start while it is down).
   */
  readonly keyserverSpki: (keyId: string, leafSpki: Buffer) => Promise<Buffer | undefined>;
  /** CA certificates that may complete a chain; default: the system roots only. */
  readonly issuers?: IssuerPool;
}

/** A rule's refusal of one candidate: the CertificateRefusal word, a message, what failed underneath. */
export type Refuse = (reason: CertificateRefusal, message: string, cause?: unknown) => CertificateError;

/** The refusals of `candidate`, each naming its entry and source. */
export function refuser(candidate: Pick<CertificateCandidate, 'name' | 'source'>): Refuse {
  return (reason, message, cause) => new CertificateError(candidate.source, message, { reason, entry: candidate.name, cause });
}
