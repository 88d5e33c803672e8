/**
 * The check of an RSA signature before it leaves the key server (keyserver/token/sign-verify.ts), as a unit: what
 * the token was asked to sign (sign.ts `signPlan`) against signatures made here with node:crypto, good and bad.
 * Through the real key server and a token that gives back wrong signatures: keyserver-faulty-token.test.ts.
 */
import { constants, createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ALGORITHMS, type AlgorithmInfo } from '../keyserver/protocol/constants.js';
import { TokenError } from '../keyserver/shared/errors.js';
import { keyIdOf } from '../keyserver/shared/key-id.js';
import type { TokenKey } from '../keyserver/token/keys.js';
import { checkSigned, signPlan } from '../keyserver/token/sign.js';
import { checkSignature, isSignatureRefused } from '../keyserver/token/sign-verify.js';

interface TestKey {
  readonly privateKey: KeyObject;
  readonly token: TokenKey;
}

/** A TokenKey as keys.ts lists it, for `signPlan`: nothing here reaches a token. */
function rsaKey(bits: number): TestKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const token: TokenKey = {
    keyId: keyIdOf(spki),
    label: `rsa-${bits}`,
    kind: 'rsa',
    bits,
    curve: undefined,
    spki,
    privateHandle: Buffer.alloc(8),
    sensitive: true,
    extractable: false,
  };
  return { privateKey, token };
}

/** What a sound token gives back for `message`: node:crypto's signature, PSS with a salt as long as the hash. */
function signedBy(key: KeyObject, algorithm: AlgorithmInfo, message: Buffer): Buffer {
  if (algorithm.scheme === 'rsa-pkcs1') return sign(algorithm.hash, message, key);
  return sign(algorithm.hash, message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: algorithm.digestBytes });
}

/** The check as the key server makes it: `undefined` when the signature of `message` verifies, else the reason. */
function check(key: TestKey, algorithm: AlgorithmInfo, message: Buffer, signature: Buffer): string | undefined {
  const plan = signPlan(key.token, { scheme: algorithm.scheme, hash: algorithm.hash, digest: createHash(algorithm.hash).update(message).digest() });
  return checkSignature(plan.verify!, plan.input, signature);
}

const RSA_ALGORITHMS = ALGORITHMS.filter((a) => a.scheme !== 'ecdsa');

// 2049 bits: modBits − 1 is a multiple of 8, so a PSS encoded message is one byte shorter than the modulus (RFC 8017 §9.1.2, emLen).
describe.each([2048, 2049, 3072])('RSA-%i', (bits) => {
  const key = rsaKey(bits);
  const other = rsaKey(bits);

  it.each(RSA_ALGORITHMS.map((a) => [a.name, a] as const))(
    '%s: a good signature passes; altered, truncated, lengthened, for another message or by another key, refused',
    (_, algorithm) => {
      const message = randomBytes(64);
      const good = signedBy(key.privateKey, algorithm, message);
      expect(check(key, algorithm, message, good)).toBeUndefined();

      for (const bit of [0, 7, 8 * (good.length >> 1) + 3, 8 * good.length - 1]) {
        const flipped = Buffer.from(good);
        flipped[bit >> 3]! ^= 0x80 >> (bit & 7);
        // A flip in the top bits can make it ≥ n (range) rather than a wrong value (mismatch): refused either way.
        expect(check(key, algorithm, message, flipped), `bit ${bit} flipped`).toMatch(/^(mismatch|range)$/);
      }
      expect(check(key, algorithm, message, good.subarray(0, good.length - 1)), 'truncated').toBe('length');
      expect(check(key, algorithm, message, Buffer.concat([Buffer.alloc(1), good])), 'a zero byte in front').toBe('length');
      expect(check(key, algorithm, randomBytes(64), good), 'another message').toBe('mismatch');
      expect(check(key, algorithm, message, signedBy(other.privateKey, algorithm, message)), 'another key of the same size').toMatch(/^(mismatch|range)$/);
      expect(check(key, algorithm, message, Buffer.alloc(good.length, 0xff)), 'not below the modulus').toBe('range');
      expect(check(key, algorithm, message, Buffer.alloc(good.length)), 'zero').toBe('mismatch');
    },
  );
});

