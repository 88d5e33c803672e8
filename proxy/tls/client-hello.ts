/**
 * Reads the server name, the offered application protocols (ALPN) and
 * whether OCSP stapling is asked for from the first bytes of a TLS
 * connection, before OpenSSL sees them, and tells a plain HTTP request sent
 * to the TLS port apart. Pure: bytes in, verdict out.
 *
 * Why: Node applies an SNI context by adding its certificate to the
 * connection next to the listener's own one (UseSNIContext), so a default
 * certificate on the listener would compete with, and for ECDSA-capable
 * clients often win over, an RSA certificate chosen by SNI. Looking at the
 * ClientHello first lets a connection without SNI go to a listener that holds
 * the default certificate and every other one to a listener that holds none;
 * it also lets us answer an unknown name with the unrecognized_name alert
 * (RFC 6066 §3), which Node's SNI callback cannot send. The listener
 * (listener.ts) picks the connection's one secure context from this verdict,
 * so OpenSSL never calls back into JavaScript for the name; the ALPN list
 * lets a protocol pick a context of its own (ACME TLS-ALPN-01, RFC 8737 §3).
 *
 * Layout read (RFC 8446 §5.1 record, §4.1.2 ClientHello, §4.2 extensions;
 * RFC 6066 §3 server_name):
 *   record:    type(1)=22 version(2) length(2)
 *   handshake: type(1)=1 length(3) legacy_version(2) random(32)
 *              session_id<0..32> cipher_suites<2..2^16-2> compression<1..2^8-1>
 *              extensions<8..2^16-1>: type(2) length(2) data
 *   server_name (0): list<1..2^16-1> of name_type(1)=0 host_name<1..2^16-1>
 *   status_request (5, RFC 6066 §8): status_type(1)=1 ...
 *   ALPN (16, RFC 7301 §3.1): protocol_name_list<2..2^16-1> of name<1..2^8-1>
 * One extension of each type at most (RFC 8446 §4.2): the first one counts.
 */

export type HelloPeek =
  /** More bytes are needed to decide: at least `atLeast` in all (asking again with fewer is wasted work). */
  | { readonly kind: 'incomplete'; readonly atLeast: number }
  /** Not a TLS handshake, or one split over several records: let OpenSSL deal with it. */
  | { readonly kind: 'opaque' }
  /** The start of a plain HTTP request line (a method, then a space: RFC 9112 §3): a client that forgot https://. */
  | { readonly kind: 'http' }
  /** A whole ClientHello; serverName is undefined when it carries no SNI, alpn when it offers no ALPN. */
  | { readonly kind: 'hello'; readonly serverName: string | undefined; readonly alpn: readonly string[] | undefined; readonly statusRequest: boolean };

const RECORD_HEADER = 5;
const HANDSHAKE_RECORD = 22;
const CLIENT_HELLO = 1;
const SERVER_NAME_EXTENSION = 0;
const STATUS_REQUEST_EXTENSION = 5;
const ALPN_EXTENSION = 16;
const HOST_NAME = 0;
const OCSP_STATUS_TYPE = 1;
/** A TLS record carries at most 2^14 bytes of plaintext (RFC 8446 §5.1). */
export const MAX_HELLO_BYTES = RECORD_HEADER + 16_384;

/**
 * The longest method waited for before a request line's space: every
 * registered method of letters only (RFC 9110 §16.1, IANA registry) is shorter.
 */
const MAX_METHOD = 20;

const OPAQUE: HelloPeek = { kind: 'opaque' };
const PLAIN_HTTP: HelloPeek = { kind: 'http' };
const incomplete = (atLeast: number): HelloPeek => ({ kind: 'incomplete', atLeast });

export function peekServerName(buf: Buffer): HelloPeek {
  if (buf.length === 0) return incomplete(1);
  if (buf[0] !== HANDSHAKE_RECORD) return peekRequestLine(buf);
  // The record header says how many bytes the whole hello takes: nothing is parsed before they are all here.
  if (buf.length < RECORD_HEADER) return incomplete(RECORD_HEADER);
  if (buf[1] !== 3) return OPAQUE;
  const recordLength = buf.readUInt16BE(3);
  if (recordLength > 16_384) return OPAQUE;
  if (buf.length < RECORD_HEADER + recordLength) return incomplete(RECORD_HEADER + recordLength);
  const record = buf.subarray(RECORD_HEADER, RECORD_HEADER + recordLength);
  if (record.length < 4 || record[0] !== CLIENT_HELLO) return OPAQUE;
  const helloLength = record.readUIntBE(1, 3);
  // A ClientHello fragmented over several records is legal but rare: OpenSSL reassembles it.
  if (helloLength > record.length - 4) return OPAQUE;
  const reader = new Reader(record.subarray(4, 4 + helloLength));
  if (!reader.skip(2 + 32) || !reader.skipVector(1) || !reader.skipVector(2) || !reader.skipVector(1)) return OPAQUE;
  // TLS 1.0-era hellos may end here: no extensions, so no SNI.
  if (reader.remaining === 0) return { kind: 'hello', serverName: undefined, alpn: undefined, statusRequest: false };
  const extensions = reader.vector(2);
  if (extensions === undefined) return OPAQUE;
  let serverName: string | undefined | null = null;
  let alpn: string[] | undefined;
  let statusRequest: boolean | undefined;
  while (extensions.remaining > 0) {
    const type = extensions.u16();
    const data = extensions.vector(2);
    if (type === undefined || data === undefined) return OPAQUE;
    if (type === SERVER_NAME_EXTENSION && serverName === null) {
      serverName = readServerName(data);
      if (serverName === null) return OPAQUE;
    } else if (type === ALPN_EXTENSION && alpn === undefined) {
      alpn = readProtocols(data);
      if (alpn === undefined) return OPAQUE;
    } else if (type === STATUS_REQUEST_EXTENSION && statusRequest === undefined) {
      statusRequest = data.u8() === OCSP_STATUS_TYPE;
    }
  }
  return { kind: 'hello', serverName: serverName ?? undefined, alpn, statusRequest: statusRequest ?? false };
}

