/**
 * Messages to frames (keyserver/protocol/SPEC.md): size the frame first,
 * allocate once, write in place. Encoders reject anything the decoder
 * (decode.ts) would reject, so a peer never receives a frame we produced and
 * then complains about. Pure.
 */
import { ProtocolError } from '../shared/errors.js';
import {
  algorithmInfo,
  describeTag,
  ErrorCode,
  HEADER_BYTES,
  ITEM_HEADER_BYTES,
  KEY_ID_BYTES,
  MAX_ERROR_DETAIL_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_PUBLIC_KEY_BYTES,
  MAX_SIGNATURE_BYTES,
  Opcode,
  PROTOCOL_VERSION,
  Tag,
} from './constants.js';
import { digestMismatch, type Request, type Response } from './messages.js';

const MALFORMED = ErrorCode.MALFORMED_FRAME;

function checkId(id: unknown, opName: string): number {
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
    throw new ProtocolError(MALFORMED, `${opName}: request id ${String(id)} is not a uint32`);
  }
  return id;
}

function checkBytes(value: unknown, tag: number, min: number, max: number, opName: string, id: number): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new ProtocolError(MALFORMED, `${opName}: ${describeTag(tag)} must be a Buffer`, id);
  if (value.length < min || value.length > max) {
    const expected = min === max ? `exactly ${min}` : `${min} to ${max}`;
    throw new ProtocolError(MALFORMED, `${opName}: ${describeTag(tag)} is ${value.length} bytes, expected ${expected}`, id);
  }
  return value;
}

function newFrame(opcode: number, id: number, bodyLength: number): Buffer {
  // allocUnsafe is fine: every byte is written before the frame is returned.
  const buf = Buffer.allocUnsafe(HEADER_BYTES + bodyLength);
  buf[0] = PROTOCOL_VERSION;
  buf[1] = opcode;
  buf[2] = 0;
  buf[3] = 0;
  buf.writeUInt32BE(id, 4);
  buf.writeUInt32BE(bodyLength, 8);
  return buf;
}

function putItem(buf: Buffer, pos: number, tag: number, value: Uint8Array): number {
  buf[pos] = tag;
  buf[pos + 1] = value.length >>> 8;
  buf[pos + 2] = value.length & 0xff;
  buf.set(value, pos + ITEM_HEADER_BYTES);
  return pos + ITEM_HEADER_BYTES + value.length;
}

/** A response whose body is one required item of 1..max bytes (PUBLIC_KEY, SIGNATURE). */
function encodeOneItemFrame(opcode: number, opName: string, rawId: unknown, tag: number, value: unknown, max: number): Buffer {
  const id = checkId(rawId, opName);
  const bytes = checkBytes(value, tag, 1, max, opName, id);
  const buf = newFrame(opcode, id, ITEM_HEADER_BYTES + bytes.length);
  putItem(buf, HEADER_BYTES, tag, bytes);
  return buf;
}

/** An empty payload is sent as no item at all; the decoder reads absence as empty. */
function encodePayloadFrame(opcode: number, opName: string, id: number, payload: unknown): Buffer {
  const p = checkBytes(payload, Tag.PAYLOAD, 0, MAX_PAYLOAD_BYTES, opName, id);
  if (p.length === 0) return newFrame(opcode, id, 0);
  const buf = newFrame(opcode, id, ITEM_HEADER_BYTES + p.length);
  putItem(buf, HEADER_BYTES, Tag.PAYLOAD, p);
  return buf;
}

