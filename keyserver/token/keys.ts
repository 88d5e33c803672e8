/**
 * The keys inside the token, as the key server and `keyedge key` see them:
 * list, find (by label, key id or key-id prefix), delete. Generating and
 * importing are key-generate.ts's and key-import.ts's; what every key we
 * create is, key-policy.ts's.
 *
 * A key's CKA_ID is its key id: the SHA-256 of its SubjectPublicKeyInfo DER.
 * The key id, not the label, names a key on the wire, so a relabelled or
 * re-imported key keeps its identity and two tokens holding the same key
 * agree on it. Keys made by other tools are listed too; their key id is
 * computed from the public half whatever their CKA_ID says.
 *
 * An RSA key over RSA_MAX_BITS is not listed, as a key of a type we do not
 * sign with is not: its signatures are longer than the protocol's SIGNATURE
 * item carries (SPEC.md), and answering a sign with it failed to encode.
 *
 * Concurrency: these run on the token's management session, one call at a time.
 * Other processes (the key server, another `keyedge key`) may create and destroy
 * objects in the same token meanwhile: a listing skips a key destroyed while it
 * was being read rather than failing.
 */
import { createPublicKey, X509Certificate } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { MAX_SIGNATURE_BYTES } from '../protocol/constants.js';
import { KeyError, TokenError } from '../shared/errors.js';
import { keyIdOf } from '../shared/key-id.js';
import { type Curve, CURVES, readUlong, spkiFromJwk, unwrapOctetString } from './key-encoding.js';
import { type Token, tokenCall } from './token.js';

export type KeyKind = 'ec' | 'rsa';

/** The largest RSA key served: its signature, as long as its modulus, must fit the protocol's SIGNATURE item. */
export const RSA_MAX_BITS = MAX_SIGNATURE_BYTES * 8;

export interface TokenKey {
  /** SHA-256 of the SPKI DER, lowercase hex. */
  readonly keyId: string;
  readonly label: string;
  readonly kind: KeyKind;
  /** RSA modulus bits, or the curve's field size. */
  readonly bits: number;
  /** 'P-256' or 'P-384' for EC keys. */
  readonly curve: string | undefined;
  readonly spki: Buffer;
  readonly privateHandle: pkcs11js.Handle;
  readonly sensitive: boolean;
  readonly extractable: boolean;
}

export function describeKeyType(key: Pick<TokenKey, 'kind' | 'bits'>): string {
  return `${key.kind}-${key.kind === 'ec' ? `p${key.bits}` : key.bits}`;
}

/** The token's keys; `warn` hears of each key object skipped because it cannot be read (readKeyOrUndefined). */
export function listKeys(token: Token, warn?: (message: string) => void): TokenKey[] {
  // Token objects only: the key server's own session copies of these keys (session-keys.ts) are not more keys.
  return findObjects(token, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_TOKEN, value: true },
  ])
    .map((handle) => readKeyOrUndefined(token, handle, warn))
    .filter((key): key is TokenKey => key !== undefined);
}

/** A key by label, by full key id, or by a key-id prefix of at least 8 hex digits, as an operator types it. */
export function findKey(token: Token, labelOrId: string): TokenKey {
  const keys = listKeys(token);
  const needle = labelOrId.toLowerCase();
  const matches = keys.filter(
    (key) => key.label === labelOrId || key.keyId === needle || (needle.length >= 8 && /^[0-9a-f]+$/.test(needle) && key.keyId.startsWith(needle)),
  );
  if (matches.length === 1 && matches[0] !== undefined) return matches[0];
  if (matches.length > 1) {
    throw new KeyError('KEYEDGE_ERR_KEY_NOT_FOUND', `'${labelOrId}' names ${matches.length} keys; give the full key id`);
  }
  throw new KeyError('KEYEDGE_ERR_KEY_NOT_FOUND', `no key with label or key id '${labelOrId}' in token '${token.label}'`);
}

export function findKeyById(token: Token, keyId: string): TokenKey | undefined {
  return listKeys(token).find((key) => key.keyId === keyId);
}

