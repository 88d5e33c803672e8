/**
 * Frames to messages (keyserver/protocol/SPEC.md): the fixed header, the
 * item rules of each operation, and the checks in the order SPEC.md's
 * "Validation order" lists, so a frame with several faults always gets the
 * same answer. Pure and allocation-light: runs once per TLS handshake, and
 * every Buffer it returns is a subarray of the frame (codec.ts).
 */
import { ProtocolError } from '../shared/errors.js';
import {
  algorithmInfo,
  DEFAULT_MAX_BODY_BYTES,
  describeTag,
  ErrorCode,
  HEADER_BYTES,
  hex2,
  ITEM_HEADER_BYTES,
  KEY_ID_BYTES,
  MAX_ERROR_DETAIL_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_PUBLIC_KEY_BYTES,
  MAX_SIGNATURE_BYTES,
  Opcode,
  OPTIONAL_TAG_BIT,
  PROTOCOL_VERSION,
  Tag,
} from './constants.js';
import { digestMismatch, type FrameHeader, type Request, type Response } from './messages.js';

const MALFORMED = ErrorCode.MALFORMED_FRAME;
const EMPTY = Buffer.alloc(0);

// ---------------------------------------------------------------------------
// Item rules. Each known tag gets a small slot number so "which items are
// allowed / required / present" is a bitmask and item positions live in two
// fixed arrays, with no Map or object per decode.

const S_KEY_ID = 1;
const S_ALGORITHM = 2;
const S_DIGEST = 3;
const S_PAYLOAD = 4;
const S_SIGNATURE = 5;
const S_PUBLIC_KEY = 6;
const S_ERROR_CODE = 7;
const S_ERROR_DETAIL = 8;
const SLOT_COUNT = 9;

const TAG_SLOT = new Uint8Array(256);
const SLOT_TAG = new Uint8Array(SLOT_COUNT);
for (const [tag, slot] of [
  [Tag.KEY_ID, S_KEY_ID],
  [Tag.ALGORITHM, S_ALGORITHM],
  [Tag.DIGEST, S_DIGEST],
  [Tag.PAYLOAD, S_PAYLOAD],
  [Tag.SIGNATURE, S_SIGNATURE],
  [Tag.PUBLIC_KEY, S_PUBLIC_KEY],
  [Tag.ERROR_CODE, S_ERROR_CODE],
  [Tag.ERROR_DETAIL, S_ERROR_DETAIL],
] as const) {
  TAG_SLOT[tag] = slot;
  SLOT_TAG[slot] = tag;
}

interface OpRule {
  readonly name: string;
  readonly allowed: number;
  readonly required: number;
}

function rule(name: string, required: number[], optional: number[]): OpRule {
  const mask = (slots: number[]) => slots.reduce((m, s) => m | (1 << s), 0);
  return { name, required: mask(required), allowed: mask(required) | mask(optional) };
}

const REQUEST_RULES: (OpRule | undefined)[] = new Array<OpRule | undefined>(256).fill(undefined);
REQUEST_RULES[Opcode.PING] = rule('PING', [], [S_PAYLOAD]);
REQUEST_RULES[Opcode.GET_PUBLIC_KEY] = rule('GET_PUBLIC_KEY', [S_KEY_ID], []);
REQUEST_RULES[Opcode.SIGN] = rule('SIGN', [S_KEY_ID, S_ALGORITHM, S_DIGEST], []);

const RESPONSE_RULES: (OpRule | undefined)[] = new Array<OpRule | undefined>(256).fill(undefined);
RESPONSE_RULES[Opcode.PONG] = rule('PONG', [], [S_PAYLOAD]);
RESPONSE_RULES[Opcode.PUBLIC_KEY] = rule('PUBLIC_KEY', [S_PUBLIC_KEY], []);
RESPONSE_RULES[Opcode.SIGNATURE] = rule('SIGNATURE', [S_SIGNATURE], []);
RESPONSE_RULES[Opcode.ERROR] = rule('ERROR', [S_ERROR_CODE], [S_ERROR_DETAIL]);

// Scratch for the decoder. Safe as module state because decoding is
// synchronous and calls no user code, so two decodes never interleave.
const itemStart = new Int32Array(SLOT_COUNT);
const itemEnd = new Int32Array(SLOT_COUNT);
/** One bit per tag value, to catch a repeated unknown optional tag. */
const seenTags = new Uint32Array(8);

/** Reads the fixed header without judging it; the framer needs only the length. */
export function readHeader(buf: Buffer): FrameHeader {
  if (buf.length < HEADER_BYTES) {
    throw new ProtocolError(MALFORMED, `frame is ${buf.length} bytes, shorter than the ${HEADER_BYTES}-byte header`, undefined, true);
  }
  return { version: buf[0]!, opcode: buf[1]!, requestId: buf.readUInt32BE(4), bodyLength: buf.readUInt32BE(8) };
}

