/**
 * The key id: how the key server, its clients and the proxy name a key. It is
 * the SHA-256 of the key's SubjectPublicKeyInfo DER (keyserver/protocol/SPEC.md,
 * KEY_ID), written as lower-case hex; the wire carries its 32 bytes.
 */
import { createHash } from 'node:crypto';

export function keyIdOf(spki: Buffer): string {
  return createHash('sha256').update(spki).digest('hex');
}