/**
 * Destroys a key: its private object, then the objects sharing its CKA_ID that
 * are its own (a public key or certificate with its SPKI): what a renewal does
 * with the previous certificate's key once its grace period is over. Returns
 * the key as it was.
 *
 * Not every object with its CKA_ID: another tool's keys often share small ids
 * (pkcs11-tool --id 01), and destroying by CKA_ID alone destroyed every key
 * under it. Another key's private object, a public key or certificate of
 * another key, and objects whose key cannot be told (data, secret keys) are
 * left where they are.
 */
export function deleteKey(token: Token, labelOrId: string): TokenKey {
  const key = findKey(token, labelOrId);
  const id = tokenCall('C_GetAttributeValue', () => token.pkcs11.C_GetAttributeValue(token.management, key.privateHandle, [{ type: pkcs11js.CKA_ID }]))[0]
    ?.value as Buffer | undefined;
  const twins = id === undefined || id.length === 0 ? [] : findObjects(token, [{ type: pkcs11js.CKA_ID, value: id }]);
  // Handles are Buffers: the private key is among its twins, so they are told apart by value.
  const own = twins.filter((handle) => !Buffer.from(handle).equals(Buffer.from(key.privateHandle)) && holdsSpki(token, handle, key.spki));
  // The private object first: a process killed between the two leaves public material only.
  for (const handle of [key.privateHandle, ...own]) {
    tokenCall('C_DestroyObject', () => token.pkcs11.C_DestroyObject(token.management, handle));
  }
  return key;
}

/** Whether `handle` is a public key or certificate object for the key whose SPKI DER is `spki`; false when it cannot be told. */
function holdsSpki(token: Token, handle: pkcs11js.Handle, spki: Buffer): boolean {
  const { pkcs11, management } = token;
  try {
    const [klass] = pkcs11.C_GetAttributeValue(management, handle, [{ type: pkcs11js.CKA_CLASS }]).map((a) => a.value as Buffer);
    const objectClass = klass === undefined ? undefined : readUlong(klass);
    if (objectClass === pkcs11js.CKO_PUBLIC_KEY) return publicKeyFromObject(token, handle).equals(spki);
    if (objectClass === pkcs11js.CKO_CERTIFICATE) {
      const [der] = pkcs11.C_GetAttributeValue(management, handle, [{ type: pkcs11js.CKA_VALUE }]).map((a) => a.value as Buffer);
      return der !== undefined && new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' }).equals(spki);
    }
    return false;
  } catch {
    // Vanished, unreadable or not a certificate: not known to be this key's, so not destroyed with it.
    return false;
  }
}

function findObjects(token: Token, template: pkcs11js.Template): pkcs11js.Handle[] {
  const { pkcs11, management } = token;
  tokenCall('C_FindObjectsInit', () => pkcs11.C_FindObjectsInit(management, template));
  try {
    const handles: pkcs11js.Handle[] = [];
    for (;;) {
      const batch = tokenCall('C_FindObjects', () => pkcs11.C_FindObjects(management, 64));
      if (batch.length === 0) return handles;
      handles.push(...batch);
    }
  } finally {
    pkcs11.C_FindObjectsFinal(management);
  }
}

function readKeyOrUndefined(token: Token, handle: pkcs11js.Handle, warn: ((message: string) => void) | undefined): TokenKey | undefined {
  try {
    return readKey(token, handle);
  } catch (err) {
    // A key type we do not sign with (e.g. Ed25519 put there by another tool) is not ours to list.
    if (err instanceof KeyError && err.code === 'KEYEDGE_ERR_KEY_UNSUPPORTED') return undefined;
    // Destroyed between C_FindObjects and reading it, by another process on the
    // same token (`keyedge key delete`, a renewal retiring its old key): a key
    // that is gone is not listed, as it would not be a moment later.
    if (vanished(err)) return undefined;
    // A token call failing otherwise than on this one object's attributes (its session, the device, the login, a
    // general or vendor failure) is no one object's: the caller hears of it, and a key server's scan keeps the keys it
    // had (keystore.ts). Skipped as the object's, a transient CKR_GENERAL_ERROR took every key out of a rescan.
    if (err instanceof TokenError && !objectOwn(err)) throw err;
    // One object another tool stored in a form we cannot decode (a compressed EC point: spkiFromJwk's TypeError), or
    // one SoftHSM2 wrote cut short (a file-size limit): it stopped every listing, so `keyedge key` and the key server's
    // start, naming nothing. Skipped, and named by its label and CKA_ID; never its attributes' bytes.
    warn?.(`key object ${describeObject(token, handle)} skipped: it cannot be read as a key (${err instanceof Error ? err.message : String(err)})`);
    return undefined;
  }
}

