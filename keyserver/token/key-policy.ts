/**
 * What every key created in the token is (key-generate.ts, key-import.ts):
 * CKA_SENSITIVE and not CKA_EXTRACTABLE (PKCS#11 v2.40 §4.9), able only to
 * sign (no decrypt, unwrap or derive), and under a label no other key has.
 */
import pkcs11js from 'pkcs11js';
import { KeyError } from '../shared/errors.js';
import { listKeys } from './keys.js';
import type { Token } from './token.js';

/** Sign-only, non-extractable, sensitive: the policy of every private key we create. */
export function privateKeyPolicy(): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
  ];
}

/** A label is a short name of safe characters, and names one key in the token. */
export function assertLabelFree(token: Token, label: string): void {
  if (!/^[\w.@-]{1,64}$/.test(label)) {
    throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `label '${label}' must be 1-64 characters of letters, digits, '_', '-', '.', '@'`);
  }
  if (listKeys(token).some((key) => key.label === label)) {
    throw new KeyError('KEYEDGE_ERR_KEY_EXISTS', `a key labelled '${label}' is already in token '${token.label}'`);
  }
}
