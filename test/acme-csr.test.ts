import { generateKeyPairSync, privateEncrypt, constants } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createAlpnChallengeCertWith } from '../keyserver/shared/alpn-cert.js';
import { type CsrSigner, createCsrWith, csrKeyOfSpki } from '../keyserver/shared/csr.js';
import * as x509 from '../keyserver/shared/x509.js';

// The subject of the requests the issuer sends (and `keyedge key csr` writes)
// and of its TLS-ALPN-01 certificates: RFC 5280's ub-common-name is 64, and
// Let's Encrypt refuses a CSR whose CN is longer, so a first name over 64
// characters goes in the subjectAltName alone, the subject left empty. Pebble
// does not check this, so the request itself is read back here.
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const key = csrKeyOfSpki(publicKey.export({ type: 'spki', format: 'der' }));
/** RSASSA-PKCS1-v1_5 over a SHA-256 digest: the DigestInfo (RFC 8017 §9.2) encrypted with the private key. */
const sign: CsrSigner = async (_hash, digest) =>
  privateEncrypt(
    { key: privateKey, padding: constants.RSA_PKCS1_PADDING },
    Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), digest]),
  );

/** 70 characters, each label under 63: a valid DNS name whose CN would not be. */
const LONG = `${'a'.repeat(60)}.long.test`;
const SIXTY_FOUR = `${'b'.repeat(54)}.long.test`;

function sans(extensions: readonly x509.Extension[]): string[] {
  const san = extensions.find((e): e is x509.SubjectAlternativeNameExtension => e instanceof x509.SubjectAlternativeNameExtension);
  return san?.names.items.map((n) => n.value) ?? [];
}

describe('the common name of a request', () => {
  it('is the first name when it is at most 64 characters', async () => {
    expect(SIXTY_FOUR).toHaveLength(64);
    for (const first of ['shop.example', SIXTY_FOUR]) {
      const csr = await createCsrWith(key, [first, LONG], sign);
      expect(await csr.verify()).toBe(true);
      expect(csr.subject).toBe(`CN=${first}`);
      expect(sans(csr.extensions)).toEqual([first, LONG]);
    }
  });

  it('is left out when the first name is over 64 characters: every name is in the subjectAltName', async () => {
    expect(LONG).toHaveLength(70);
    const csr = await createCsrWith(key, [LONG, 'shop.example'], sign);
    expect(await csr.verify()).toBe(true);
    expect(csr.subject).toBe('');
    expect(csr.subjectName.getField('CN')).toEqual([]);
    expect(sans(csr.extensions)).toEqual([LONG, 'shop.example']);
  });

  it('a TLS-ALPN-01 certificate for a name over 64 characters: no CN, its subjectAltName critical (RFC 5280 §4.2.1.6)', async () => {
    const long = await createAlpnChallengeCertWith(key, LONG, 'token.thumbprint', sign);
    expect(long.subject).toBe('');
    const san = long.getExtension(x509.SubjectAlternativeNameExtension);
    expect(san?.critical).toBe(true);
    expect(sans(long.extensions)).toEqual([LONG]);
    expect(await long.verify({ signatureOnly: true })).toBe(true);
    const short = await createAlpnChallengeCertWith(key, 'shop.example', 'token.thumbprint', sign);
    expect(short.subject).toBe('CN=shop.example');
    expect(short.getExtension(x509.SubjectAlternativeNameExtension)?.critical).toBe(false);
  });
});
