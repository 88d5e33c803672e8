/**
 * PKCS#10 certificate requests (RFC 2986) signed inside the token, so a
 * renewal never needs the private key outside it (`keyedge key csr`). The
 * request itself is built by shared/csr.ts; this gives it the token's sign.
 */
import { createCsrWith } from '../shared/csr.js';
import type * as x509 from '../shared/x509.js';
import type { TokenKey } from './keys.js';
import { signDigest } from './sign.js';
import type { Token } from './token.js';

export function createCsr(token: Token, key: TokenKey, domains: readonly string[]): Promise<x509.Pkcs10CertificateRequest> {
  return createCsrWith(key, domains, async (hash, digest) => {
    const session = token.openSession();
    try {
      // r || s for ECDSA, as WebCrypto returns it; the library DER-encodes it.
      return await signDigest(token.pkcs11, session, key, { scheme: key.kind === 'ec' ? 'ecdsa' : 'rsa-pkcs1', hash, digest });
    } finally {
      token.closeSession(session);
    }
  });
}