export function encodeRequest(req: Request): Buffer {
  switch (req.op) {
    case 'ping':
      return encodePayloadFrame(Opcode.PING, 'PING', checkId(req.id, 'PING'), req.payload);
    case 'getPublicKey': {
      const id = checkId(req.id, 'GET_PUBLIC_KEY');
      const keyId = checkBytes(req.keyId, Tag.KEY_ID, KEY_ID_BYTES, KEY_ID_BYTES, 'GET_PUBLIC_KEY', id);
      const buf = newFrame(Opcode.GET_PUBLIC_KEY, id, ITEM_HEADER_BYTES + KEY_ID_BYTES);
      putItem(buf, HEADER_BYTES, Tag.KEY_ID, keyId);
      return buf;
    }
    case 'sign': {
      const id = checkId(req.id, 'SIGN');
      const keyId = checkBytes(req.keyId, Tag.KEY_ID, KEY_ID_BYTES, KEY_ID_BYTES, 'SIGN', id);
      const info = typeof req.algorithm === 'number' ? algorithmInfo(req.algorithm) : undefined;
      if (info === undefined) throw new ProtocolError(MALFORMED, `SIGN: unknown algorithm ${String(req.algorithm)}`, id);
      const digest = checkBytes(req.digest, Tag.DIGEST, 0, 0xffff, 'SIGN', id);
      if (digest.length !== info.digestBytes) throw new ProtocolError(MALFORMED, digestMismatch(digest.length, info), id);
      const buf = newFrame(Opcode.SIGN, id, 3 * ITEM_HEADER_BYTES + KEY_ID_BYTES + 1 + digest.length);
      const pos = putItem(buf, HEADER_BYTES, Tag.KEY_ID, keyId);
      buf[pos] = Tag.ALGORITHM;
      buf[pos + 1] = 0;
      buf[pos + 2] = 1;
      buf[pos + 3] = info.byte;
      putItem(buf, pos + ITEM_HEADER_BYTES + 1, Tag.DIGEST, digest);
      return buf;
    }
    default:
      throw new ProtocolError(MALFORMED, `unknown request op ${JSON.stringify((req as { op: unknown }).op)}`);
  }
}

export function encodeResponse(res: Response): Buffer {
  switch (res.op) {
    case 'pong':
      return encodePayloadFrame(Opcode.PONG, 'PONG', checkId(res.id, 'PONG'), res.payload);
    case 'publicKey':
      return encodeOneItemFrame(Opcode.PUBLIC_KEY, 'PUBLIC_KEY', res.id, Tag.PUBLIC_KEY, res.spki, MAX_PUBLIC_KEY_BYTES);
    case 'signature':
      return encodeOneItemFrame(Opcode.SIGNATURE, 'SIGNATURE', res.id, Tag.SIGNATURE, res.signature, MAX_SIGNATURE_BYTES);
    case 'error': {
      const id = checkId(res.id, 'ERROR');
      const code = res.code;
      if (!Number.isInteger(code) || code < 1 || code > 0xffff) {
        throw new ProtocolError(MALFORMED, `ERROR: error code ${String(code)} is not in 1 to 65535`, id);
      }
      if (typeof res.detail !== 'string') throw new ProtocolError(MALFORMED, `ERROR: detail must be a string`, id);
      const detail = truncateUtf8(res.detail, MAX_ERROR_DETAIL_BYTES);
      const bodyLength = ITEM_HEADER_BYTES + 2 + (detail.length === 0 ? 0 : ITEM_HEADER_BYTES + detail.length);
      const buf = newFrame(Opcode.ERROR, id, bodyLength);
      buf[HEADER_BYTES] = Tag.ERROR_CODE;
      buf[HEADER_BYTES + 1] = 0;
      buf[HEADER_BYTES + 2] = 2;
      buf.writeUInt16BE(code, HEADER_BYTES + ITEM_HEADER_BYTES);
      if (detail.length !== 0) putItem(buf, HEADER_BYTES + ITEM_HEADER_BYTES + 2, Tag.ERROR_DETAIL, detail);
      return buf;
    }
    default:
      throw new ProtocolError(MALFORMED, `unknown response op ${JSON.stringify((res as { op: unknown }).op)}`);
  }
}

/**
 * UTF-8 bytes of `text`, cut to at most `max` bytes without splitting a
 * character: an error's detail is worth sending even when a long path or peer
 * name makes it too big, so it is shortened rather than refused.
 */
export function truncateUtf8(text: string, max: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= max) return bytes;
  let cut = max;
  // Back up over continuation bytes (10xxxxxx) so the cut lands before a lead byte (RFC 3629 §3).
  while (cut > 0 && (bytes[cut]! & 0xc0) === 0x80) cut--;
  return bytes.subarray(0, cut);
}
