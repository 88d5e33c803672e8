/**
 * Keys made elsewhere, stored in the token (C_CreateObject) as
 * non-extractable keys with their public halves beside them: PEM private
 * keys as CAs and consoles hand them out. Refused: encrypted PEM, key types
 * other than EC and RSA (Ed25519, X25519, RSA-PSS, DSA…), curves other than
 * P-256/P-384, RSA under 2048 bits or over RSA_MAX_BITS (keys.ts:
 * its signatures do not fit the protocol, so it would never be served), a key
 * the token holds already.
 */
import { createPrivateKey, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeyError, TokenError } from '../shared/errors.js';
import { keyIdOf } from '../shared/key-id.js';
import { CURVES, modulusBits, publicJwk } from './key-encoding.js';
import { assertLabelFree, privateKeyPolicy } from './key-policy.js';
import { findKeyById, RSA_MAX_BITS, readKey, type TokenKey } from './keys.js';
import { ckrName, type Token, tokenCall } from './token.js';

const RSA_MIN_BITS = 2048;

/**
 * Stores a PEM private key (PKCS#8, PKCS#1 or SEC1, as CAs and consoles hand
 * them out) in the token as a non-extractable key, with its public half beside
 * it. The PEM is parsed by node:crypto; its components live only as long as
 * this call and are overwritten before returning.
 */
export function importKey(token: Token, pem: string | Buffer, label: string, source: string): TokenKey {
  assertLabelFree(token, label);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    const reason = (err as { code?: string }).code ?? 'unreadable';
    throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `${source} is not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1): ${reason}`, { cause: err });
  }
  // By its type before its JWK: an Ed25519, Ed448 or X25519 key's public half failed below with a TypeError (no
  // `crv`), and RSA-PSS, DSA or a curve with no JWK name (brainpool) in the export, said as an unreadable PEM.
  const type = key.asymmetricKeyType;
  if (type !== 'ec' && type !== 'rsa') throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `${source}: ${type ?? 'unknown'} keys are not supported (EC or RSA)`);
  const namedCurve = key.asymmetricKeyDetails?.namedCurve;
  if (type === 'ec' && namedCurve !== 'prime256v1' && namedCurve !== 'secp384r1') {
    throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `${source}: curve ${namedCurve ?? 'unknown'} is not supported (P-256 or P-384)`);
  }
  const jwk: JsonWebKey = key.export({ format: 'jwk' });
  const components: Buffer[] = [];
  const b64 = (value: string | undefined, name: string): Buffer => {
    if (value === undefined) throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `${source}: the key has no ${name}`);
    const buf = Buffer.from(value, 'base64url');
    components.push(buf);
    return buf;
  };
  try {
    const spki = createPublicKey({ key: publicJwk(jwk), format: 'jwk' }).export({ type: 'spki', format: 'der' });
    const keyId = Buffer.from(keyIdOf(spki), 'hex');
    if (findKeyById(token, keyId.toString('hex')) !== undefined) {
      throw new KeyError('KEYEDGE_ERR_KEY_EXISTS', `${source}: this key is already in the token (key id ${keyId.toString('hex')})`);
    }
    const common = [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: keyId },
    ];
    let publicTemplate: pkcs11js.Template;
    let privateTemplate: pkcs11js.Template;
    if (jwk.kty === 'EC') {
      const curve = jwk.crv as string;
      if (curve !== 'P-256' && curve !== 'P-384') {
        throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `${source}: curve ${curve} is not supported (P-256 or P-384)`);
      }
      const params = { type: pkcs11js.CKA_EC_PARAMS, value: CURVES[curve].oid };
      const point = Buffer.concat([Buffer.from([0x04]), b64(jwk.x, 'x'), b64(jwk.y, 'y')]);
      publicTemplate = [
        ...common,
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_VERIFY, value: true },
        params,
        // CKA_EC_POINT is the DER encoding of an OCTET STRING (PKCS#11 v2.40 §2.3.3).
        { type: pkcs11js.CKA_EC_POINT, value: Buffer.concat([Buffer.from([0x04, point.length]), point]) },
      ];
      privateTemplate = [
        ...common,
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        ...privateKeyPolicy(),
        params,
        { type: pkcs11js.CKA_VALUE, value: b64(jwk.d, 'd') },
      ];
    } else if (jwk.kty === 'RSA') {
      const modulus = b64(jwk.n, 'n');
      const bits = modulusBits(modulus);
      if (bits < RSA_MIN_BITS) {
        throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `${source}: RSA-${bits} is too weak (at least ${RSA_MIN_BITS} bits)`);
      }
      if (bits > RSA_MAX_BITS) {
        throw new KeyError(
          'KEYEDGE_ERR_KEY_UNSUPPORTED',
          `${source}: RSA-${bits} is too large (at most ${RSA_MAX_BITS} bits: its signatures must fit the key-server protocol)`,
        );
      }
      const rsaPublic = [
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_MODULUS, value: modulus },
        { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: b64(jwk.e, 'e') },
      ];
      publicTemplate = [...common, { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, ...rsaPublic, { type: pkcs11js.CKA_VERIFY, value: true }];
      privateTemplate = [
        ...common,
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        ...rsaPublic,
        ...privateKeyPolicy(),
        { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: b64(jwk.d, 'd') },
        { type: pkcs11js.CKA_PRIME_1, value: b64(jwk.p, 'p') },
        { type: pkcs11js.CKA_PRIME_2, value: b64(jwk.q, 'q') },
        { type: pkcs11js.CKA_EXPONENT_1, value: b64(jwk.dp, 'dp') },
        { type: pkcs11js.CKA_EXPONENT_2, value: b64(jwk.dq, 'dq') },
        { type: pkcs11js.CKA_COEFFICIENT, value: b64(jwk.qi, 'qi') },
      ];
    } else {
      throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `${source}: ${jwk.kty ?? 'unknown'} keys are not supported (EC or RSA)`);
    }
    return createPair(token, keyId, publicTemplate, privateTemplate);
  } finally {
    for (const buf of components) buf.fill(0);
  }
}

/**
 * The public object, then the private one, as one step: a failure after the public object (the private object's
 * file cut short by a full disk or a file-size limit: CKR_GENERAL_ERROR) destroys what was made. The public object
 * was left behind, unlisted (a key is listed by its private object) and under the key id a retry then used for a
 * second public twin. Public first: a process killed between the two leaves public material only, where the other
 * order left an EC private key that no listing shows and `keyedge key delete` cannot name.
 */
function createPair(token: Token, keyId: Buffer, publicTemplate: pkcs11js.Template, privateTemplate: pkcs11js.Template): TokenKey {
  const { pkcs11, management } = token;
  const created: pkcs11js.Handle[] = [];
  try {
    created.push(tokenCall('C_CreateObject', () => pkcs11.C_CreateObject(management, publicTemplate)));
    const privateHandle = tokenCall('C_CreateObject', () => pkcs11.C_CreateObject(management, privateTemplate));
    created.push(privateHandle);
    return readKey(token, privateHandle);
  } catch (err) {
    for (const handle of created.reverse()) {
      try {
        pkcs11.C_DestroyObject(management, handle);
      } catch (undo) {
        // The first failure is the one to report; this one says what is left to clean up.
        throw new TokenError(
          'KEYEDGE_ERR_TOKEN_OPERATION',
          `${ckrName(err)}; undoing it failed too (${ckrName(undo)}): objects with CKA_ID ${keyId.toString('hex')} remain in the token`,
          { cause: err },
        );
      }
    }
    throw err;
  }
}