describe('a wrong RSA-CRT signature', () => {
  const modPow = (base: bigint, exponent: bigint, modulus: bigint): bigint => {
    let result = 1n;
    let b = base % modulus;
    for (let e = exponent; e > 0n; e >>= 1n) {
      if (e & 1n) result = (result * b) % modulus;
      b = (b * b) % modulus;
    }
    return result;
  };
  const big = (b64url: string): bigint => BigInt(`0x${Buffer.from(b64url, 'base64url').toString('hex')}`);
  const gcd = (a: bigint, b: bigint): bigint => (b === 0n ? a : gcd(b, a % b));

  it('one half computed wrong gives the modulus a factor to anyone with the signature (Lenstra), and is refused', () => {
    const key = rsaKey(2048);
    const jwk = key.privateKey.export({ format: 'jwk' });
    const [n, e, p, q, dp, dq, qi] = [jwk.n, jwk.e, jwk.p, jwk.q, jwk.dp, jwk.dq, jwk.qi].map((v) => big(v!)) as [
      bigint,
      bigint,
      bigint,
      bigint,
      bigint,
      bigint,
      bigint,
    ];
    const algorithm = RSA_ALGORITHMS.find((a) => a.name === 'RSA_PKCS1_SHA256')!;
    const message = randomBytes(64);
    const good = signedBy(key.privateKey, algorithm, message);
    const m = modPow(BigInt(`0x${good.toString('hex')}`), e, n);
    // Garner's recombination (RFC 8017 §5.1.2 step 2b) with s_q computed wrong, as a fault in the token would.
    const sp = modPow(m, dp, p);
    const sq = (modPow(m, dq, q) + 1n) % q;
    const s = sq + q * (((((sp - sq) * qi) % p) + p) % p);
    const faulty = Buffer.from(s.toString(16).padStart(512, '0'), 'hex');
    // What an observer does with it: the encoded message is known (PKCS#1 v1.5 is deterministic), and gcd finds p.
    expect(gcd((modPow(s, e, n) - m + n) % n, n)).toBe(p);
    expect(check(key, algorithm, message, faulty)).toBe('mismatch');
  });
});

describe('checkSigned', () => {
  it('throws KEYEDGE_ERR_TOKEN_SIGNATURE for an RSA signature that does not verify, naming the reason and no bytes', () => {
    const key = rsaKey(2048);
    const algorithm = RSA_ALGORITHMS.find((a) => a.name === 'RSA_PSS_SHA256')!;
    const message = randomBytes(32);
    const plan = signPlan(key.token, { scheme: 'rsa-pss', hash: 'sha256', digest: createHash('sha256').update(message).digest() });
    const good = signedBy(key.privateKey, algorithm, message);
    expect(() => checkSigned(plan, good)).not.toThrow();
    const bad = Buffer.from(good);
    bad[100]! ^= 1;
    let thrown: unknown;
    try {
      checkSigned(plan, bad);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(TokenError);
    expect(isSignatureRefused(thrown)).toBe(true);
    expect((thrown as TokenError).message).toMatch(/does not verify .*\(mismatch\); not sent/);
    for (const encoding of ['hex', 'base64'] as const) expect((thrown as TokenError).message).not.toContain(bad.subarray(0, 16).toString(encoding));
  });

  it('ECDSA is not checked (its verify costs more than its sign: bench/results/2026-12-07-sign-verify.md)', () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const token: TokenKey = { ...rsaKey(2048).token, kind: 'ec', bits: 256, curve: 'P-256', spki, keyId: keyIdOf(spki) };
    const plan = signPlan(token, { scheme: 'ecdsa', hash: 'sha256', digest: randomBytes(32) });
    expect(plan.verify).toBeUndefined();
    expect(() => checkSigned(plan, randomBytes(64))).not.toThrow();
  });
});
