import { describe, it, expect } from 'vitest';
import { ProtocolError } from '../keyserver/shared/errors.js';
import { Algorithm, ALGORITHMS, algorithmInfo, ErrorCode, errorCodeName, Opcode, Tag, type AlgorithmByte } from '../keyserver/protocol/constants.js';
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse, readHeader, type Request, type Response } from '../keyserver/protocol/codec.js';
import { prng } from './helpers/prng.js';

// ---------------------------------------------------------------------------
// Hand-built frames, so the tests do not trust the encoder they are testing.

function item(tag: number, value: Buffer | number[] | number): Buffer {
  const v = typeof value === 'number' ? Buffer.alloc(value, 0x5a) : Buffer.from(value);
  const h = Buffer.alloc(3);
  h[0] = tag;
  h.writeUInt16BE(v.length, 1);
  return Buffer.concat([h, v]);
}

interface HeaderOverrides {
  version?: number;
  reserved?: number;
  bodyLength?: number;
}

function frame(opcode: number, id: number, items: Buffer[], o: HeaderOverrides = {}): Buffer {
  const body = Buffer.concat(items);
  const h = Buffer.alloc(12);
  h[0] = o.version ?? 1;
  h[1] = opcode;
  h.writeUInt16BE(o.reserved ?? 0, 2);
  h.writeUInt32BE(id, 4);
  h.writeUInt32BE(o.bodyLength ?? body.length, 8);
  return Buffer.concat([h, body]);
}

const KEY = Buffer.alloc(32, 0xab);
const keyItem = item(Tag.KEY_ID, KEY);
const algItem = (a: number) => item(Tag.ALGORITHM, [a]);
const signItems = (a: number = Algorithm.ECDSA_SHA256, digestLength = 32) => [keyItem, algItem(a), item(Tag.DIGEST, digestLength)];

function protocolError(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e;
    throw new Error(`expected a ProtocolError, got ${String(e)}`);
  }
  throw new Error('expected a ProtocolError, but nothing was thrown');
}

// ---------------------------------------------------------------------------

describe('constants', () => {
  it('names error codes, including ones from a newer peer', () => {
    expect(errorCodeName(ErrorCode.UNKNOWN_KEY)).toBe('UNKNOWN_KEY');
    expect(errorCodeName(14)).toBe('INTERNAL');
    expect(errorCodeName(999)).toBe('UNKNOWN_ERROR_999');
    expect(errorCodeName(0)).toBe('UNKNOWN_ERROR_0');
  });

  it('describes every algorithm and nothing else', () => {
    expect(ALGORITHMS).toHaveLength(9);
    expect(algorithmInfo(Algorithm.RSA_PSS_SHA384)).toMatchObject({ name: 'RSA_PSS_SHA384', scheme: 'rsa-pss', hash: 'sha384', digestBytes: 48 });
    expect(algorithmInfo(0x13)).toMatchObject({ name: 'RSA_PKCS1_SHA512', scheme: 'rsa-pkcs1', digestBytes: 64 });
    for (const b of [0x00, 0x04, 0x10, 0x14, 0x24, 0xff, 256, -1, 1.5]) expect(algorithmInfo(b)).toBeUndefined();
  });
});

