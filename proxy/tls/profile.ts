/**
 * The TLS profiles a listener can run, after Mozilla's server-side TLS
 * guidelines (v5.7): "intermediate" is the default, "modern" is TLS 1.3 only.
 *
 * Intermediate: TLS 1.2 and 1.3 only (no SSLv3, TLS 1.0/1.1: RFC 8996);
 * TLS 1.2 suites are ECDHE with AEAD only (AES-GCM, ChaCha20-Poly1305), so
 * no static RSA key exchange (the key server offers no decryption), no CBC,
 * no finite-field DH; curves X25519, P-256, P-384. This satisfies Apple ATS
 * (TLS 1.2+, forward secrecy, AEAD) and the mini-program requirement (TLS 1.2+).
 * No compression (CRIME) and no renegotiation (RFC 5746 attacks, DoS).
 * The client's cipher order is honoured, as Mozilla recommends when every
 * offered suite is strong.
 */
import { constants } from 'node:crypto';
import type { SecureContextOptions } from 'node:tls';
import type { TlsProfileName } from '../../config/proxy-schema.js';

const TLS13_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

const TLS12_SUITES = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * Signature algorithms we sign with: ECDSA, RSA-PSS (rsae) and PKCS#1 v1.5
 * (TLS 1.2 only: TLS 1.3 forbids it for CertificateVerify, RFC 8446 §4.2.3),
 * with SHA-256/384/512: exactly what the key server offers. No SHA-1, no SHA-224.
 */
const SIGALGS = [
  'ecdsa_secp256r1_sha256',
  'ecdsa_secp384r1_sha384',
  'ecdsa_secp521r1_sha512',
  'rsa_pss_rsae_sha256',
  'rsa_pss_rsae_sha384',
  'rsa_pss_rsae_sha512',
  'rsa_pkcs1_sha256',
  'rsa_pkcs1_sha384',
  'rsa_pkcs1_sha512',
].join(':');

const COMMON: SecureContextOptions = {
  ciphers: `${TLS13_SUITES}:${TLS12_SUITES}`,
  ecdhCurve: 'X25519:P-256:P-384',
  sigalgs: SIGALGS,
  honorCipherOrder: false,
  secureOptions: constants.SSL_OP_NO_COMPRESSION | constants.SSL_OP_NO_RENEGOTIATION,
};

/**
 * `sessionIdContext` is fixed per profile: OpenSSL resumes a session only in
 * the context it was made in (SSL_CTX_set_session_id_context(3)), and Node's
 * default derives it from process.argv, which differs between the nodes of a
 * fleet (each has its own config path), so a ticket issued by one node would
 * never resume on another even with the fleet's shared ticket keys. A
 * certificate's context narrows it to that certificate (contexts.ts).
 */
export const TLS_PROFILES: Readonly<Record<TlsProfileName, Readonly<SecureContextOptions>>> = Object.freeze({
  intermediate: Object.freeze({ ...COMMON, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.3', sessionIdContext: 'keyedge/intermediate' }),
  modern: Object.freeze({ ...COMMON, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', sessionIdContext: 'keyedge/modern' }),
});
