/**
 * The ACME TLS-ALPN-01 validation certificate (RFC 8737 §3), signed by
 * whoever holds the key, the way a CSR is (csr.ts): only the public key and a
 * signing function come in, never the private key.
 *
 * RFC 8737 §3: self-signed, a subjectAltName with the one dNSName being
 * validated, and the critical acmeIdentifier extension
 * (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31) whose value is the DER OCTET
 * STRING of SHA-256(key authorization). @peculiar/x509 builds and encodes it.
 * Its subject is the name's CN when that fits in 64 characters, else empty
 * with the subjectAltName critical (RFC 5280 §4.2.1.6), as for a CSR (csr.ts).
 *
 * Cost: one signature by the holder (one key-server round trip); the
 * certificate lives only while its authorization is pending.
 */
import { createHash, randomBytes } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { type CsrKey, type CsrSigner, holderCrypto, subjectFor } from './csr.js';
import * as x509 from './x509.js';

/** id-pe-acmeIdentifier (RFC 8737 §6.1). */
export const ACME_IDENTIFIER_OID = '1.3.6.1.5.5.7.1.31';

/** A fresh challenge certificate for `name`, valid for a day either side of now (clock skew; it is checked only by the CA's VA). */
export async function createAlpnChallengeCertWith(key: CsrKey, name: string, keyAuthorization: string, sign: CsrSigner): Promise<x509.X509Certificate> {
  const { keys, crypto, signingAlgorithm } = await holderCrypto(key, sign);
  const digest = createHash('sha256').update(keyAuthorization).digest();
  const acmeIdentifier = AsnConvert.serialize(new OctetString(digest));
  const now = Date.now();
  const subject = subjectFor([name]);
  // A positive serial: first bit cleared.
  const serial = randomBytes(16);
  serial[0] = (serial[0] ?? 0) & 0x7f;
  return x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serial.toString('hex'),
      name: subject,
      notBefore: new Date(now - 86_400_000),
      notAfter: new Date(now + 86_400_000),
      keys,
      signingAlgorithm,
      extensions: [
        new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: name }], subject === ''),
        new x509.Extension(ACME_IDENTIFIER_OID, true, acmeIdentifier),
      ],
    },
    crypto,
  );
}
