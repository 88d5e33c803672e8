/**
 * Numbers of the key-server wire protocol (keyserver/protocol/SPEC.md).
 *
 * These values are on the wire: changing one breaks every deployed peer, so
 * new values are only ever added. Lookups indexed by a wire byte use flat
 * 256-entry arrays because they run once per item on the signing hot path.
 */

export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 12;
/** Large enough for the biggest valid body (a 4096-byte PUBLIC_KEY) plus room for future optional items. */
export const DEFAULT_MAX_BODY_BYTES = 16384;
/** Body length is a uint32 field; no configured maximum may exceed it. */
export const MAX_BODY_LENGTH_FIELD = 0xffff_ffff;
export const ITEM_HEADER_BYTES = 3;

/** Requests have the high bit clear; a success response is `0x80 | request opcode` so either side can pair them without a table. */
export const Opcode = {
  PING: 0x01,
  GET_PUBLIC_KEY: 0x02,
  SIGN: 0x03,
  PONG: 0x81,
  PUBLIC_KEY: 0x82,
  SIGNATURE: 0x83,
  ERROR: 0xff,
} as const;
export type OpcodeName = keyof typeof Opcode;
export type OpcodeByte = (typeof Opcode)[OpcodeName];

/** The high bit marks a tag as optional: a receiver that does not know it skips it (SPEC.md, "Items"). */
export const Tag = {
  KEY_ID: 0x01,
  ALGORITHM: 0x02,
  DIGEST: 0x03,
  PAYLOAD: 0x04,
  SIGNATURE: 0x05,
  PUBLIC_KEY: 0x06,
  ERROR_CODE: 0x07,
  ERROR_DETAIL: 0x80,
} as const;
export type TagName = keyof typeof Tag;
export type TagByte = (typeof Tag)[TagName];
export const OPTIONAL_TAG_BIT = 0x80;

/** Item value sizes in bytes; SPEC.md explains each bound. */
export const KEY_ID_BYTES = 32;
export const MAX_PAYLOAD_BYTES = 1024;
export const MAX_SIGNATURE_BYTES = 1024;
export const MAX_PUBLIC_KEY_BYTES = 4096;
export const MAX_ERROR_DETAIL_BYTES = 512;

/**
 * The low nibble picks the hash, the high nibble the scheme, so a new hash or
 * scheme slots in without renumbering.
 */
export const Algorithm = {
  ECDSA_SHA256: 0x01,
  ECDSA_SHA384: 0x02,
  ECDSA_SHA512: 0x03,
  RSA_PKCS1_SHA256: 0x11,
  RSA_PKCS1_SHA384: 0x12,
  RSA_PKCS1_SHA512: 0x13,
  RSA_PSS_SHA256: 0x21,
  RSA_PSS_SHA384: 0x22,
  RSA_PSS_SHA512: 0x23,
} as const;
export type AlgorithmName = keyof typeof Algorithm;
export type AlgorithmByte = (typeof Algorithm)[AlgorithmName];

/**
 * ecdsa: DER ECDSA-Sig-Value (RFC 3279 §2.2.3, RFC 5480 §2.1.1).
 * rsa-pkcs1: RSASSA-PKCS1-v1_5, the server wraps the digest in DigestInfo (RFC 8017 §9.2).
 * rsa-pss: RSASSA-PSS, MGF1 with the same hash, salt length = hash length (RFC 8017 §9.1; RFC 8446 §4.2.3).
 */
export type SignatureScheme = 'ecdsa' | 'rsa-pkcs1' | 'rsa-pss';
export type HashName = 'sha256' | 'sha384' | 'sha512';

export interface AlgorithmInfo {
  readonly byte: AlgorithmByte;
  readonly name: AlgorithmName;
  readonly scheme: SignatureScheme;
  readonly hash: HashName;
  readonly digestBytes: 32 | 48 | 64;
}

function entry(name: AlgorithmName, scheme: SignatureScheme, hash: HashName): AlgorithmInfo {
  const digestBytes = hash === 'sha256' ? 32 : hash === 'sha384' ? 48 : 64;
  return Object.freeze({ byte: Algorithm[name], name, scheme, hash, digestBytes });
}

export const ALGORITHMS: readonly AlgorithmInfo[] = Object.freeze([
  entry('ECDSA_SHA256', 'ecdsa', 'sha256'),
  entry('ECDSA_SHA384', 'ecdsa', 'sha384'),
  entry('ECDSA_SHA512', 'ecdsa', 'sha512'),
  entry('RSA_PKCS1_SHA256', 'rsa-pkcs1', 'sha256'),
  entry('RSA_PKCS1_SHA384', 'rsa-pkcs1', 'sha384'),
  entry('RSA_PKCS1_SHA512', 'rsa-pkcs1', 'sha512'),
  entry('RSA_PSS_SHA256', 'rsa-pss', 'sha256'),
  entry('RSA_PSS_SHA384', 'rsa-pss', 'sha384'),
  entry('RSA_PSS_SHA512', 'rsa-pss', 'sha512'),
]);

const ALGORITHM_BY_BYTE: (AlgorithmInfo | undefined)[] = new Array<AlgorithmInfo | undefined>(256).fill(undefined);
for (const info of ALGORITHMS) ALGORITHM_BY_BYTE[info.byte] = info;

/** `undefined` for any byte the protocol does not define, including non-integers and out-of-range numbers. */
export function algorithmInfo(byte: number): AlgorithmInfo | undefined {
  return ALGORITHM_BY_BYTE[byte];
}

export const ErrorCode = {
  MALFORMED_FRAME: 1,
  UNSUPPORTED_VERSION: 2,
  UNKNOWN_OP: 3,
  FRAME_TOO_LARGE: 4,
  UNKNOWN_KEY: 5,
  ALGORITHM_MISMATCH: 6,
  UNKNOWN_ALGORITHM: 7,
  BAD_DIGEST_LENGTH: 8,
  NOT_AUTHORISED: 9,
  SIGN_FAILED: 10,
  OVERLOADED: 11,
  DEADLINE_EXCEEDED: 12,
  SHUTTING_DOWN: 13,
  INTERNAL: 14,
} as const;
export type ErrorCodeName = keyof typeof ErrorCode;
export type ErrorCodeValue = (typeof ErrorCode)[ErrorCodeName];

const ERROR_NAMES: string[] = [];
for (const [name, code] of Object.entries(ErrorCode)) ERROR_NAMES[code] = name;

/** Codes from a newer peer still get a printable, stable name, so logs never say "undefined". */
export function errorCodeName(code: number): string {
  return ERROR_NAMES[code] ?? `UNKNOWN_ERROR_${code}`;
}

const OPCODE_NAMES: string[] = [];
for (const [name, byte] of Object.entries(Opcode)) OPCODE_NAMES[byte] = name;

export function opcodeName(byte: number): string {
  return OPCODE_NAMES[byte] ?? `UNKNOWN_OP_0x${hex2(byte)}`;
}

const TAG_NAMES: string[] = [];
for (const [name, byte] of Object.entries(Tag)) TAG_NAMES[byte] = name;

/** For messages: `KEY_ID (tag 0x01)`, or just `tag 0x9a` when the tag is not defined. */
export function describeTag(byte: number): string {
  const name = TAG_NAMES[byte];
  return name === undefined ? `tag 0x${hex2(byte)}` : `${name} (tag 0x${hex2(byte)})`;
}

export function hex2(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}
