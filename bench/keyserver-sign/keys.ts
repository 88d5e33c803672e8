/**
 * The key types keyserver-sign signs with, and what each side needs: the type to generate, the wire algorithm for the
 * key server, the PKCS#11 mechanism for raw signing (as keyserver/token/sign.ts), the key-server pipeline setting.
 */
import pkcs11js from 'pkcs11js';

/**
 * outputBytes: the raw signature's size (r||s, or the modulus). pipeline: C connections × D requests in flight, what
 * the former exploration of 1, 2, 4 × 32, 64 chose (bench/results/2026-12-03 and 2026-12-04-keyserver-sign.md): ECDSA
 * gains up to 4x64; RSA is flat from 1x64 (within 3%), 2x64 the better of the two runs.
 */
export const BENCH_KEYS = [
  {
    id: 'ec',
    title: 'ECDSA P-256',
    type: 'ec-p256',
    label: 'bench-ec-p256',
    algorithm: 'ECDSA_SHA256',
    mechanism: { mechanism: pkcs11js.CKM_ECDSA },
    outputBytes: 64,
    pipeline: '4x64',
  },
  {
    id: 'rsa',
    title: 'RSA-2048',
    type: 'rsa-2048',
    label: 'bench-rsa-2048',
    algorithm: 'RSA_PSS_SHA256',
    // Salt = hash length, MGF1 with the same hash: RFC 8446 §4.2.3, as sign.ts.
    mechanism: {
      mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
      parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } as pkcs11js.RsaPSS,
    },
    outputBytes: 256,
    pipeline: '2x64',
  },
] as const;

export type BenchKey = (typeof BENCH_KEYS)[number];
