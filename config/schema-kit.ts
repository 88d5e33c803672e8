/**
 * Building blocks shared by the daemons' config schemas (zod): strict objects
 * that name the keys they know, bounded integers, non-empty strings, key ids.
 * Each produces an error message saying what was expected, which
 * config/problems.ts prefixes with the file and key path.
 */
import { z } from 'zod';

export const KEY_ID = /^[0-9a-f]{64}$/;
export const SHA256_HEX = 'expected 64 lowercase hex characters (a SHA-256 digest)';
export const KEY_ID_EXPECTED = "expected a key id: 64 lowercase hex characters (SHA-256 of the key's SPKI DER)";
export const KEYS_EXPECTED = 'expected "*" or a non-empty array of key ids';
/**
 * An object that rejects unknown keys, naming the keys it does know: a typo
 * is the most common config mistake, and a silently ignored key is a setting
 * the operator believes is in force.
 */
export function strict<S extends z.core.$ZodLooseShape>(shape: S, what: string) {
  const known = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (iss) => (iss.code === 'unrecognized_keys' ? `unknown key; expected one of: ${known}` : `expected ${what}`),
  });
}

export function intIn(min: number, max: number) {
  const error = `expected an integer from ${min} to ${max}`;
  return z.int({ error }).min(min, { error }).max(max, { error });
}

export function text(what: string) {
  const error = `expected ${what} (a non-empty string)`;
  return z.string({ error }).min(1, { error });
}

export const port = intIn(0, 65_535);

export const keyId = z.string({ error: KEY_ID_EXPECTED }).regex(KEY_ID, { error: KEY_ID_EXPECTED });

export type Loose = Record<string, unknown>;
export const isObject = (v: unknown): v is Loose => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The entries of `o` whose value is not undefined, for laying over a defaults table. */
export function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
