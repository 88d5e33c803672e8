/**
 * PKCS#10 certificate requests (RFC 2986) signed by whoever holds the key:
 * the token itself (`keyedge key csr`, token/csr.ts) or the key server over
 * its protocol (the ACME issuer, proxy/acme/). Only the public key and a
 * signing function come in; the private key is never here.
 *
 * @peculiar/x509 builds and encodes the request; it signs through the WebCrypto
 * object it is given. We give it node's WebCrypto with `sign` replaced by the
 * caller's function: the library hashes nothing itself, so we hash the
 * to-be-signed bytes here and the holder signs the digest.
 *
 * The subject's common name is the first name only when it fits: RFC 5280
 * (Appendix A.1, ub-common-name) bounds a CN at 64 characters, and a public
 * CA (Let's Encrypt) refuses a request whose CN is longer, so a certificate
 * whose first name is over 64 could never be issued. Such a request has an
 * empty subject and names every domain in its subjectAltName alone, which
 * the CA/Browser Forum's Baseline Requirements allow (§7.1.4.3: the CN is
 * discouraged, a copy of one SAN when present) and certbot and lego do.
 */
import { createHash, createPublicKey, webcrypto } from 'node:crypto';
import * as x509 from './x509.js';

/** The hashes a CSR is signed with (the protocol's names for them). */
export type HashName = 'sha256' | 'sha384' | 'sha512';

/** Signs `digest` (of `hash`); resolves with the signature as WebCrypto returns it: r || s for ECDSA, the plain signature for RSA. */
export type CsrSigner = (hash: HashName, digest: Buffer) => Promise<Buffer>;

export interface CsrKey {
  readonly kind: 'ec' | 'rsa';
  /** 'P-256' or 'P-384' for EC keys. */
  readonly curve: string | undefined;
  readonly spki: Buffer;
}

/** The kind and curve of a SubjectPublicKeyInfo, for a key known only by its public half. */
export function csrKeyOfSpki(spki: Buffer): CsrKey {
  const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  if (key.asymmetricKeyType === 'ec') {
    return { kind: 'ec', curve: key.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'P-384' : 'P-256', spki };
  }
  return { kind: 'rsa', curve: undefined, spki };
}

/** The signature algorithm a CSR gets for each key: the strongest every public CA accepts. */
export function csrAlgorithm(key: CsrKey): { webcrypto: RsaHashedImportParams | EcKeyImportParams; hash: HashName } {
  if (key.kind === 'ec') {
    const hash: HashName = key.curve === 'P-384' ? 'sha384' : 'sha256';
    return { webcrypto: { name: 'ECDSA', namedCurve: key.curve ?? 'P-256' }, hash };
  }
  return { webcrypto: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, hash: 'sha256' };
}

/**
 * The key pair and WebCrypto object @peculiar/x509 signs with when the
 * private key is elsewhere: the public key is real, the "private key" carries
 * only the algorithm, and `subtle.sign` hashes here and hands the digest to
 * the holder. Shared by CSRs and ACME TLS-ALPN-01 certificates (alpn-cert.ts).
 */
export async function holderCrypto(
  key: CsrKey,
  sign: CsrSigner,
): Promise<{ keys: CryptoKeyPair; crypto: Crypto; signingAlgorithm: { name: string; hash: string } }> {
  const { webcrypto: algorithm, hash } = csrAlgorithm(key);
  const webHash = { sha256: 'SHA-256', sha384: 'SHA-384', sha512: 'SHA-512' }[hash];
  const publicKey = await webcrypto.subtle.importKey('spki', new Uint8Array(key.spki), algorithm, true, ['verify']);
  // Stands in for the private key: carries only the algorithm the library reads.
  const privateKey = {
    algorithm: { ...publicKey.algorithm, hash: { name: webHash } },
    type: 'private',
    extractable: false,
    usages: ['sign'],
  } as unknown as CryptoKey;

  const holderSign = async (_alg: unknown, _key: CryptoKey, data: BufferSource): Promise<ArrayBuffer> => {
    const bytes = Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    const signature = await sign(hash, createHash(hash).update(bytes).digest());
    return new Uint8Array(signature).buffer;
  };
  const subtle = new Proxy(webcrypto.subtle, {
    get(target, property) {
      if (property === 'sign') return holderSign;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const crypto = { subtle, getRandomValues: webcrypto.getRandomValues.bind(webcrypto) } as unknown as Crypto;
  return { keys: { publicKey, privateKey }, crypto, signingAlgorithm: { name: algorithm.name, hash: webHash } };
}

/** RFC 5280 Appendix A.1: ub-common-name INTEGER ::= 64. */
export const MAX_COMMON_NAME = 64;

/**
 * The subject for a certificate of `names`: `CN=<first>` when the first name
 * is at most 64 bytes, else empty (the names are in the subjectAltName).
 * DNS names are ASCII (A-labels), so bytes and characters are the same.
 */
export function subjectFor(names: readonly string[]): string {
  const first = names[0];
  return first !== undefined && Buffer.byteLength(first) <= MAX_COMMON_NAME ? `CN=${first}` : '';
}

export async function createCsrWith(key: CsrKey, domains: readonly string[], sign: CsrSigner): Promise<x509.Pkcs10CertificateRequest> {
  const { keys, crypto, signingAlgorithm } = await holderCrypto(key, sign);
  return x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: subjectFor(domains),
      keys,
      signingAlgorithm,
      extensions: [new x509.SubjectAlternativeNameExtension(domains.map((value) => ({ type: 'dns' as const, value })))],
    },
    crypto,
  );
}