/**
 * Checks header and items of `frame` against one direction's rules and
 * records where each known item's value lies. Returns the bitmask of present
 * slots. Checks run in the order SPEC.md lists, so a frame with several
 * faults always gets the same answer.
 */
function parseFrame(frame: Buffer, maxBodyBytes: number, rules: (OpRule | undefined)[], other: (OpRule | undefined)[], direction: string): number {
  if (frame.length < HEADER_BYTES) {
    throw new ProtocolError(MALFORMED, `frame is ${frame.length} bytes, shorter than the ${HEADER_BYTES}-byte header`, undefined, true);
  }
  const id = frame.readUInt32BE(4);
  const bodyLength = frame.readUInt32BE(8);
  if (bodyLength > maxBodyBytes) {
    throw new ProtocolError(ErrorCode.FRAME_TOO_LARGE, `body length ${bodyLength} exceeds the maximum of ${maxBodyBytes} bytes`, id, true);
  }
  if (frame.length !== HEADER_BYTES + bodyLength) {
    throw new ProtocolError(
      MALFORMED,
      `frame is ${frame.length} bytes but its header declares a ${bodyLength}-byte body (expected ${HEADER_BYTES + bodyLength} bytes)`,
      id,
      true,
    );
  }
  const version = frame[0]!;
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(ErrorCode.UNSUPPORTED_VERSION, `protocol version ${version} is not supported (expected ${PROTOCOL_VERSION})`, id);
  }
  const reserved = frame.readUInt16BE(2);
  if (reserved !== 0) {
    throw new ProtocolError(MALFORMED, `reserved header bytes are 0x${reserved.toString(16).padStart(4, '0')}, expected 0x0000`, id);
  }
  const opcode = frame[1]!;
  const r = rules[opcode];
  if (r === undefined) {
    const theirs = other[opcode];
    const why = theirs === undefined ? 'is not defined' : `(${theirs.name}) is not a ${direction} opcode`;
    throw new ProtocolError(ErrorCode.UNKNOWN_OP, `opcode 0x${hex2(opcode)} ${why}`, id);
  }

  let present = 0;
  let unknownSeen = false;
  const end = frame.length;
  let pos = HEADER_BYTES;
  while (pos < end) {
    const left = end - pos;
    if (left < ITEM_HEADER_BYTES) {
      throw new ProtocolError(
        MALFORMED,
        `${r.name}: item header at body offset ${pos - HEADER_BYTES} is truncated: ${left} bytes left, need ${ITEM_HEADER_BYTES}`,
        id,
      );
    }
    const tag = frame[pos]!;
    const valueStart = pos + ITEM_HEADER_BYTES;
    const valueEnd = valueStart + ((frame[pos + 1]! << 8) | frame[pos + 2]!);
    if (valueEnd > end) {
      throw new ProtocolError(
        MALFORMED,
        `${r.name}: ${describeTag(tag)} at body offset ${pos - HEADER_BYTES} declares a ${valueEnd - valueStart}-byte value but only ${end - valueStart} bytes remain in the body`,
        id,
      );
    }
    const slot = TAG_SLOT[tag]!;
    if (slot !== 0) {
      const bit = 1 << slot;
      if ((r.allowed & bit) === 0) throw new ProtocolError(MALFORMED, `${r.name}: unexpected item ${describeTag(tag)}`, id);
      if ((present & bit) !== 0) throw duplicate(r.name, tag, id);
      present |= bit;
      itemStart[slot] = valueStart;
      itemEnd[slot] = valueEnd;
    } else if ((tag & OPTIONAL_TAG_BIT) === 0) {
      throw new ProtocolError(MALFORMED, `${r.name}: unknown critical item tag 0x${hex2(tag)} at body offset ${pos - HEADER_BYTES}`, id);
    } else {
      // Unknown optional tags are how later versions add hints without a
      // version bump; they are skipped but still may not repeat. The bitset
      // is cleared only when one turns up, keeping the common path free.
      if (!unknownSeen) {
        seenTags.fill(0);
        unknownSeen = true;
      }
      const word = tag >>> 5;
      const wordBit = 1 << (tag & 31);
      if ((seenTags[word]! & wordBit) !== 0) throw duplicate(r.name, tag, id);
      seenTags[word] = seenTags[word]! | wordBit;
    }
    pos = valueEnd;
  }

  const missing = r.required & ~present;
  if (missing !== 0) {
    const slot = 31 - Math.clz32(missing & -missing);
    throw new ProtocolError(MALFORMED, `${r.name}: missing item ${describeTag(SLOT_TAG[slot]!)}`, id);
  }
  return present;
}

