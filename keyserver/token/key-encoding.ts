/**
 * The encodings keys take between PKCS#11 attributes and node:crypto: EC
 * curve parameters, EC points, CK_ULONG values, JWK and SPKI. Pure: bytes in,
 * bytes out; the token calls are keys.ts's, key-generate.ts's and
 * key-import.ts's.
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto';

/** DER OIDs for CKA_EC_PARAMS (RFC 5480 §2.1.1.1). */
export const CURVES = {
  'P-256': { oid: Buffer.from('06082a8648ce3d030107', 'hex'), bits: 256 },
  'P-384': { oid: Buffer.from('06052b81040022', 'hex'), bits: 384 },
} as const;
export type Curve = keyof typeof CURVES;

/** CKA_EC_POINT holds DER OCTET STRING(04 || x || y); some modules return the bare point. */
export function unwrapOctetString(der: Buffer): Buffer {
  if (der[0] === 0x04 && der.length > 2) {
    const short = der[1]! < 0x80;
    const headerBytes = short ? 2 : 2 + (der[1]! & 0x7f);
    const length = short ? der[1]! : der.readUIntBE(2, der[1]! & 0x7f);
    if (headerBytes + length === der.length) return der.subarray(headerBytes);
  }
  return der;
}

export function spkiFromJwk(jwk: JsonWebKey): Buffer {
  return createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
}

export function publicJwk(jwk: JsonWebKey): JsonWebKey {
  return jwk.kty === 'EC' ? { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y } : { kty: jwk.kty, n: jwk.n, e: jwk.e };
}

/** A CK_ULONG attribute in the platform's byte order and width (8 bytes on LP64). */
export function readUlong(value: Buffer): number {
  return value.length === 8 ? Number(value.readBigUInt64LE()) : value.readUInt32LE();
}

/** The bit length of a big-endian modulus (leading zero bytes and bits not counted). */
export function modulusBits(modulus: Buffer): number {
  let i = 0;
  while (i < modulus.length && modulus[i] === 0) i++;
  const first = modulus[i] ?? 0;
  return (modulus.length - i - 1) * 8 + (32 - Math.clz32(first));
}
