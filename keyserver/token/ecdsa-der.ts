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
  const rStart = firstSignificant(raw, 0, half);
  const sStart = firstSignificant(raw, half, raw.length);
  const rLength = integerLength(raw, rStart, half);
  const sLength = integerLength(raw, sStart, raw.length);
  const content = 1 + lengthBytes(rLength) + rLength + 1 + lengthBytes(sLength) + sLength;
  // Written in place, one allocation: this runs for every ECDSA handshake.
  const out = Buffer.allocUnsafe(1 + lengthBytes(content) + content);
  out[0] = 0x30;
  const at = writeInteger(out, writeLength(out, 1, content), raw, rStart, half, rLength);
  writeInteger(out, at, raw, sStart, raw.length, sLength);
  return out;
}

/** Where the unsigned big-endian number raw[start..end) starts once its leading zero octets are dropped (one octet stays). */
function firstSignificant(raw: Buffer, start: number, end: number): number {
  while (start < end - 1 && raw[start] === 0) start++;
  return start;
}

/** The INTEGER's content length for raw[start..end): one more when the top bit is set, for the 0x00 that keeps it non-negative. */
function integerLength(raw: Buffer, start: number, end: number): number {
  return end - start + (raw[start]! & 0x80 ? 1 : 0);
}

/** Writes INTEGER (tag, length, content of `length` octets: raw[start..end) after a 0x00 if one is due) at `at`; returns the end. */
function writeInteger(out: Buffer, at: number, raw: Buffer, start: number, end: number, length: number): number {
  out[at] = 0x02;
  at = writeLength(out, at + 1, length);
  if (length > end - start) out[at++] = 0;
  return at + raw.copy(out, at, start, end);
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
