/**
 * Who may sign an OCSP response (RFC 6960 §4.2.2.2): the certificate's issuer,
 * or a responder certificate the issuer signed for OCSP signing. The stapler
 * (ocsp.ts) staples nothing else: the responder is usually reached over plain
 * HTTP, so anyone on the path may answer, and a staple a client cannot verify
 * is one a strict client (Firefox) fails the handshake on. Pure, synchronous
 * (node:crypto verifies).
 */
import { type KeyObject, verify, X509Certificate as NodeCertificate } from 'node:crypto';
import { BasicOCSPResponse, OCSPResponse } from '@peculiar/asn1-ocsp';
import { AsnConvert } from '@peculiar/asn1-schema';
import * as x509 from '../../keyserver/shared/x509.js';

/** id-kp-OCSPSigning (RFC 6960 §4.2.2.2): what a delegated responder's certificate must say it is for. */
const OCSP_SIGNING = '1.3.6.1.5.5.7.3.9';
/** The response signature algorithms checked (RFC 5754, RFC 5758, RFC 8410), with the hash node:crypto verifies under; any other is refused. */
const SIGNATURE_HASHES: Readonly<Record<string, string | null>> = {
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.10045.4.1': 'sha1',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.3.101.112': null,
};
/** Responder certificates looked at in one response: a real one carries one. */
const MAX_RESPONDER_CERTS = 4;

/**
 * Checks who signed a DER OCSPResponse (RFC 6960 §4.2.2.2): `issuer` itself, or
 * a certificate in the response that `issuer` signed, that says it is for OCSP
 * signing and that is valid now. Throws saying why not. Call after
 * checkOcspResponse (which tells the response is a basic one).
 */
export function checkOcspSigner(der: Buffer, issuer: NodeCertificate, now = new Date()): void {
  const response = AsnConvert.parse(der, OCSPResponse);
  const basic = AsnConvert.parse(response.responseBytes!.response.buffer, BasicOCSPResponse);
  const algorithm = basic.signatureAlgorithm.algorithm;
  const hash = SIGNATURE_HASHES[algorithm];
  if (hash === undefined) throw new Error(`the response is signed with ${algorithm}, not an algorithm checked here`);
  // The bytes as received: re-encoding them could differ from what was signed.
  const tbs = Buffer.from(basic.tbsResponseDataRaw ?? AsnConvert.serialize(basic.tbsResponseData));
  const signature = Buffer.from(basic.signature);
  const signedBy = (key: KeyObject): boolean => {
    try {
      return verify(hash, tbs, key, signature);
    } catch {
      return false;
    }
  };
  if (signedBy(issuer.publicKey)) return;
  for (const cert of (basic.certs ?? []).slice(0, MAX_RESPONDER_CERTS)) {
    const der = Buffer.from(AsnConvert.serialize(cert));
    const responder = new NodeCertificate(der);
    if (!responder.checkIssued(issuer) || !responder.verify(issuer.publicKey)) continue;
    const parsed = new x509.X509Certificate(der);
    const usages = parsed.getExtension(x509.ExtendedKeyUsageExtension)?.usages.map(String) ?? [];
    if (!usages.includes(OCSP_SIGNING)) continue;
    if (parsed.notBefore.getTime() > now.getTime() || parsed.notAfter.getTime() <= now.getTime()) continue;
    if (signedBy(responder.publicKey)) return;
  }
  throw new Error("the response is signed neither by the certificate's issuer nor by a responder the issuer certified for OCSP signing");
}
