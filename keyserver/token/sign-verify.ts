/**
 * Checking an RSA signature the token gave back against the key's public key, before it leaves the process.
 *
 * Why: an RSA-CRT signature computed wrong in one half (a hardware fault, a firmware bug) gives away the key to anyone
 * who sees it and knows the message: gcd(s^e − EM, n) is a prime factor of the modulus (Boneh, DeMillo, Lipton 1997;
 * Lenstra's note), for PKCS#1 v1.5 and for PSS once the encoded message is recovered. Every TLS peer sees every
 * handshake signature, so one bad signature sent is the key lost. OpenSSL checks its own CRT results for the same
 * reason; a token or an HSM is not trusted to. Verifying costs the public exponent's few multiplications (tens of µs,
 * bench/results/2026-12-07-sign-verify.md) against a sign's private exponentiation.
 *
 * ECDSA is not checked: its verify costs more than its sign (2.1 × on P-256 with node:crypto), no single wrong
 * ECDSA signature gives the key when nonces are random, and the commonest ECDSA leaks (biased or repeated nonces)
 * come from signatures that verify anyway; the faults a check would catch are an accepted risk (same file).
 *
 * What is checked is what a peer checks, exactly: RSAVP1 then the encoding, with the public key from the key's SPKI
 * (keys.ts: its modulus and public exponent), for PKCS#1 v1.5 the whole EM compared with the one built from the
 * DigestInfo the token was given (RFC 8017 §8.2.2, §9.2), for PSS EMSA-PSS-VERIFY with MGF1 and a salt as long as
 * the hash (RFC 8017 §8.1.2, §9.1.2; RFC 8446 §4.2.3). node:crypto verifies PSS only over the message, which the
 * key server never sees (it gets the digest), hence EMSA-PSS-VERIFY written out below.
 *
 * The same code runs on the signing threads (sign-thread.ts, inside its worker source) and on the event loop (inline
 * signs, CSRs): it is CommonJS source, as the threads' program is, made into a function here once.
 *
 * Contract: `checkSignature(verify, input, signature)` returns undefined when the signature verifies, else a short
 * reason (`length`, `range`, `mismatch`), never bytes of the signature or the key. `input` is what the token was
 * asked to sign (sign.ts `SignPlan.input`: the DigestInfo for PKCS#1 v1.5, the digest for PSS). Public keys are
 * kept per key id, at most MAX_KEYS (the table is emptied past that).
 */
import crypto from 'node:crypto';
import { runInThisContext } from 'node:vm';
import type { HashName } from '../protocol/constants.js';
import { TokenError } from '../shared/errors.js';

/** What a signature is checked against: the key (its id names the cached public key) and the scheme. */
export interface VerifySpec {
  readonly keyId: string;
  /** SubjectPublicKeyInfo DER; a Uint8Array once it has crossed to a thread. */
  readonly spki: Uint8Array;
  readonly scheme: 'rsa-pkcs1' | 'rsa-pss';
  readonly hash: HashName;
}

/** Why a signature was refused: its length is not the modulus's, it is not below the modulus, or it does not match. */
export type RefusalReason = 'length' | 'range' | 'mismatch';

export type SignatureCheck = (verify: VerifySpec, input: Uint8Array, signature: Uint8Array) => RefusalReason | undefined;

/** Public keys kept per key id: far more than a token holds, a bound for a token re-created again and again. */
const MAX_KEYS = 4096;

/**
 * `(crypto) => checkSignature`, as CommonJS source for the threads; the event loop's copy is made from it below.
 * Plain JavaScript: it is evaluated as it is written.
 */
