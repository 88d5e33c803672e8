/**
 * PKCS#10 certificate requests (RFC 2986) signed inside the token, so a
 * renewal never needs the private key outside it.
 *
 * @peculiar/x509 builds and encodes the request; it signs through the WebCrypto
 * object it is given. We give it node's WebCrypto with `sign` replaced by a
 * call into the token: the library hashes nothing itself, so we hash the
 * to-be-signed bytes here and the token signs the digest.
 */
import { createHash, webcrypto } from 'node:crypto';
import * as x509 from '../shared/x509.js';
import type { HashName } from '../protocol/constants.js';
import type { TokenKey } from './keys.js';
import { signDigest } from './sign.js';
import type { Token } from './token.js';

/** The signature algorithm a CSR gets for each key: the strongest every public CA accepts. */
function csrAlgorithm(key: TokenKey): { webcrypto: RsaHashedImportParams | EcKeyImportParams; hash: HashName } {
  if (key.kind === 'ec') {
    const hash: HashName = key.curve === 'P-384' ? 'sha384' : 'sha256';
    return { webcrypto: { name: 'ECDSA', namedCurve: key.curve ?? 'P-256' }, hash };
  }
  return { webcrypto: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, hash: 'sha256' };
}

export async function createCsr(token: Token, key: TokenKey, domains: readonly string[]): Promise<x509.Pkcs10CertificateRequest> {
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

  const tokenSign = async (_alg: unknown, _key: CryptoKey, data: BufferSource): Promise<ArrayBuffer> => {
    const bytes = Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    const digest = createHash(hash).update(bytes).digest();
    const session = token.openSession();
    try {
      const signature = await signDigest(token.pkcs11, session, key, {
        scheme: key.kind === 'ec' ? 'ecdsa' : 'rsa-pkcs1',
        hash,
        digest,
      });
      // r || s for ECDSA, as WebCrypto returns it; the library DER-encodes it.
      return new Uint8Array(signature).buffer;
    } finally {
      token.closeSession(session);
    }
  };
  const subtle = new Proxy(webcrypto.subtle, {
    get(target, property) {
      if (property === 'sign') return tokenSign;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const crypto = { subtle, getRandomValues: webcrypto.getRandomValues.bind(webcrypto) } as unknown as Crypto;

  return x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: `CN=${domains[0] ?? ''}`,
      keys: { publicKey, privateKey },
      signingAlgorithm: { name: algorithm.name, hash: webHash },
      extensions: [new x509.SubjectAlternativeNameExtension(domains.map((value) => ({ type: 'dns' as const, value })))],
    },
    crypto,
  );
}