describe('round trips', () => {
  const requests: [string, Request][] = [
    ['ping, empty payload', { op: 'ping', id: 0, payload: Buffer.alloc(0) }],
    ['ping, 1-byte payload', { op: 'ping', id: 1, payload: Buffer.from([7]) }],
    ['ping, max payload', { op: 'ping', id: 0xffff_ffff, payload: Buffer.alloc(1024, 3) }],
    ['getPublicKey', { op: 'getPublicKey', id: 42, keyId: KEY }],
    ...ALGORITHMS.map((a): [string, Request] => [
      `sign ${a.name}`,
      { op: 'sign', id: 1000 + a.byte, keyId: KEY, algorithm: a.byte, digest: Buffer.alloc(a.digestBytes, a.byte) },
    ]),
  ];
  for (const [name, req] of requests) {
    it(`request: ${name}`, () => {
      const bytes = encodeRequest(req);
      expect(bytes.readUInt32BE(8)).toBe(bytes.length - 12);
      expect(decodeRequest(bytes)).toEqual(req);
    });
  }

  const responses: [string, Response][] = [
    ['pong, empty payload', { op: 'pong', id: 5, payload: Buffer.alloc(0) }],
    ['pong, max payload', { op: 'pong', id: 6, payload: Buffer.alloc(1024, 9) }],
    ['publicKey, 1 byte', { op: 'publicKey', id: 7, spki: Buffer.from([0x30]) }],
    ['publicKey, max size', { op: 'publicKey', id: 8, spki: Buffer.alloc(4096, 0x30) }],
    ['signature, 1 byte', { op: 'signature', id: 9, signature: Buffer.from([1]) }],
    ['signature, max size', { op: 'signature', id: 10, signature: Buffer.alloc(1024, 2) }],
    ['error with detail', { op: 'error', id: 11, code: ErrorCode.UNKNOWN_KEY, detail: 'no key 0xabab…' }],
    ['error without detail', { op: 'error', id: 12, code: ErrorCode.OVERLOADED, detail: '' }],
    ['error with a code from a newer server', { op: 'error', id: 13, code: 0xffff, detail: 'x'.repeat(512) }],
  ];
  for (const [name, res] of responses) {
    it(`response: ${name}`, () => {
      expect(decodeResponse(encodeResponse(res))).toEqual(res);
    });
  }

  it('matches the worked examples in SPEC.md byte for byte', () => {
    const sign = encodeRequest({ op: 'sign', id: 7, keyId: KEY, algorithm: Algorithm.ECDSA_SHA256, digest: Buffer.alloc(32, 0xcd) });
    expect(sign.toString('hex')).toBe('01030000000000070000004a' + '010020' + 'ab'.repeat(32) + '02000101' + '030020' + 'cd'.repeat(32));
    const err = encodeResponse({ op: 'error', id: 7, code: ErrorCode.UNKNOWN_KEY, detail: 'no such key' });
    expect(err.toString('hex')).toBe('01ff0000000000070000001307000200058000' + '0b' + Buffer.from('no such key').toString('hex'));
  });

  it('returns buffers that alias the frame instead of copying it', () => {
    const bytes = encodeRequest({ op: 'sign', id: 1, keyId: KEY, algorithm: Algorithm.ECDSA_SHA256, digest: Buffer.alloc(32, 1) });
    const req = decodeRequest(bytes);
    if (req.op !== 'sign') throw new Error('wrong op');
    expect(req.keyId.buffer).toBe(bytes.buffer);
    expect(req.keyId.byteOffset).toBe(bytes.byteOffset + 15);
  });

  it('accepts items in any order and skips unknown optional tags', () => {
    const f = frame(Opcode.SIGN, 77, [item(0x9a, 5), item(Tag.DIGEST, 48), item(0xff, 0), algItem(Algorithm.RSA_PSS_SHA384), keyItem]);
    expect(decodeRequest(f)).toMatchObject({ op: 'sign', id: 77, algorithm: Algorithm.RSA_PSS_SHA384 });
  });

  it('decodes an invalid UTF-8 detail with replacement characters rather than losing the error code', () => {
    const f = frame(Opcode.ERROR, 3, [item(Tag.ERROR_CODE, [0, 10]), item(Tag.ERROR_DETAIL, [0x61, 0xff, 0x62])]);
    expect(decodeResponse(f)).toEqual({ op: 'error', id: 3, code: 10, detail: 'a\ufffdb' });
  });

  it('reads a header without judging it', () => {
    const f = frame(0x42, 0xdeadbeef, [], { version: 9, bodyLength: 99 });
    expect(readHeader(f)).toEqual({ version: 9, opcode: 0x42, requestId: 0xdeadbeef, bodyLength: 99 });
    expect(protocolError(() => readHeader(f.subarray(0, 11))).wireCode).toBe(ErrorCode.MALFORMED_FRAME);
  });
});