function duplicate(opName: string, tag: number, id: number): ProtocolError {
  return new ProtocolError(MALFORMED, `${opName}: duplicate item ${describeTag(tag)}`, id);
}

/** The length of a present item, after checking it is within [min, max]. */
function itemLength(slot: number, min: number, max: number, opName: string, id: number): number {
  const len = itemEnd[slot]! - itemStart[slot]!;
  if (len < min || len > max) {
    const expected = min === max ? `exactly ${min}` : `${min} to ${max}`;
    throw new ProtocolError(MALFORMED, `${opName}: ${describeTag(SLOT_TAG[slot]!)} is ${len} bytes, expected ${expected}`, id);
  }
  return len;
}

/** The value of a present item, after checking its length is within [min, max]. */
function itemValue(frame: Buffer, slot: number, min: number, max: number, opName: string, id: number): Buffer {
  const start = itemStart[slot]!;
  return frame.subarray(start, start + itemLength(slot, min, max, opName, id));
}

/** Decodes one whole frame (header + body, nothing more) sent by a client. */
export function decodeRequest(frame: Buffer, maxBodyBytes: number = DEFAULT_MAX_BODY_BYTES): Request {
  const present = parseFrame(frame, maxBodyBytes, REQUEST_RULES, RESPONSE_RULES, 'request');
  const id = frame.readUInt32BE(4);
  const opcode = frame[1]!;
  if (opcode === Opcode.PING) {
    const payload = (present & (1 << S_PAYLOAD)) === 0 ? EMPTY : itemValue(frame, S_PAYLOAD, 0, MAX_PAYLOAD_BYTES, 'PING', id);
    return { op: 'ping', id, payload };
  }
  if (opcode === Opcode.GET_PUBLIC_KEY) {
    return { op: 'getPublicKey', id, keyId: itemValue(frame, S_KEY_ID, KEY_ID_BYTES, KEY_ID_BYTES, 'GET_PUBLIC_KEY', id) };
  }
  const keyId = itemValue(frame, S_KEY_ID, KEY_ID_BYTES, KEY_ID_BYTES, 'SIGN', id);
  itemLength(S_ALGORITHM, 1, 1, 'SIGN', id);
  const algorithmByte = frame[itemStart[S_ALGORITHM]!]!;
  const info = algorithmInfo(algorithmByte);
  if (info === undefined) throw new ProtocolError(ErrorCode.UNKNOWN_ALGORITHM, `SIGN: unknown algorithm 0x${hex2(algorithmByte)}`, id);
  const digest = frame.subarray(itemStart[S_DIGEST]!, itemEnd[S_DIGEST]!);
  if (digest.length !== info.digestBytes) throw new ProtocolError(ErrorCode.BAD_DIGEST_LENGTH, digestMismatch(digest.length, info), id);
  return { op: 'sign', id, keyId, algorithm: info.byte, digest };
}

/** Decodes one whole frame (header + body, nothing more) sent by the key server. */
export function decodeResponse(frame: Buffer, maxBodyBytes: number = DEFAULT_MAX_BODY_BYTES): Response {
  const present = parseFrame(frame, maxBodyBytes, RESPONSE_RULES, REQUEST_RULES, 'response');
  const id = frame.readUInt32BE(4);
  const opcode = frame[1]!;
  if (opcode === Opcode.PONG) {
    const payload = (present & (1 << S_PAYLOAD)) === 0 ? EMPTY : itemValue(frame, S_PAYLOAD, 0, MAX_PAYLOAD_BYTES, 'PONG', id);
    return { op: 'pong', id, payload };
  }
  if (opcode === Opcode.PUBLIC_KEY) {
    return { op: 'publicKey', id, spki: itemValue(frame, S_PUBLIC_KEY, 1, MAX_PUBLIC_KEY_BYTES, 'PUBLIC_KEY', id) };
  }
  if (opcode === Opcode.SIGNATURE) {
    return { op: 'signature', id, signature: itemValue(frame, S_SIGNATURE, 1, MAX_SIGNATURE_BYTES, 'SIGNATURE', id) };
  }
  itemLength(S_ERROR_CODE, 2, 2, 'ERROR', id);
  const code = frame.readUInt16BE(itemStart[S_ERROR_CODE]!);
  if (code === 0) throw new ProtocolError(MALFORMED, `ERROR: ${describeTag(Tag.ERROR_CODE)} is 0, which no error uses`, id);
  // Invalid UTF-8 becomes U+FFFD rather than an error: the detail is only for
  // humans, and rejecting it would lose the error code that matters.
  const detail = (present & (1 << S_ERROR_DETAIL)) === 0 ? '' : itemValue(frame, S_ERROR_DETAIL, 0, MAX_ERROR_DETAIL_BYTES, 'ERROR', id).toString('utf8');
  return { op: 'error', id, code, detail };
}
