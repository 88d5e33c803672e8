/**
 * The cryptographic strength rules of certificate validation (validate.ts):
 * weak_signature (what hash a certificate is signed with) and weak_key (what
 * key a certificate carries). Pure: certificates in, a reason or a refusal
 * out.
 *
 * Signatures: SHA-256 or stronger (SHA-1 and MD5 are refused: Apple ATS and
 * the CA/B Baseline Requirements §7.1.3). Keys: a leaf's must be one the key
 * server signs with (RSA ≥ 2048, EC P-256/P-384: keyserver/token/key-generate.ts);
 * an intermediate's may also be on P-521.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import type * as x509 from '../../keyserver/shared/x509.js';
import type { Refuse } from './candidate.js';

const STRONG_HASHES = new Set(['SHA-256', 'SHA-384', 'SHA-512']);
/** Signature schemes with no separate hash to judge (RFC 8410). */
const HASHLESS_SIGNATURES = new Set(['Ed25519', 'Ed448']);
/** Names for the weak signature OIDs @peculiar/x509 does not map to a WebCrypto algorithm. */
const SIGNATURE_OIDS: Readonly<Record<string, string>> = {
  '1.2.840.113549.1.1.2': 'md2WithRSAEncryption',
  '1.2.840.113549.1.1.3': 'md4WithRSAEncryption',
  '1.2.840.113549.1.1.4': 'md5WithRSAEncryption',
  '1.2.840.10040.4.3': 'dsa-with-sha1',
};
/** Leaf key curves the key server signs with, by node's name for them. */
export const LEAF_CURVES: Readonly<Record<string, string>> = { prime256v1: 'P-256', secp384r1: 'P-384' };
export const CA_CURVES: Readonly<Record<string, string>> = { ...LEAF_CURVES, secp521r1: 'P-521' };
const MIN_RSA_BITS = 2048;

/** What is weak about `cert`'s signature algorithm, or undefined when it is SHA-256 or stronger. */
export function signatureWeakness(cert: x509.X509Certificate): string | undefined {
  const algorithm = cert.signatureAlgorithm as Algorithm & { hash?: Algorithm };
  if (HASHLESS_SIGNATURES.has(algorithm.name)) return undefined;
  const hash = algorithm.hash?.name;
  if (hash === undefined) return SIGNATURE_OIDS[algorithm.name] ?? `an unrecognised signature algorithm (${algorithm.name})`;
  return STRONG_HASHES.has(hash) ? undefined : `${hash} (${algorithm.name})`;
}

/** The weak_key rule: `cert`'s key is RSA ≥ 2048 bits or EC on one of `curves`; `what` names it in the refusal. */
export function checkKey(cert: x509.X509Certificate, curves: Readonly<Record<string, string>>, what: string, refuse: Refuse): void {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' });
  } catch (err) {
    throw refuse('weak_key', `${what} has a public key of a type this system cannot read`, err);
  }
  const details = key.asymmetricKeyDetails ?? {};
  const allowed = `RSA ≥ ${MIN_RSA_BITS} bits or EC ${Object.values(curves).join('/')}`;
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw refuse('weak_key', `${what} has an RSA-${bits} key; expected ${allowed}`);
    return;
  }
  if (key.asymmetricKeyType === 'ec') {
    const curve = details.namedCurve ?? 'unnamed';
    if (curves[curve] === undefined) throw refuse('weak_key', `${what} has an EC key on curve ${curve}; expected ${allowed}`);
    return;
  }
  throw refuse('weak_key', `${what} has a ${key.asymmetricKeyType ?? 'unknown'} key; expected ${allowed}`);
}
