/**
 * JSON Web Signatures for ACME (RFC 8555 §6.2) with the signature made by the
 * key server: the account key never leaves the token. ES256 only (RFC 7518
 * §3.4): P-256 with SHA-256, the one algorithm every ACME CA accepts.
 *
 * The key server signs a digest and answers with a DER ECDSA-Sig-Value (the
 * form TLS carries, SPEC.md "Algorithms"); JWS wants the fixed-width r || s,
 * so the DER is unpacked here (RFC 7518 §3.4: each 32 bytes, left-padded).
 * One sign costs one key-server round trip (well under a millisecond locally).
 */
import { createHash, createHmac, createPublicKey } from 'node:crypto';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { Algorithm } from '../../keyserver/protocol/constants.js';

/** The public half as a JWK, members in the lexicographic order RFC 7638 §3.2 hashes. */
export interface EcJwk {
  readonly crv: 'P-256';
  readonly kty: 'EC';
  readonly x: string;
  readonly y: string;
}

/** Signs JWS signing inputs with one key; `sign` resolves with the raw r || s. */
export interface JwsSigner {
  readonly jwk: EcJwk;
  sign(signingInput: Buffer): Promise<Buffer>;
}

export const b64u = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

export function jwkOfSpki(spki: Buffer): EcJwk {
  const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  const jwk = key.export({ format: 'jwk' });
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || jwk.x === undefined || jwk.y === undefined) {
    throw new RangeError('an ACME account key must be EC P-256 (ES256)');
  }
  return { crv: 'P-256', kty: 'EC', x: jwk.x, y: jwk.y };
}

/** RFC 7638 thumbprint, base64url: the account's part of every key authorization (RFC 8555 §8.1). */
export function thumbprint(jwk: EcJwk): string {
  return b64u(
    createHash('sha256')
      .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
      .digest(),
  );
}

/** A signer whose private key is `keyId` at the key server. */
export function keyserverSigner(client: () => Promise<KeyserverClient>, keyId: string, spki: Buffer): JwsSigner {
  return {
    jwk: jwkOfSpki(spki),
    async sign(signingInput) {
      const digest = createHash('sha256').update(signingInput).digest();
      return ecdsaDerToRaw(await (await client()).sign(keyId, Algorithm.ECDSA_SHA256, digest), 32);
    },
  };
}

/** A flattened JWS (RFC 7515 §7.2.2) of `payload` (undefined: POST-as-GET's empty payload, RFC 8555 §6.3). */
export async function signJws(signer: JwsSigner, header: Record<string, unknown>, payload: unknown): Promise<string> {
  const protectedB64 = b64u(JSON.stringify({ alg: 'ES256', ...header }));
  const payloadB64 = payload === undefined ? '' : b64u(JSON.stringify(payload));
  const signature = await signer.sign(Buffer.from(`${protectedB64}.${payloadB64}`));
  return JSON.stringify({ protected: protectedB64, payload: payloadB64, signature: b64u(signature) });
}

/** External account binding (RFC 8555 §7.3.4): the account JWK MACed with the CA's HS256 key. */
export function externalAccountBinding(jwk: EcJwk, kid: string, hmacKeyB64u: string, url: string): unknown {
  const protectedB64 = b64u(JSON.stringify({ alg: 'HS256', kid, url }));
  const payloadB64 = b64u(JSON.stringify(jwk));
  const mac = createHmac('sha256', Buffer.from(hmacKeyB64u, 'base64url')).update(`${protectedB64}.${payloadB64}`).digest();
  return { protected: protectedB64, payload: payloadB64, signature: b64u(mac) };
}

/** DER SEQUENCE { r INTEGER, s INTEGER } to r || s, each `width` bytes (RFC 7518 §3.4). */
export function ecdsaDerToRaw(der: Buffer, width: number): Buffer {
  let at = 0;
  const length = (): number => {
    const first = der[at++] ?? 0;
    if (first < 0x80) return first;
    let value = 0;
    for (let i = 0; i < (first & 0x7f); i++) value = (value << 8) | (der[at++] ?? 0);
    return value;
  };
  const integer = (): Buffer => {
    if (der[at++] !== 0x02) throw new RangeError('not a DER ECDSA signature: INTEGER expected');
    const n = length();
    let body = der.subarray(at, at + n);
    at += n;
    while (body.length > width && body[0] === 0) body = body.subarray(1);
    if (body.length > width) throw new RangeError('not a DER ECDSA signature: integer wider than the curve');
    return Buffer.concat([Buffer.alloc(width - body.length), body]);
  };
  if (der[at++] !== 0x30) throw new RangeError('not a DER ECDSA signature: SEQUENCE expected');
  length();
  return Buffer.concat([integer(), integer()]);
}
