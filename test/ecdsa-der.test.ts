import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ecdsaRawToDer } from '../keyserver/token/ecdsa-der.js';
import * as x509 from '../keyserver/shared/x509.js';

describe('ecdsaRawToDer', () => {
  it.each(['P-256', 'P-384', 'P-521'])('matches node:crypto DER signatures on %s', (curve) => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
    for (let i = 0; i < 200; i++) {
      const message = Buffer.from(`message ${i}`);
      const raw = sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const der = ecdsaRawToDer(raw);
      expect(verify('sha256', message, { key: publicKey, dsaEncoding: 'der' }, der)).toBe(true);
      // the same bytes a general ASN.1 encoder produces
      const reference = new x509.AsnEcSignatureFormatter().toAsnSignature({ name: 'ECDSA', namedCurve: curve } as EcKeyAlgorithm, new Uint8Array(raw));
      expect(der.equals(Buffer.from(reference!))).toBe(true);
    }
  });

  it.each([
    ['leading zeros dropped', Buffer.concat([Buffer.alloc(31), Buffer.from([5]), Buffer.alloc(31), Buffer.from([7])]), '3006020105020107'],
    ['a zero stays one octet', Buffer.alloc(64), '3006020100020100'],
    ['top bit set gets a 0x00', Buffer.concat([Buffer.alloc(31), Buffer.from([0x80]), Buffer.alloc(31), Buffer.from([1])]), '300702020080020101'],
  ])('%s', (_name, raw, hex) => {
    expect(ecdsaRawToDer(raw).toString('hex')).toBe(hex);
  });

  it('refuses odd and empty input', () => {
    expect(() => ecdsaRawToDer(Buffer.alloc(0))).toThrow(RangeError);
    expect(() => ecdsaRawToDer(Buffer.alloc(63))).toThrow(/even/);
  });
});