describe('encoders refuse to emit a bad frame', () => {
  const D32 = Buffer.alloc(32);
  const cases: [string, () => unknown, RegExp][] = [
    ['negative id', () => encodeRequest({ op: 'ping', id: -1, payload: D32 }), /request id -1 is not a uint32/],
    ['id above uint32', () => encodeRequest({ op: 'ping', id: 2 ** 32, payload: D32 }), /not a uint32/],
    ['fractional id', () => encodeResponse({ op: 'pong', id: 1.5, payload: D32 }), /not a uint32/],
    ['short key id', () => encodeRequest({ op: 'getPublicKey', id: 1, keyId: Buffer.alloc(31) }), /KEY_ID \(tag 0x01\) is 31 bytes, expected exactly 32/],
    ['unknown algorithm', () => encodeRequest({ op: 'sign', id: 1, keyId: KEY, algorithm: 0x04 as AlgorithmByte, digest: D32 }), /unknown algorithm 4/],
    [
      'digest length',
      () => encodeRequest({ op: 'sign', id: 1, keyId: KEY, algorithm: Algorithm.ECDSA_SHA512, digest: D32 }),
      /32 bytes, but ECDSA_SHA512 needs a 64-byte/,
    ],
    ['payload too long', () => encodeRequest({ op: 'ping', id: 1, payload: Buffer.alloc(1025) }), /PAYLOAD \(tag 0x04\) is 1025 bytes, expected 0 to 1024/],
    ['empty signature', () => encodeResponse({ op: 'signature', id: 1, signature: Buffer.alloc(0) }), /expected 1 to 1024/],
    ['spki too long', () => encodeResponse({ op: 'publicKey', id: 1, spki: Buffer.alloc(4097) }), /expected 1 to 4096/],
    ['error code 0', () => encodeResponse({ op: 'error', id: 1, code: 0, detail: '' }), /error code 0 is not in 1 to 65535/],
    ['error code too big', () => encodeResponse({ op: 'error', id: 1, code: 65536, detail: '' }), /65536/],
    ['unknown op', () => encodeRequest({ op: 'decrypt' } as unknown as Request), /unknown request op "decrypt"/],
  ];
  for (const [name, fn, message] of cases) {
    it(name, () => {
      const e = protocolError(fn);
      expect(e.wireCode).toBe(ErrorCode.MALFORMED_FRAME);
      expect(e.message).toMatch(message);
    });
  }

  it('truncates a long detail on a UTF-8 character boundary', () => {
    const cases = [
      ['é'.repeat(300), 'é'.repeat(256)],
      ['a' + '€'.repeat(200), 'a' + '€'.repeat(170)],
      ['ab' + '😀'.repeat(200), 'ab' + '😀'.repeat(127)],
    ];
    for (const [long, expected] of cases) {
      const bytes = encodeResponse({ op: 'error', id: 1, code: 14, detail: long! });
      const res = decodeResponse(bytes);
      expect(res).toEqual({ op: 'error', id: 1, code: 14, detail: expected });
      expect(Buffer.byteLength(expected!)).toBeLessThanOrEqual(512);
    }
  });
});

