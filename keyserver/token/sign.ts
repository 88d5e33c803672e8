/**
 * Signing a digest inside the token.
 *
 * The caller hashes; the token only ever sees a digest (ECDSA, PSS) or a
 * DigestInfo (PKCS#1 v1.5), so the key server needs no multi-part operations
 * and a handshake's transcript never leaves the proxy. Raw RSA and decryption
 * are not offered: TLS 1.3 and ECDHE-only TLS 1.2 never need them.
 *
 * The key server signs on worker threads (sign-workers.ts); `signDigest`
 * serves the management paths (CSRs) on a session of their own.
 */
import pkcs11js from 'pkcs11js';
import { KeyError } from '../shared/errors.js';
import type { HashName, SignatureScheme } from '../protocol/constants.js';
import type { TokenKey } from './keys.js';
import { checkSignature, signatureRefused, type VerifySpec } from './sign-verify.js';

const HASH = {
  sha256: { bytes: 32, ckm: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256 },
  sha384: { bytes: 48, ckm: pkcs11js.CKM_SHA384, mgf: pkcs11js.CKG_MGF1_SHA384 },
  sha512: { bytes: 64, ckm: pkcs11js.CKM_SHA512, mgf: pkcs11js.CKG_MGF1_SHA512 },
} as const;

/** DER DigestInfo prefixes, RFC 8017 §9.2 note 1. */
const DIGEST_INFO_PREFIX: Record<HashName, Buffer> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

export interface SignRequest {
  readonly scheme: SignatureScheme;
  readonly hash: HashName;
  readonly digest: Buffer;
}

/** Whether a scheme can be used with a key at all (ECDSA needs EC, the rest RSA). */
export function schemeFitsKey(scheme: SignatureScheme, key: Pick<TokenKey, 'kind'>): boolean {
  return scheme === 'ecdsa' ? key.kind === 'ec' : key.kind === 'rsa';
}

/**
 * Whether an RSA key's modulus leaves room for PSS with this hash and a salt as long: RFC 8017 §9.1.1 step 3 needs
 * emLen = ⌈(modBits − 1) / 8⌉ ≥ hLen + sLen + 2, which an RSA-1024 key misses with SHA-512 (128 < 130). A token asked
 * anyway fails the sign (SoftHSM2: CKR_GENERAL_ERROR), which SPEC.md would make a token failure to retry.
 */
export function pssFitsKey(hash: HashName, key: Pick<TokenKey, 'bits'>): boolean {
  return Math.ceil((key.bits - 1) / 8) >= 2 * HASH[hash].bytes + 2;
}

/**
 * What the token is asked to do for one signature: mechanism, input, and the size of the answer; for RSA, what its
 * answer is checked against before it is used (sign-verify.ts; ECDSA is not checked, see there). The input may be a
 * view (of the client's read, of Node's pool): a sign that waits for a thread gets a copy of its own (sign-workers.ts).
 */
export interface SignPlan {
  readonly mechanism: pkcs11js.Mechanism;
  readonly input: Buffer;
  readonly outputBytes: number;
  readonly verify: VerifySpec | undefined;
}

/**
 * The PKCS#11 call for a sign request, checked against the key. ECDSA comes
 * back as PKCS#11 gives it, r || s of the field size each (v2.40 §2.3.1);
 * callers that need DER convert it.
 */
export function signPlan(key: TokenKey, request: SignRequest): SignPlan {
  const hash = HASH[request.hash];
  if (request.digest.length !== hash.bytes) {
    throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `a ${request.hash} digest is ${hash.bytes} bytes, got ${request.digest.length}`);
  }
  if (!schemeFitsKey(request.scheme, key)) {
    throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `${request.scheme} cannot be used with an ${key.kind} key`);
  }
  if (request.scheme === 'ecdsa') {
    return { mechanism: { mechanism: pkcs11js.CKM_ECDSA }, input: request.digest, outputBytes: 2 * Math.ceil(key.bits / 8), verify: undefined };
  }
  if (request.scheme === 'rsa-pkcs1') {
    return {
      mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS },
      input: Buffer.concat([DIGEST_INFO_PREFIX[request.hash], request.digest]),
      outputBytes: Math.ceil(key.bits / 8),
      verify: { keyId: key.keyId, spki: key.spki, scheme: 'rsa-pkcs1', hash: request.hash },
    };
  }
  // Salt as long as the hash, MGF1 with the same hash: RFC 8446 §4.2.3.
  const parameter: pkcs11js.RsaPSS = { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: hash.ckm, mgf: hash.mgf, saltLen: hash.bytes };
  return {
    mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter },
    input: request.digest,
    outputBytes: Math.ceil(key.bits / 8),
    verify: { keyId: key.keyId, spki: key.spki, scheme: 'rsa-pss', hash: request.hash },
  };
}

/** Room for the signature of the C_Sign that ends an operation left active: past any key's (RSA-16384: 2048 bytes). */
export const END_SIGN_BYTES = 4096;

/**
 * C_SignInit on `session`, first ending a sign operation an earlier failed C_Sign left active. A C_Sign answered
 * CKR_BUFFER_TOO_SMALL does not end its operation (PKCS#11 v2.40 §5.2, §5.11), and some tokens keep it on other
 * errors: the session then answered every later C_SignInit CKR_OPERATION_ACTIVE, and every sign on it failed until a
 * restart. Only then, not after every failure (a second call into a token whose link is down would be a second
 * timeout): one C_Sign with room for any signature (its answer, whatever it is, unused), and C_SignInit once more.
 * The threads do the same in their own source (sign-thread.ts).
 */
export function signInit(pkcs11: pkcs11js.PKCS11, session: pkcs11js.Handle, mechanism: pkcs11js.Mechanism, key: pkcs11js.Handle, input: Buffer): void {
  try {
    pkcs11.C_SignInit(session, mechanism, key);
  } catch (err) {
    if (!OPERATION_ACTIVE.test((err as Error).message)) throw err;
    try {
      pkcs11.C_Sign(session, input, Buffer.allocUnsafe(END_SIGN_BYTES));
    } catch {
      // Ended, whatever it answered.
    }
    pkcs11.C_SignInit(session, mechanism, key);
  }
}

/** How pkcs11js names the return value in its error's message. */
export const OPERATION_ACTIVE = /CKR_OPERATION_ACTIVE/;

/** Throws if the token's answer to `plan` is an RSA signature that does not verify (sign-verify.ts): it must not be used. */
export function checkSigned(plan: SignPlan, signature: Uint8Array): void {
  if (plan.verify === undefined) return;
  const refused = checkSignature(plan.verify, plan.input, signature);
  if (refused !== undefined) throw signatureRefused(refused);
}

/**
 * Signs on `session`, which the caller owns for the duration (management paths such as CSRs). An RSA signature is
 * checked as the key server's are: a CSR goes to a CA, which sees its signature as a TLS peer would.
 */
export async function signDigest(pkcs11: pkcs11js.PKCS11, session: pkcs11js.Handle, key: TokenKey, request: SignRequest): Promise<Buffer> {
  const plan = signPlan(key, request);
  signInit(pkcs11, session, plan.mechanism, key.privateHandle, plan.input);
  const signature = await pkcs11.C_SignAsync(session, plan.input, Buffer.allocUnsafe(plan.outputBytes));
  checkSigned(plan, signature);
  return signature;
}
