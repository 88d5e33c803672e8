/**
 * PKCS#11 returns an ECDSA signature as r || s, each as wide as the curve's
 * order (PKCS#11 v2.40 §2.3.1); TLS carries it as the DER ECDSA-Sig-Value
 * SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 §2.2.3, RFC 8446 §4.2.3).
 *
 * Written out rather than taken from an ASN.1 library because it runs once per
 * handshake on the key server's main thread: the general-purpose encoder cost
 * about 20 µs per signature here, this a fraction of one. Two non-negative
 * INTEGERs are all it handles: leading zeros dropped, a 0x00 added when the
 * top bit is set (X.690 §8.3), short or long length form (X.690 §8.1.3).
 */
export function ecdsaRawToDer(raw: Buffer): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new RangeError(`an r || s ECDSA signature has an even, non-zero length, got ${raw.length}`);
  const half = raw.length / 2;
  const r = integerBody(raw, 0, half);
  const s = integerBody(raw, half, raw.length);
  const content = 2 + lengthBytes(r.length) + r.length + 2 + lengthBytes(s.length) + s.length - 2;
  const out = Buffer.allocUnsafe(1 + lengthBytes(content) + content);
  let at = 0;
  out[at++] = 0x30;
  at = writeLength(out, at, content);
  for (const body of [r, s]) {
    out[at++] = 0x02;
    at = writeLength(out, at, body.length);
    at += body.copy(out, at);
  }
  return out;
}

/** The INTEGER content octets of the unsigned big-endian number raw[start..end). */
function integerBody(raw: Buffer, start: number, end: number): Buffer {
  while (start < end - 1 && raw[start] === 0) start++;
  const value = raw.subarray(start, end);
  return value[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), value]) : value;
}

/** Octets after the tag for a length field: 1 up to 127, else 1 + the length's own bytes. */
function lengthBytes(length: number): number {
  return length < 0x80 ? 1 : length < 0x100 ? 2 : 3;
}

function writeLength(out: Buffer, at: number, length: number): number {
  if (length < 0x80) {
    out[at] = length;
    return at + 1;
  }
  if (length < 0x100) {
    out[at] = 0x81;
    out[at + 1] = length;
    return at + 2;
  }
  out[at] = 0x82;
  out.writeUInt16BE(length, at + 1);
  return at + 3;
}