describe('decoders reject bad frames with the exact code', () => {
  const M = ErrorCode.MALFORMED_FRAME;
  const ID = 0x01020304;
  const ping = frame(Opcode.PING, ID, [item(Tag.PAYLOAD, 4)]);
  type Case = { name: string; dir: 'req' | 'res'; bytes: Buffer; code: number; id?: number | undefined; fatal?: boolean; message: RegExp; max?: number };
  const cases: Case[] = [
    {
      name: 'truncated header',
      dir: 'req',
      bytes: ping.subarray(0, 11),
      code: M,
      id: undefined,
      fatal: true,
      message: /11 bytes, shorter than the 12-byte header/,
    },
    { name: 'empty input', dir: 'res', bytes: Buffer.alloc(0), code: M, id: undefined, fatal: true, message: /0 bytes/ },
    {
      name: 'truncated item header',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [Buffer.from([Tag.PAYLOAD, 0])]),
      code: M,
      message: /PING: item header at body offset 0 is truncated: 2 bytes left, need 3/,
    },
    {
      name: 'truncated item header after an item',
      dir: 'req',
      bytes: frame(Opcode.GET_PUBLIC_KEY, ID, [keyItem, Buffer.from([0x90])]),
      code: M,
      message: /item header at body offset 35 is truncated: 1 bytes left/,
    },
    {
      name: 'item past body end',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [Buffer.from([Tag.PAYLOAD, 0, 5, 1, 2])]),
      code: M,
      message: /PAYLOAD \(tag 0x04\) at body offset 0 declares a 5-byte value but only 2 bytes remain/,
    },
    {
      name: 'body length longer than frame',
      dir: 'req',
      bytes: ping.subarray(0, ping.length - 1),
      code: M,
      fatal: true,
      message: /frame is 18 bytes but its header declares a 7-byte body \(expected 19 bytes\)/,
    },
    { name: 'body length shorter than frame', dir: 'req', bytes: Buffer.concat([ping, Buffer.from([0])]), code: M, fatal: true, message: /frame is 20 bytes/ },
    {
      name: 'duplicate item',
      dir: 'req',
      bytes: frame(Opcode.GET_PUBLIC_KEY, ID, [keyItem, keyItem]),
      code: M,
      message: /GET_PUBLIC_KEY: duplicate item KEY_ID \(tag 0x01\)/,
    },
    {
      name: 'duplicate unknown optional item',
      dir: 'res',
      bytes: frame(Opcode.PONG, ID, [item(0xc1, 1), item(0xc1, 1)]),
      code: M,
      message: /PONG: duplicate item tag 0xc1/,
    },
    {
      name: 'unknown critical tag',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [item(0x7e, 2)]),
      code: M,
      message: /PING: unknown critical item tag 0x7e at body offset 0/,
    },
    { name: 'tag zero is critical', dir: 'res', bytes: frame(Opcode.PONG, ID, [item(0x00, 0)]), code: M, message: /unknown critical item tag 0x00/ },
    {
      name: 'unexpected item',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, [...signItems(), item(Tag.SIGNATURE, 8)]),
      code: M,
      message: /SIGN: unexpected item SIGNATURE \(tag 0x05\)/,
    },
    {
      name: 'unexpected optional known item',
      dir: 'res',
      bytes: frame(Opcode.PONG, ID, [item(Tag.ERROR_DETAIL, 1)]),
      code: M,
      message: /PONG: unexpected item ERROR_DETAIL \(tag 0x80\)/,
    },
    { name: 'missing item', dir: 'req', bytes: frame(Opcode.SIGN, ID, [keyItem, algItem(1)]), code: M, message: /SIGN: missing item DIGEST \(tag 0x03\)/ },
    { name: 'missing key id', dir: 'req', bytes: frame(Opcode.GET_PUBLIC_KEY, ID, []), code: M, message: /GET_PUBLIC_KEY: missing item KEY_ID/ },
    {
      name: 'missing error code',
      dir: 'res',
      bytes: frame(Opcode.ERROR, ID, [item(Tag.ERROR_DETAIL, 3)]),
      code: M,
      message: /ERROR: missing item ERROR_CODE \(tag 0x07\)/,
    },
    {
      name: 'short KEY_ID',
      dir: 'req',
      bytes: frame(Opcode.GET_PUBLIC_KEY, ID, [item(Tag.KEY_ID, 31)]),
      code: M,
      message: /KEY_ID \(tag 0x01\) is 31 bytes, expected exactly 32/,
    },
    {
      name: 'long KEY_ID',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, [item(Tag.KEY_ID, 33), algItem(1), item(Tag.DIGEST, 32)]),
      code: M,
      message: /SIGN: KEY_ID \(tag 0x01\) is 33 bytes, expected exactly 32/,
    },
    {
      name: 'ALGORITHM of 2 bytes',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, [keyItem, item(Tag.ALGORITHM, [1, 1]), item(Tag.DIGEST, 32)]),
      code: M,
      message: /ALGORITHM \(tag 0x02\) is 2 bytes, expected exactly 1/,
    },
    {
      name: 'empty ALGORITHM',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, [keyItem, item(Tag.ALGORITHM, []), item(Tag.DIGEST, 32)]),
      code: M,
      message: /is 0 bytes, expected exactly 1/,
    },
    {
      name: 'unknown algorithm',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, signItems(0x04)),
      code: ErrorCode.UNKNOWN_ALGORITHM,
      message: /SIGN: unknown algorithm 0x04/,
    },
    {
      name: 'digest too short for the algorithm',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, signItems(Algorithm.ECDSA_SHA384, 32)),
      code: ErrorCode.BAD_DIGEST_LENGTH,
      message: /DIGEST \(tag 0x03\) is 32 bytes, but ECDSA_SHA384 needs a 48-byte sha384 digest/,
    },
    {
      name: 'digest too long for the algorithm',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, signItems(Algorithm.RSA_PSS_SHA256, 64)),
      code: ErrorCode.BAD_DIGEST_LENGTH,
      message: /64 bytes, but RSA_PSS_SHA256 needs a 32-byte/,
    },
    {
      name: 'empty digest',
      dir: 'req',
      bytes: frame(Opcode.SIGN, ID, signItems(Algorithm.RSA_PKCS1_SHA512, 0)),
      code: ErrorCode.BAD_DIGEST_LENGTH,
      message: /0 bytes/,
    },
    {
      name: 'oversized body length',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [], { bodyLength: 16385 }),
      code: ErrorCode.FRAME_TOO_LARGE,
      fatal: true,
      message: /body length 16385 exceeds the maximum of 16384 bytes/,
    },
    {
      name: 'body above a configured maximum',
      dir: 'res',
      bytes: frame(Opcode.PONG, ID, [item(Tag.PAYLOAD, 100)]),
      max: 64,
      code: ErrorCode.FRAME_TOO_LARGE,
      fatal: true,
      message: /body length 103 exceeds the maximum of 64/,
    },
    {
      name: 'unsupported version',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [], { version: 2 }),
      code: ErrorCode.UNSUPPORTED_VERSION,
      message: /protocol version 2 is not supported \(expected 1\)/,
    },
    { name: 'version 0', dir: 'res', bytes: frame(Opcode.PONG, ID, [], { version: 0 }), code: ErrorCode.UNSUPPORTED_VERSION, message: /version 0/ },
    {
      name: 'non-zero reserved',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [], { reserved: 0x0100 }),
      code: M,
      message: /reserved header bytes are 0x0100, expected 0x0000/,
    },
    { name: 'unknown opcode', dir: 'req', bytes: frame(0x42, ID, []), code: ErrorCode.UNKNOWN_OP, message: /opcode 0x42 is not defined/ },
    { name: 'unknown opcode in a response', dir: 'res', bytes: frame(0x84, ID, []), code: ErrorCode.UNKNOWN_OP, message: /opcode 0x84 is not defined/ },
    {
      name: 'request opcode to decodeResponse',
      dir: 'res',
      bytes: frame(Opcode.SIGN, ID, signItems()),
      code: ErrorCode.UNKNOWN_OP,
      message: /opcode 0x03 \(SIGN\) is not a response opcode/,
    },
    {
      name: 'response opcode to decodeRequest',
      dir: 'req',
      bytes: frame(Opcode.SIGNATURE, ID, [item(Tag.SIGNATURE, 70)]),
      code: ErrorCode.UNKNOWN_OP,
      message: /opcode 0x83 \(SIGNATURE\) is not a request opcode/,
    },
    {
      name: 'ERROR opcode to decodeRequest',
      dir: 'req',
      bytes: frame(Opcode.ERROR, ID, [item(Tag.ERROR_CODE, [0, 1])]),
      code: ErrorCode.UNKNOWN_OP,
      message: /0xff \(ERROR\) is not a request/,
    },
    {
      name: 'payload too long',
      dir: 'req',
      bytes: frame(Opcode.PING, ID, [item(Tag.PAYLOAD, 1025)]),
      code: M,
      message: /PING: PAYLOAD \(tag 0x04\) is 1025 bytes, expected 0 to 1024/,
    },
    { name: 'pong payload too long', dir: 'res', bytes: frame(Opcode.PONG, ID, [item(Tag.PAYLOAD, 1025)]), code: M, message: /PONG: PAYLOAD/ },
    {
      name: 'empty signature',
      dir: 'res',
      bytes: frame(Opcode.SIGNATURE, ID, [item(Tag.SIGNATURE, 0)]),
      code: M,
      message: /SIGNATURE: SIGNATURE \(tag 0x05\) is 0 bytes, expected 1 to 1024/,
    },
    {
      name: 'public key too long',
      dir: 'res',
      bytes: frame(Opcode.PUBLIC_KEY, ID, [item(Tag.PUBLIC_KEY, 4097)]),
      code: M,
      message: /PUBLIC_KEY \(tag 0x06\) is 4097 bytes, expected 1 to 4096/,
    },
    {
      name: 'ERROR_CODE of 3 bytes',
      dir: 'res',
      bytes: frame(Opcode.ERROR, ID, [item(Tag.ERROR_CODE, [0, 0, 1])]),
      code: M,
      message: /ERROR_CODE \(tag 0x07\) is 3 bytes, expected exactly 2/,
    },
    {
      name: 'ERROR_CODE zero',
      dir: 'res',
      bytes: frame(Opcode.ERROR, ID, [item(Tag.ERROR_CODE, [0, 0])]),
      code: M,
      message: /ERROR_CODE \(tag 0x07\) is 0, which no error uses/,
    },
    {
      name: 'ERROR_DETAIL too long',
      dir: 'res',
      bytes: frame(Opcode.ERROR, ID, [item(Tag.ERROR_CODE, [0, 1]), item(Tag.ERROR_DETAIL, 513)]),
      code: M,
      message: /ERROR_DETAIL \(tag 0x80\) is 513 bytes, expected 0 to 512/,
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const decode = c.dir === 'req' ? decodeRequest : decodeResponse;
      const e = protocolError(() => decode(c.bytes, c.max));
      expect(e.wireCode).toBe(c.code);
      expect(e.requestId).toBe('id' in c ? c.id : ID);
      expect(e.fatal).toBe(c.fatal ?? false);
      expect(e.message).toMatch(c.message);
    });
  }
});