export const CHECK_SOURCE = `(crypto) => {
  const keys = new Map();
  const HASH_BYTES = { sha256: 32, sha384: 48, sha512: 64 };
  const publicKey = (verify) => {
    let entry = keys.get(verify.keyId);
    if (entry === undefined) {
      if (keys.size >= ${MAX_KEYS}) keys.clear();
      const object = crypto.createPublicKey({ key: Buffer.from(verify.spki), format: 'der', type: 'spki' });
      entry = { object, bits: object.asymmetricKeyDetails.modulusLength };
      keys.set(verify.keyId, entry);
    }
    return entry;
  };
  // MGF1, RFC 8017 §B.2.1.
  const mgf1 = (hash, seed, length) => {
    const mask = Buffer.alloc(length);
    const counter = Buffer.alloc(4);
    for (let i = 0, offset = 0; offset < length; i++) {
      counter.writeUInt32BE(i);
      offset += crypto.createHash(hash).update(seed).update(counter).digest().copy(mask, offset);
    }
    return mask;
  };
  return (verify, input, signature) => {
    const { object, bits } = publicKey(verify);
    const k = Math.ceil(bits / 8);
    // RFC 8017 §8.1.2 and §8.2.2 step 1: as long as the modulus. RSAVP1 would take a shorter one as a smaller number.
    if (signature.length !== k) return 'length';
    let em;
    try {
      // RSAVP1 (RFC 8017 §5.2.2): s^e mod n; OpenSSL refuses s ≥ n, "signature representative out of range".
      em = crypto.publicDecrypt({ key: object, padding: crypto.constants.RSA_NO_PADDING }, signature);
    } catch {
      return 'range';
    }
    const data = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    if (verify.scheme === 'rsa-pkcs1') {
      // EMSA-PKCS1-v1_5 (RFC 8017 §9.2): 0x00 0x01 0xff… 0x00 T, T the DigestInfo; compared whole (§8.2.2 step 4).
      if (k < data.length + 11) return 'mismatch';
      const expected = Buffer.alloc(k, 0xff);
      expected[0] = 0;
      expected[1] = 1;
      expected[k - data.length - 1] = 0;
      data.copy(expected, k - data.length);
      return em.equals(expected) ? undefined : 'mismatch';
    }
    // EMSA-PSS-VERIFY (RFC 8017 §9.1.2), emBits = modBits − 1, sLen = hLen.
    const hLen = HASH_BYTES[verify.hash];
    const emBits = bits - 1;
    const emLen = Math.ceil(emBits / 8);
    // I2OSP(m, emLen) (§8.1.2 step 2c): the k-byte result has k − emLen leading zero bytes.
    for (let i = 0; i < k - emLen; i++) if (em[i] !== 0) return 'mismatch';
    const encoded = em.subarray(k - emLen);
    // Steps 2-4: mHash's length, room for hash and salt, the trailer 0xbc.
    if (data.length !== hLen || emLen < 2 * hLen + 2 || encoded[emLen - 1] !== 0xbc) return 'mismatch';
    const maskedDb = encoded.subarray(0, emLen - hLen - 1);
    const h = encoded.subarray(emLen - hLen - 1, emLen - 1);
    // Step 6: the leftmost 8·emLen − emBits bits are zero.
    const keep = 0xff >> (8 * emLen - emBits);
    if ((maskedDb[0] & ~keep & 0xff) !== 0) return 'mismatch';
    // Steps 7-9.
    const db = mgf1(verify.hash, h, maskedDb.length);
    for (let i = 0; i < db.length; i++) db[i] ^= maskedDb[i];
    db[0] &= keep;
    // Step 10: PS of zeros, then 0x01.
    const ps = emLen - 2 * hLen - 2;
    for (let i = 0; i < ps; i++) if (db[i] !== 0) return 'mismatch';
    if (db[ps] !== 1) return 'mismatch';
    // Steps 11-14: H' = Hash(0x00 × 8 || mHash || salt) = H.
    const salt = db.subarray(db.length - hLen);
    const expected = crypto.createHash(verify.hash).update(Buffer.alloc(8)).update(data).update(salt).digest();
    return expected.equals(h) ? undefined : 'mismatch';
  };
}`;

/** The event loop's copy of the check (inline signs, CSRs), from the same source as the threads'. */
export const checkSignature: SignatureCheck = (runInThisContext(CHECK_SOURCE, { filename: 'keyedge-sign-verify.cjs' }) as (c: typeof crypto) => SignatureCheck)(
  crypto,
);

/** The error of a sign whose signature did not verify: the token gave back wrong bytes, which are not sent. */
export function signatureRefused(reason: RefusalReason | string): TokenError {
  return new TokenError(
    'KEYEDGE_ERR_TOKEN_SIGNATURE',
    `the token gave back an RSA signature that does not verify with the key's public key (${reason}); not sent`,
  );
}

/** Whether a sign's error says its signature did not verify (as opposed to the token refusing or failing the call). */
export function isSignatureRefused(err: unknown): boolean {
  return err instanceof TokenError && err.code === 'KEYEDGE_ERR_TOKEN_SIGNATURE';
}