/** CKRs that are one object's attributes' (PKCS#11 v2.40 §5.2, C_GetAttributeValue), not the token's. */
const OBJECT_OWN: ReadonlySet<unknown> = new Set([
  pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
  pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID,
  pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID,
  pkcs11js.CKR_BUFFER_TOO_SMALL,
]);

function objectOwn(err: TokenError): boolean {
  return OBJECT_OWN.has((err.cause as { code?: unknown } | undefined)?.code);
}

/** `'label' (CKA_ID hex)` of an object, as far as they can be read. */
function describeObject(token: Token, handle: pkcs11js.Handle): string {
  const read = (type: number): Buffer | undefined => {
    try {
      return token.pkcs11.C_GetAttributeValue(token.management, handle, [{ type }])[0]?.value as Buffer | undefined;
    } catch {
      return undefined;
    }
  };
  return `'${read(pkcs11js.CKA_LABEL)?.toString('utf8') ?? '?'}' (CKA_ID ${read(pkcs11js.CKA_ID)?.toString('hex') ?? '?'})`;
}

/**
 * CKR_OBJECT_HANDLE_INVALID on a handle C_FindObjects just returned: the
 * object was destroyed since (PKCS#11 v2.40 §5.7; SoftHSM2's file store shows
 * every process the others' deletions).
 */
function vanished(err: unknown): boolean {
  const cause = err instanceof TokenError ? err.cause : undefined;
  return (cause as { code?: unknown } | undefined)?.code === pkcs11js.CKR_OBJECT_HANDLE_INVALID;
}

/** The key whose private object is `privateHandle`, as listed. */
export function readKey(token: Token, privateHandle: pkcs11js.Handle): TokenKey {
  const { pkcs11, management } = token;
  const attrs = tokenCall('C_GetAttributeValue', () =>
    pkcs11.C_GetAttributeValue(management, privateHandle, [
      { type: pkcs11js.CKA_KEY_TYPE },
      { type: pkcs11js.CKA_LABEL },
      { type: pkcs11js.CKA_ID },
      { type: pkcs11js.CKA_SENSITIVE },
      { type: pkcs11js.CKA_EXTRACTABLE },
    ]),
  );
  const [keyType, label, id, sensitive, extractable] = attrs.map((a) => a.value as Buffer);
  const type = keyType === undefined ? undefined : readUlong(keyType);
  const spki = publicKeyFor(token, privateHandle, type, id);
  const details = createPublicKey({ key: spki, format: 'der', type: 'spki' }).asymmetricKeyDetails;
  const curve = type === pkcs11js.CKK_EC ? (details?.namedCurve === 'prime256v1' ? 'P-256' : 'P-384') : undefined;
  if (type === pkcs11js.CKK_RSA && (details?.modulusLength ?? 0) > RSA_MAX_BITS) {
    throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `RSA-${details?.modulusLength} is over ${RSA_MAX_BITS} bits: its signatures do not fit the protocol`);
  }
  return {
    keyId: keyIdOf(spki),
    label: label?.toString('utf8') ?? '',
    kind: type === pkcs11js.CKK_EC ? 'ec' : 'rsa',
    bits: type === pkcs11js.CKK_EC ? CURVES[curve as Curve].bits : (details?.modulusLength ?? 0),
    curve,
    spki,
    privateHandle,
    sensitive: sensitive?.[0] === 1,
    extractable: extractable?.[0] === 1,
  };
}

