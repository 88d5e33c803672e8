/**
 * Keys generated inside the token (C_GenerateKeyPair): the key types
 * `keyedge key generate` offers, each what the key server signs with. The
 * pair is created under a placeholder CKA_ID, then given its key id (the
 * SHA-256 of its SPKI DER), which is only known once the public half exists.
 * A failure after C_GenerateKeyPair destroys the pair: nothing is left, and
 * the same label can be used again.
 */
import pkcs11js from 'pkcs11js';
import { TokenError } from '../shared/errors.js';
import { keyIdOf } from '../shared/key-id.js';
import { type Curve, CURVES } from './key-encoding.js';
import { assertLabelFree, privateKeyPolicy } from './key-policy.js';
import { publicKeyFromObject, readKey, type TokenKey } from './keys.js';
import { ckrName, type Token, tokenCall } from './token.js';

export const KEY_TYPES = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'] as const;
export type KeyType = (typeof KEY_TYPES)[number];

export function generateKey(token: Token, type: KeyType, label: string): TokenKey {
  assertLabelFree(token, label);
  const session = token.management;
  const pkcs11 = token.pkcs11;
  const placeholderId = Buffer.from(`keyedge-pending-${Date.now()}`);
  const common = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: placeholderId },
  ];
  let pair: pkcs11js.KeyPair;
  if (type.startsWith('ec-')) {
    const curve: Curve = type === 'ec-p256' ? 'P-256' : 'P-384';
    pair = tokenCall('C_GenerateKeyPair', () =>
      pkcs11.C_GenerateKeyPair(
        session,
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
        [...common, { type: pkcs11js.CKA_EC_PARAMS, value: CURVES[curve].oid }, { type: pkcs11js.CKA_VERIFY, value: true }],
        [...common, ...privateKeyPolicy()],
      ),
    );
  } else {
    const bits = Number(type.slice('rsa-'.length));
    pair = tokenCall('C_GenerateKeyPair', () =>
      pkcs11.C_GenerateKeyPair(
        session,
        { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
        [
          ...common,
          { type: pkcs11js.CKA_MODULUS_BITS, value: bits },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
          { type: pkcs11js.CKA_VERIFY, value: true },
        ],
        [...common, ...privateKeyPolicy()],
      ),
    );
  }
  // A failure from here (giving the pair its key id: a full disk, the object's file cut short) destroys the pair, as
  // key-import.ts's createPair does: it was left under the placeholder id, its label taken (a retry refused), an EC
  // private key no listing showed and `keyedge key delete` could not name.
  try {
    const spki = publicKeyFromObject(token, pair.publicKey);
    const keyId = Buffer.from(keyIdOf(spki), 'hex');
    for (const handle of [pair.publicKey, pair.privateKey]) {
      tokenCall('C_SetAttributeValue', () => pkcs11.C_SetAttributeValue(session, handle, [{ type: pkcs11js.CKA_ID, value: keyId }]));
    }
    return readKey(token, pair.privateKey);
  } catch (err) {
    for (const handle of [pair.privateKey, pair.publicKey]) {
      try {
        pkcs11.C_DestroyObject(session, handle);
      } catch (undo) {
        // The first failure is the one to report; this one says what is left to clean up.
        throw new TokenError(
          'KEYEDGE_ERR_TOKEN_OPERATION',
          `${ckrName(err)}; undoing it failed too (${ckrName(undo)}): key objects labelled '${label}' remain in the token`,
          { cause: err },
        );
      }
    }
    throw err;
  }
}
