/**
 * The key types the signing benchmarks use, with everything each side needs:
 * the CLI type to generate, the wire algorithm for the key server, and the
 * PKCS#11 mechanism for raw signing (the same parameters
 * keyserver/token/sign.ts uses).
 */
import pkcs11js from 'pkcs11js';
import { Algorithm } from '../../keyserver/protocol/constants.js';

/** Per key: the `keyedge key generate --type`, the wire algorithm, and for raw C_Sign the mechanism and signature size (r||s, or the modulus). */
export const BENCH_KEYS = [
  {
    id: 'ec',
    title: 'ECDSA P-256',
    type: 'ec-p256',
    label: 'bench-ec-p256',
    algorithm: Algorithm.ECDSA_SHA256,
    algorithmName: 'ECDSA_SHA256',
    mechanism: { mechanism: pkcs11js.CKM_ECDSA },
    outputBytes: 64,
  },
  {
    id: 'rsa',
    title: 'RSA-2048',
    type: 'rsa-2048',
    label: 'bench-rsa-2048',
    algorithm: Algorithm.RSA_PSS_SHA256,
    algorithmName: 'RSA_PSS_SHA256',
    // Salt = hash length, MGF1 with the same hash: RFC 8446 §4.2.3, as sign.ts.
    mechanism: {
      mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
      parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } as pkcs11js.RsaPSS,
    },
    outputBytes: 256,
  },
] as const;

export type BenchKey = (typeof BENCH_KEYS)[number];

/** C connections to the key server, D requests in flight on each. */
export interface Pipeline {
  readonly connections: number;
  readonly depth: number;
}

export const pipelineName = (p: Pipeline): string => `${p.connections}x${p.depth}`;

export function parsePipeline(text: string): Pipeline {
  const m = /^(\d+)x(\d+)$/.exec(text);
  if (m === null || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`a pipeline setting looks like 2x32 (connections x in flight), got '${text}'`);
  return { connections: Number(m[1]), depth: Number(m[2]) };
}
