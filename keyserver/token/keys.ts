/**
 * The keys inside the token: generate, import, list, find.
 *
 * Every private key we create is CKA_SENSITIVE and not CKA_EXTRACTABLE
 * (PKCS#11 v2.40 §4.9), may only sign (no decrypt, unwrap or derive), and its
 * CKA_ID is the key id: the SHA-256 of its SubjectPublicKeyInfo DER. The key
 * id, not the label, names a key on the wire, so a relabelled or re-imported
 * key keeps its identity and two tokens holding the same key agree on it.
 *
 * Keys made by other tools are listed too; their key id is computed from the
 * public half whatever their CKA_ID says.
 *
 * Concurrency: these run on the token's management session, one call at a time.
 * Other processes (the key server, another `keyedge key`) may create and destroy
 * objects in the same token meanwhile: a listing skips a key destroyed while it
 * was being read rather than failing.
 */
import { createPrivateKey, createPublicKey, type JsonWebKey } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeyError, TokenError } from '../shared/errors.js';
import { keyIdOf } from '../shared/key-id.js';
import { type Token, tokenCall } from './token.js';

export const KEY_TYPES = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'] as const;
export type KeyType = (typeof KEY_TYPES)[number];

export type KeyKind = 'ec' | 'rsa';

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

/** DER OIDs for CKA_EC_PARAMS (RFC 5480 §2.1.1.1). */
const CURVES = {
  'P-256': { oid: Buffer.from('06082a8648ce3d030107', 'hex'), bits: 256 },
  'P-384': { oid: Buffer.from('06052b81040022', 'hex'), bits: 384 },
} as const;
type Curve = keyof typeof CURVES;

const RSA_MIN_BITS = 2048;

export function describeKeyType(key: Pick<TokenKey, 'kind' | 'bits'>): string {
  return `${key.kind}-${key.kind === 'ec' ? `p${key.bits}` : key.bits}`;
}

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
  const spki = publicKeyFromObject(token, pair.publicKey);
  const keyId = Buffer.from(keyIdOf(spki), 'hex');
  for (const handle of [pair.publicKey, pair.privateKey]) {
    tokenCall('C_SetAttributeValue', () => pkcs11.C_SetAttributeValue(session, handle, [{ type: pkcs11js.CKA_ID, value: keyId }]));
  }
  return readKey(token, pair.privateKey);
}

/**
 * Stores a PEM private key (PKCS#8, PKCS#1 or SEC1, as CAs and consoles hand
 * them out) in the token as a non-extractable key, with its public half beside
 * it. The PEM is parsed by node:crypto; its components live only as long as
 * this call and are overwritten before returning.
 */
export function importKey(token: Token, pem: string | Buffer, label: string, source: string): TokenKey {
  assertLabelFree(token, label);
  let jwk: JsonWebKey;
  try {
    const key = createPrivateKey({ key: pem, format: 'pem' });
    jwk = key.export({ format: 'jwk' });
  } catch (err) {
    const reason = (err as { code?: string }).code ?? 'unreadable';
    throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `${source} is not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1): ${reason}`, { cause: err });
  }
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
    const session = token.management;
    tokenCall('C_CreateObject', () => token.pkcs11.C_CreateObject(session, publicTemplate));
    const handle = tokenCall('C_CreateObject', () => token.pkcs11.C_CreateObject(session, privateTemplate));
    return readKey(token, handle);
  } finally {
    for (const buf of components) buf.fill(0);
  }
}

export function listKeys(token: Token): TokenKey[] {
  // Token objects only: the key server's own session copies of these keys (session-keys.ts) are not more keys.
  return findObjects(token, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_TOKEN, value: true },
  ])
    .map((handle) => readKeyOrUndefined(token, handle))
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
 * Destroys a key (its private object and every object sharing its CKA_ID, the
 * public twin): what a renewal does with the previous certificate's key once
 * its grace period is over. Returns the key as it was.
 */
