/**
 * The key rules of certificate validation (validate.ts) that tie a leaf to
 * the key that signs for it: key_mismatch (a pinned key id, or a key-server
 * key, that is not the leaf's) and key_unknown (the key server holds no key
 * under the leaf's key id). The key id is the SHA-256 of the SPKI DER
 * (keyserver/shared/key-id.ts), so it names the same key on both sides.
 */
import { createPublicKey } from 'node:crypto';
import type * as x509 from '../../keyserver/shared/x509.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { type CertificateCandidate, type Refuse, refuser, type ValidationContext } from './candidate.js';
import type { ServedCertificate } from './certificate.js';

const KEY_ID = /^[0-9a-f]{64}$/;

/** The key_mismatch rule for an entry that pins a key id: it must be a key id, and the leaf's. */
export function checkPinnedKey(pinnedKeyId: string | undefined, leaf: x509.X509Certificate, refuse: Refuse): void {
  if (pinnedKeyId === undefined) return;
  const pinned = pinnedKeyId.toLowerCase();
  if (!KEY_ID.test(pinned)) throw refuse('key_mismatch', 'the pinned key id is not a key id (64 hex digits)');
  const leafKeyId = keyIdOf(Buffer.from(leaf.publicKey.rawData));
  if (pinned !== leafKeyId) throw refuse('key_mismatch', `the leaf's key id is ${leafKeyId}, the entry pins key ${pinned}`);
}

/**
 * The key_unknown and key_mismatch rules against the key server: it must hold
 * a key under the entry's key id, and that key must be the leaf's. Keys are
 * compared as keys, not bytes, so two DER spellings of one key agree.
 */
export async function checkKeyserverKey(
  candidate: Pick<CertificateCandidate, 'name' | 'source'>,
  certificate: Pick<ServedCertificate, 'keyId' | 'spki'>,
  lookup: ValidationContext['keyserverSpki'],
): Promise<void> {
  const refuse = refuser(candidate);
  const keyId = certificate.keyId;
  const held = await lookup(keyId, certificate.spki);
  if (held === undefined) throw refuse('key_unknown', `the key server holds no key with id ${keyId} (the leaf's key); import or generate it there first`);
  // Equal DER is the same key (the usual case, and ~1 ms cheaper than decoding both).
  let same = held.equals(certificate.spki);
  try {
    same ||= createPublicKey({ key: held, format: 'der', type: 'spki' }).equals(createPublicKey({ key: certificate.spki, format: 'der', type: 'spki' }));
  } catch (err) {
    throw refuse('key_mismatch', `the key server's public key for ${keyId} does not decode`, err);
  }
  if (!same) throw refuse('key_mismatch', `the key server's key ${keyId} is not the leaf's public key`);
}
