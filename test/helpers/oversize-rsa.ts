/**
 * An RSA key of more than 8192 bits, whose signatures (over 1024 bytes) do not
 * fit the key-server protocol (SPEC.md, SIGNATURE), made in a fraction of a
 * second: its modulus is the product of 17 primes of 520 bits (8.8 kbit),
 * where two primes of 4.4 kbit take tens of seconds to find.
 *
 * `jwk` carries the first two primes as p and q, so node:crypto reads it (and
 * exports it as PEM, for an import); they are not the modulus's factors, so
 * nothing should sign with them. `privateTemplate` gives a token the modulus,
 * the exponents and nothing else: it signs with the private exponent.
 *
 * `largeRsaPem` is the other side of the limit: an RSA key of about 8000 bits (16 primes of
 * 500 bits, a second to make) whose PEM carries CRT values as long as a
 * two-prime key's (p and q each the product of half the primes), so its
 * private object in a token is as large as an RSA-8192 one's (over 4 KiB).
 */
import { createPrivateKey, generatePrimeSync, type JsonWebKey } from 'node:crypto';
import pkcs11js from 'pkcs11js';

const E = 65537n;

function modInverse(a: bigint, m: bigint): bigint {
  let [r0, r1, s0, s1] = [((a % m) + m) % m, m, 1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  if (r0 !== 1n) throw new RangeError('no inverse');
  return ((s0 % m) + m) % m;
}

function bytes(value: bigint): Buffer {
  const hex = value.toString(16);
  return Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex');
}

export interface OversizeRsa {
  readonly bits: number;
  readonly jwk: JsonWebKey;
  /** CKA_ attributes of a private key object with this modulus and exponents (add class, label, id, policy). */
  readonly privateTemplate: pkcs11js.Template;
}

function distinctPrimes(count: number, bits: number): bigint[] {
  const primes: bigint[] = [];
  while (primes.length < count) {
    const prime = generatePrimeSync(bits, { bigint: true });
    if ((prime - 1n) % E !== 0n && !primes.includes(prime)) primes.push(prime);
  }
  return primes;
}

export function oversizeRsa(): OversizeRsa {
  const primes = distinctPrimes(17, 520);
  const n = primes.reduce((product, prime) => product * prime, 1n);
  const d = modInverse(
    E,
    primes.reduce((phi, prime) => phi * (prime - 1n), 1n),
  );
  const [p, q] = primes as [bigint, bigint];
  const b64 = (value: bigint): string => bytes(value).toString('base64url');
  return {
    bits: n.toString(2).length,
    jwk: { kty: 'RSA', n: b64(n), e: b64(E), d: b64(d), p: b64(p), q: b64(q), dp: b64(d % (p - 1n)), dq: b64(d % (q - 1n)), qi: b64(modInverse(q, p)) },
    privateTemplate: [
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      { type: pkcs11js.CKA_MODULUS, value: bytes(n) },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: bytes(E) },
      { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: bytes(d) },
    ],
  };
}

/** An RSA key of about 8000 bits, under the protocol's limit, as a PKCS#8 PEM; see the file's header. */
export function largeRsaPem(): string {
  const primes = distinctPrimes(16, 500);
  const product = (values: bigint[]): bigint => values.reduce((acc, value) => acc * value, 1n);
  const totient = (values: bigint[]): bigint => values.reduce((acc, value) => acc * (value - 1n), 1n);
  const [low, high] = [primes.slice(0, 8), primes.slice(8)];
  const [p, q] = [product(low), product(high)];
  const d = modInverse(E, totient(primes));
  const b64 = (value: bigint): string => bytes(value).toString('base64url');
  const jwk = {
    kty: 'RSA',
    n: b64(p * q),
    e: b64(E),
    d: b64(d),
    p: b64(p),
    q: b64(q),
    dp: b64(d % totient(low)),
    dq: b64(d % totient(high)),
    qi: b64(modInverse(q, p)),
  };
  return createPrivateKey({ key: jwk, format: 'jwk' }).export({ type: 'pkcs8', format: 'pem' }).toString();
}