/** The SPKI DER of a private key, from the private object (RSA) or its public twin (EC). */
function publicKeyFor(token: Token, privateHandle: pkcs11js.Handle, keyType: number | undefined, id: Buffer | undefined): Buffer {
  const { pkcs11, management } = token;
  if (keyType === pkcs11js.CKK_RSA) {
    // Modulus and public exponent are public attributes of an RSA private key (PKCS#11 v2.40 §2.1.3).
    const [n, e] = tokenCall('C_GetAttributeValue', () =>
      pkcs11.C_GetAttributeValue(management, privateHandle, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]),
    ).map((a) => a.value as Buffer);
    if (n === undefined || e === undefined) throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', 'RSA key without modulus');
    return spkiFromJwk({ kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') });
  }
  if (keyType === pkcs11js.CKK_EC) {
    const publicHandles = findObjects(token, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      { type: pkcs11js.CKA_ID, value: id ?? Buffer.alloc(0) },
    ]);
    if (publicHandles.length === 0) {
      throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `EC private key ${id?.toString('hex') ?? ''} has no public key object with the same CKA_ID`);
    }
    // Other tools' keys share small CKA_IDs (pkcs11-tool --id 01): the first public object found gave two keys one
    // public key, one listed under the other's key id. An EC private object holds no point (SoftHSM2), so the twin is
    // told by its curve and label; a key whose twin cannot be told is not listed rather than misdescribed.
    const publicHandle = publicHandles.length === 1 ? publicHandles[0] : ecTwin(token, privateHandle, publicHandles, id);
    return publicKeyFromObject(token, publicHandle as pkcs11js.Handle);
  }
  throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `key type ${keyType ?? '?'} is not EC or RSA`);
}

/** Among several EC public objects sharing a private key's CKA_ID, the one with its curve and label; refused unless exactly one. */
function ecTwin(token: Token, privateHandle: pkcs11js.Handle, candidates: pkcs11js.Handle[], id: Buffer | undefined): pkcs11js.Handle {
  const { pkcs11, management } = token;
  const template = [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_LABEL }];
  const read = (handle: pkcs11js.Handle): Buffer[] =>
    tokenCall('C_GetAttributeValue', () => pkcs11.C_GetAttributeValue(management, handle, template)).map(
      (a) => (a.value as Buffer | undefined) ?? Buffer.alloc(0),
    );
  const [params, label] = read(privateHandle);
  const matching = candidates.filter((handle) => {
    const [p, l] = read(handle);
    return p?.equals(params as Buffer) && l?.equals(label as Buffer);
  });
  if (matching.length !== 1 || matching[0] === undefined) {
    throw new KeyError(
      'KEYEDGE_ERR_KEY_UNSUPPORTED',
      `EC private key '${label?.toString('utf8') ?? ''}' (CKA_ID ${id?.toString('hex') ?? ''}): ${candidates.length} public key objects share its CKA_ID and ` +
        `${matching.length} of them its curve and label; which is its public key cannot be told`,
    );
  }
  return matching[0];
}

/** The SPKI DER of a public key object (RSA or EC). */
export function publicKeyFromObject(token: Token, handle: pkcs11js.Handle): Buffer {
  const { pkcs11, management } = token;
  const [keyType] = tokenCall('C_GetAttributeValue', () => pkcs11.C_GetAttributeValue(management, handle, [{ type: pkcs11js.CKA_KEY_TYPE }])).map(
    (a) => a.value as Buffer,
  );
  if (keyType !== undefined && readUlong(keyType) === pkcs11js.CKK_RSA) {
    const [n, e] = tokenCall('C_GetAttributeValue', () =>
      pkcs11.C_GetAttributeValue(management, handle, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]),
    ).map((a) => a.value as Buffer);
    return spkiFromJwk({ kty: 'RSA', n: n?.toString('base64url'), e: e?.toString('base64url') });
  }
  const [params, pointDer] = tokenCall('C_GetAttributeValue', () =>
    pkcs11.C_GetAttributeValue(management, handle, [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_EC_POINT }]),
  ).map((a) => a.value as Buffer);
  const curve = (Object.keys(CURVES) as Curve[]).find((name) => params !== undefined && CURVES[name].oid.equals(params));
  if (curve === undefined || pointDer === undefined) {
    throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', 'EC key on a curve other than P-256 or P-384');
  }
  const point = unwrapOctetString(pointDer);
  const size = CURVES[curve].bits / 8;
  return spkiFromJwk({
    kty: 'EC',
    crv: curve,
    x: point.subarray(1, 1 + size).toString('base64url'),
    y: point.subarray(1 + size).toString('base64url'),
  });
}