/** The host_name of a server_name extension; undefined when it names none, null when malformed. */
function readServerName(data: Reader): string | undefined | null {
  const list = data.vector(2);
  if (list === undefined) return null;
  while (list.remaining > 0) {
    const nameType = list.u8();
    const name = list.vector(2);
    if (nameType === undefined || name === undefined) return null;
    if (nameType === HOST_NAME) return name.text();
  }
  return undefined;
}

/** The protocol names of an ALPN extension, in the client's order; undefined when malformed (an empty list or name). */
function readProtocols(data: Reader): string[] | undefined {
  const list = data.vector(2);
  if (list === undefined || list.remaining === 0) return undefined;
  const protocols: string[] = [];
  while (list.remaining > 0) {
    const name = list.vector(1);
    if (name === undefined || name.remaining === 0) return undefined;
    protocols.push(name.text());
  }
  return protocols;
}

/** ASCII letters up to a space: a method (RFC 9112 §3.1); a TLS record starts with 22, SSLv2 with a byte over 127. */
function peekRequestLine(buf: Buffer): HelloPeek {
  const end = Math.min(buf.length, MAX_METHOD + 1);
  for (let i = 0; i < end; i++) {
    const c = buf[i]!;
    if (c === 0x20) return i > 0 ? PLAIN_HTTP : OPAQUE;
    if (!((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a))) return OPAQUE;
  }
  return buf.length > MAX_METHOD ? OPAQUE : incomplete(buf.length + 1);
}

/**
 * Gathers a connection's first bytes until peekServerName can decide, in
 * work linear in their number however they are segmented: each byte is
 * copied once into a buffer sized by the record header, and the hello is
 * parsed once, when the record is complete (a ClientHello sent one byte per
 * TCP segment must not cost one parse and one copy of everything so far per
 * byte). The common case, a hello in one segment, copies nothing.
 *
 * Pure: bytes in, verdict out. Holds at most one record (MAX_HELLO_BYTES)
 * plus what the client sent in the same segments after it.
 */
export class HelloAssembler {
  /** The first chunk as the socket gave it, or a buffer of ours with room for what the header announced. */
  #buf: Buffer = Buffer.alloc(0);
  #length = 0;
  #atLeast = 1;
  #examined = 0;
  #copied = 0;

  /** Bytes handed to peekServerName plus bytes copied so far: O(bytes received), whatever the segmentation. */
  get work(): number {
    return this.#examined + this.#copied;
  }

  /** Everything received so far, in order (to put back on the socket for OpenSSL). */
  get bytes(): Buffer {
    return this.#buf.subarray(0, this.#length);
  }

  push(chunk: Buffer): HelloPeek {
    this.#append(chunk);
    if (this.#length < this.#atLeast) return incomplete(this.#atLeast);
    this.#examined += this.#length;
    const verdict = peekServerName(this.bytes);
    if (verdict.kind === 'incomplete') this.#atLeast = verdict.atLeast;
    return verdict;
  }

  #append(chunk: Buffer): void {
    if (this.#length === 0) {
      this.#buf = chunk;
      this.#length = chunk.length;
      return;
    }
    // Grows at most three times for a TLS hello: to the header, to the record, and past it when the client sent more in the last segment.
    if (this.#length + chunk.length > this.#buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.#atLeast, this.#length + chunk.length));
      this.#copied += this.#buf.copy(grown, 0, 0, this.#length);
      this.#buf = grown;
    }
    this.#copied += chunk.copy(this.#buf, this.#length);
    this.#length += chunk.length;
  }
}

/** A fatal unrecognized_name alert (RFC 8446 §6; 112 = 0x70), sent in the clear before any ServerHello. */
export const UNRECOGNIZED_NAME_ALERT = Buffer.from([21, 3, 3, 0, 2, 2, 112]);

class Reader {
  #offset = 0;
  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.#offset;
  }

  skip(n: number): boolean {
    if (this.remaining < n) return false;
    this.#offset += n;
    return true;
  }

  u8(): number | undefined {
    if (this.remaining < 1) return undefined;
    return this.buf[this.#offset++];
  }

  u16(): number | undefined {
    if (this.remaining < 2) return undefined;
    const value = this.buf.readUInt16BE(this.#offset);
    this.#offset += 2;
    return value;
  }

  /** A vector whose length prefix is `lengthBytes` wide (RFC 8446 §3.4). */
  vector(lengthBytes: 1 | 2): Reader | undefined {
    const length = lengthBytes === 1 ? this.u8() : this.u16();
    if (length === undefined || this.remaining < length) return undefined;
    const inner = new Reader(this.buf.subarray(this.#offset, this.#offset + length));
    this.#offset += length;
    return inner;
  }

  skipVector(lengthBytes: 1 | 2): boolean {
    return this.vector(lengthBytes) !== undefined;
  }

  text(): string {
    return this.buf.toString('latin1', this.#offset);
  }
}