export function deleteKey(token: Token, labelOrId: string): TokenKey {
  const key = findKey(token, labelOrId);
  const id = tokenCall('C_GetAttributeValue', () => token.pkcs11.C_GetAttributeValue(token.management, key.privateHandle, [{ type: pkcs11js.CKA_ID }]))[0]
    ?.value as Buffer | undefined;
  const twins = id === undefined || id.length === 0 ? [] : findObjects(token, [{ type: pkcs11js.CKA_ID, value: id }]);
  // Handles are Buffers: the private key is among its twins, so they are told apart by value.
  const handles = new Map([key.privateHandle, ...twins].map((h) => [Buffer.from(h).toString('hex'), h]));
  for (const handle of handles.values()) {
    tokenCall('C_DestroyObject', () => token.pkcs11.C_DestroyObject(token.management, handle));
  }
  return key;
}

/** Sign-only, non-extractable, sensitive: the policy of every private key we create. */
function privateKeyPolicy(): pkcs11js.Template {
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

function assertLabelFree(token: Token, label: string): void {
  if (!/^[\w.@-]{1,64}$/.test(label)) {
    throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `label '${label}' must be 1-64 characters of letters, digits, '_', '-', '.', '@'`);
  }
  if (listKeys(token).some((key) => key.label === label)) {
    throw new KeyError('KEYEDGE_ERR_KEY_EXISTS', `a key labelled '${label}' is already in token '${token.label}'`);
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

function readKeyOrUndefined(token: Token, handle: pkcs11js.Handle): TokenKey | undefined {
  try {
    return readKey(token, handle);
  } catch (err) {
    // A key type we do not sign with (e.g. Ed25519 put there by another tool) is not ours to list.
    if (err instanceof KeyError && err.code === 'KEYEDGE_ERR_KEY_UNSUPPORTED') return undefined;
    // Destroyed between C_FindObjects and reading it, by another process on the
    // same token (`keyedge key delete`, a renewal retiring its old key): a key
    // that is gone is not listed, as it would not be a moment later.
    if (vanished(err)) return undefined;
    throw err;
  }
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

function readKey(token: Token, privateHandle: pkcs11js.Handle): TokenKey {
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
    const publicHandle = publicHandles[0];
    if (publicHandle === undefined) {
      throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `EC private key ${id?.toString('hex') ?? ''} has no public key object with the same CKA_ID`);
    }
    return publicKeyFromObject(token, publicHandle);
  }
  throw new KeyError('KEYEDGE_ERR_KEY_UNSUPPORTED', `key type ${keyType ?? '?'} is not EC or RSA`);
}

function publicKeyFromObject(token: Token, handle: pkcs11js.Handle): Buffer {
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

/** CKA_EC_POINT holds DER OCTET STRING(04 || x || y); some modules return the bare point. */
function unwrapOctetString(der: Buffer): Buffer {
  if (der[0] === 0x04 && der.length > 2) {
    const short = der[1]! < 0x80;
    const headerBytes = short ? 2 : 2 + (der[1]! & 0x7f);
    const length = short ? der[1]! : der.readUIntBE(2, der[1]! & 0x7f);
    if (headerBytes + length === der.length) return der.subarray(headerBytes);
  }
  return der;
}

function spkiFromJwk(jwk: JsonWebKey): Buffer {
  return createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
}

function publicJwk(jwk: JsonWebKey): JsonWebKey {
  return jwk.kty === 'EC' ? { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y } : { kty: jwk.kty, n: jwk.n, e: jwk.e };
}

/** A CK_ULONG attribute in the platform's byte order and width (8 bytes on LP64). */
function readUlong(value: Buffer): number {
  return value.length === 8 ? Number(value.readBigUInt64LE()) : value.readUInt32LE();
}

function modulusBits(modulus: Buffer): number {
  let i = 0;
  while (i < modulus.length && modulus[i] === 0) i++;
  const first = modulus[i] ?? 0;
  return (modulus.length - i - 1) * 8 + (32 - Math.clz32(first));
}