// ---------------------------------------------------------------------------
// Random inputs: whatever the bytes, decoding returns a value the encoder
// accepts or throws a ProtocolError carrying the id of any readable header.

const VALID_CODES = new Set<number>(Object.values(ErrorCode));

describe('random inputs', () => {
  it('never throw anything but ProtocolError and always yield well-formed values', () => {
    const rand = prng(0x6b657965);
    const int = (n: number) => Math.floor(rand() * n);
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
    const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

    const corpus: Buffer[] = [
      encodeRequest({ op: 'ping', id: 1, payload: bytes(5) }),
      encodeRequest({ op: 'ping', id: 2, payload: Buffer.alloc(0) }),
      encodeRequest({ op: 'getPublicKey', id: 3, keyId: bytes(32) }),
      ...ALGORITHMS.map((a) => encodeRequest({ op: 'sign', id: a.byte, keyId: bytes(32), algorithm: a.byte, digest: bytes(a.digestBytes) })),
      encodeResponse({ op: 'pong', id: 4, payload: bytes(3) }),
      encodeResponse({ op: 'publicKey', id: 5, spki: bytes(91) }),
      encodeResponse({ op: 'signature', id: 6, signature: bytes(72) }),
      encodeResponse({ op: 'error', id: 7, code: 5, detail: 'no such key' }),
      encodeResponse({ op: 'error', id: 8, code: 11, detail: '' }),
    ];
    const tags = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x7f, 0x80, 0x81, 0xff];
    const lengths = [0, 1, 2, 31, 32, 33, 48, 64, 512, 513, 1024, 1025, 4096, 4097];
    const opcodes = [0x00, 0x01, 0x02, 0x03, 0x04, 0x80, 0x81, 0x82, 0x83, 0x84, 0xfe, 0xff];

    const withBody = (base: Buffer, body: Buffer) => {
      const f = Buffer.concat([base.subarray(0, 12), body]);
      f.writeUInt32BE(body.length, 8);
      return f;
    };

    function generate(): Buffer {
      switch (int(5)) {
        case 0:
          return bytes(int(80));
        case 1: {
          // Well-formed header, items built from plausible tags and lengths, sometimes lying about their length.
          const parts: Buffer[] = [];
          for (let n = int(5); n > 0; n--) {
            const len = rand() < 0.5 ? pick(lengths) : int(70);
            const it = item(pick(tags), bytes(len));
            if (rand() < 0.1) it.writeUInt16BE(int(0x10000), 1);
            parts.push(it);
          }
          const f = frame(pick(opcodes), int(2 ** 32), parts);
          if (rand() < 0.2) return f.subarray(0, f.length - int(4));
          return f;
        }
        case 2: {
          const f = Buffer.from(pick(corpus));
          for (let n = 1 + int(4); n > 0; n--) f[int(f.length)] = rand() < 0.5 ? int(256) : pick([0, 1, 2, 0x20, 0x30, 0x80, 0xff]);
          return f;
        }
        case 3: {
          const f = pick(corpus);
          return f.subarray(0, int(f.length + 1));
        }
        default: {
          // Truncate or extend the body but keep the length field honest, so the item parser sees it.
          const f = pick(corpus);
          const body = f.subarray(12);
          return withBody(f, rand() < 0.5 ? body.subarray(0, int(body.length + 1)) : Buffer.concat([body, bytes(1 + int(8))]));
        }
      }
    }

    const problems: string[] = [];
    let accepted = 0;
    let rejected = 0;
    function check(f: Buffer, dir: 'req' | 'res') {
      try {
        if (dir === 'req') {
          const v = decodeRequest(f);
          if (v.id !== f.readUInt32BE(4)) problems.push(`id mismatch ${f.toString('hex')}`);
          if (v.op === 'sign' && v.digest.length !== algorithmInfo(v.algorithm)?.digestBytes) problems.push(`bad digest accepted ${f.toString('hex')}`);
          expect(decodeRequest(encodeRequest(v))).toEqual(v);
        } else {
          const v = decodeResponse(f);
          if (v.id !== f.readUInt32BE(4)) problems.push(`id mismatch ${f.toString('hex')}`);
          expect(decodeResponse(encodeResponse(v))).toEqual(v);
        }
        accepted++;
      } catch (e) {
        if (!(e instanceof ProtocolError)) {
          problems.push(`${dir} ${f.toString('hex')}: ${String(e)}`);
          return;
        }
        rejected++;
        if (!VALID_CODES.has(e.wireCode)) problems.push(`unknown wire code ${e.wireCode}`);
        const expectedId = f.length >= 12 ? f.readUInt32BE(4) : undefined;
        if (e.requestId !== expectedId) problems.push(`${dir} ${f.toString('hex')}: requestId ${e.requestId}, expected ${expectedId}`);
      }
    }

    for (let i = 0; i < 20_000; i++) {
      const f = generate();
      check(f, 'req');
      check(f, 'res');
    }
    expect(problems.slice(0, 5)).toEqual([]);
    // The generator must reach the success paths, not only the early rejections.
    expect(accepted).toBeGreaterThan(1000);
    expect(rejected).toBeGreaterThan(10_000);
  });
});
