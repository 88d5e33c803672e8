import { describe, it, expect } from 'vitest';
import { ProtocolError } from '../keyserver/shared/errors.js';
import { Algorithm, ErrorCode, Opcode } from '../keyserver/protocol/constants.js';
import { encodeRequest, encodeResponse } from '../keyserver/protocol/codec.js';
import { FrameReader } from '../keyserver/protocol/framer.js';
import { prng } from './helpers/prng.js';

function collect(maxBodyBytes?: number) {
  const frames: Buffer[] = [];
  const errors: ProtocolError[] = [];
  const reader = new FrameReader({ onFrame: (f) => frames.push(f), onError: (e) => errors.push(e), maxBodyBytes });
  return { reader, frames, errors };
}

function header(opcode: number, id: number, bodyLength: number): Buffer {
  const h = Buffer.alloc(12);
  h[0] = 1;
  h[1] = opcode;
  h.writeUInt32BE(id, 4);
  h.writeUInt32BE(bodyLength, 8);
  return h;
}

const KEY = Buffer.alloc(32, 0x11);
const sample = [
  encodeRequest({ op: 'ping', id: 1, payload: Buffer.alloc(0) }), // header only
  encodeRequest({ op: 'sign', id: 2, keyId: KEY, algorithm: Algorithm.RSA_PSS_SHA384, digest: Buffer.alloc(48, 2) }),
  encodeResponse({ op: 'publicKey', id: 3, spki: Buffer.alloc(300, 3) }),
  encodeResponse({ op: 'error', id: 4, code: ErrorCode.OVERLOADED, detail: 'too many in flight' }),
];
const stream = Buffer.concat(sample);

describe('FrameReader', () => {
  it('emits a single frame pushed whole, without copying it', () => {
    const { reader, frames, errors } = collect();
    const f = sample[1]!;
    reader.push(f);
    expect(frames).toEqual([f]);
    expect(frames[0]!.buffer).toBe(f.buffer);
    expect(errors).toEqual([]);
    expect(reader.bufferedBytes).toBe(0);
  });

  it('emits many frames from one chunk, in order', () => {
    const { reader, frames } = collect();
    const many = Array.from({ length: 50 }, (_, i) => encodeRequest({ op: 'ping', id: i, payload: Buffer.alloc(i % 7, i) }));
    reader.push(Buffer.concat(many));
    expect(frames).toEqual(many);
    expect(reader.bufferedBytes).toBe(0);
  });

  it('reassembles frames split at every byte offset', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const { reader, frames } = collect();
      reader.push(stream.subarray(0, cut));
      reader.push(stream.subarray(cut));
      expect(frames, `split at ${cut}`).toEqual(sample);
      expect(reader.bufferedBytes).toBe(0);
    }
  });

  it('reassembles frames fed one byte at a time, buffering only the unfinished frame', () => {
    const { reader, frames } = collect();
    let start = 0;
    for (let i = 0; i < stream.length; i++) {
      reader.push(stream.subarray(i, i + 1));
      const done = frames.reduce((n, f) => n + f.length, 0);
      if (done > start) start = done;
      expect(reader.bufferedBytes).toBe(i + 1 - start);
    }
    expect(frames).toEqual(sample);
  });

  it('rejects an oversized body length as soon as the header is in, before buffering the body', () => {
    const { reader, errors } = collect();
    const h = header(Opcode.SIGN, 0xcafe, 16385);
    for (let i = 0; i < 11; i++) reader.push(h.subarray(i, i + 1));
    expect(errors).toEqual([]);
    reader.push(h.subarray(11));
    expect(errors).toHaveLength(1);
    const e = errors[0]!;
    expect(e).toBeInstanceOf(ProtocolError);
    expect(e.wireCode).toBe(ErrorCode.FRAME_TOO_LARGE);
    expect(e.requestId).toBe(0xcafe);
    expect(e.fatal).toBe(true);
    expect(e.message).toMatch(/body length 16385 exceeds the maximum of 16384 bytes/);
    expect(reader.bufferedBytes).toBe(0);
    expect(reader.failed).toBe(true);
  });

  it('emits nothing after the fatal error, however much follows', () => {
    const { reader, frames, errors } = collect(64);
    reader.push(Buffer.concat([sample[0]!, header(Opcode.PING, 9, 65), Buffer.alloc(65), stream]));
    expect(frames).toEqual([sample[0]]);
    expect(errors.map((e) => e.requestId)).toEqual([9]);
    reader.push(stream);
    reader.push(Buffer.alloc(100_000));
    expect(frames).toHaveLength(1);
    expect(errors).toHaveLength(1);
    expect(reader.bufferedBytes).toBe(0);
  });

  it('accepts a body of exactly the maximum', () => {
    const { reader, frames, errors } = collect(300 + 3);
    reader.push(sample[2]!);
    expect(frames).toEqual([sample[2]]);
    expect(errors).toEqual([]);
  });

  it('reproduces a long stream exactly under random chunking', () => {
    const rand = prng(0x66726d72);
    const frames = Array.from({ length: 600 }, (_, i) =>
      i % 3 === 0
        ? encodeRequest({ op: 'ping', id: i, payload: Buffer.alloc(Math.floor(rand() * 1025), i & 0xff) })
        : i % 3 === 1
          ? encodeRequest({ op: 'sign', id: i, keyId: KEY, algorithm: Algorithm.ECDSA_SHA256, digest: Buffer.alloc(32, i & 0xff) })
          : encodeResponse({ op: 'publicKey', id: i, spki: Buffer.alloc(1 + Math.floor(rand() * 4096), i & 0xff) }),
    );
    const all = Buffer.concat(frames);
    for (let round = 0; round < 5; round++) {
      const got = collect();
      let pos = 0;
      while (pos < all.length) {
        // Mostly small chunks with the odd large one, like a real socket.
        const size = rand() < 0.9 ? 1 + Math.floor(rand() * 64) : 1 + Math.floor(rand() * 20_000);
        got.reader.push(all.subarray(pos, pos + size));
        pos += size;
      }
      expect(got.frames.length).toBe(frames.length);
      expect(Buffer.concat(got.frames).equals(all)).toBe(true);
      got.frames.forEach((f, i) => void expect(f.equals(frames[i]!), `frame ${i}`).toBe(true));
      expect(got.errors).toEqual([]);
      expect(got.reader.bufferedBytes).toBe(0);
    }
  });

  it('reports a stream that ends mid-frame through bufferedBytes', () => {
    const { reader, frames } = collect();
    reader.push(stream.subarray(0, stream.length - 1));
    expect(frames).toHaveLength(sample.length - 1);
    expect(reader.bufferedBytes).toBe(sample.at(-1)!.length - 1);
  });

  it('keeps order when onFrame pushes more input', () => {
    const seen: number[] = [];
    const reader: FrameReader = new FrameReader({
      onFrame: (f) => {
        const id = f.readUInt32BE(4);
        seen.push(id);
        if (id === 1) reader.push(Buffer.concat([sample[2]!.subarray(20), sample[3]!]));
      },
      onError: (e) => {
        throw e;
      },
    });
    reader.push(Buffer.concat([sample[0]!, sample[1]!, sample[2]!.subarray(0, 20)]));
    expect(seen).toEqual([1, 2, 3, 4]);
    expect(reader.bufferedBytes).toBe(0);
  });

  it('refuses a maximum the length field cannot express', () => {
    const none = () => undefined;
    expect(() => new FrameReader({ onFrame: none, onError: none, maxBodyBytes: -1 })).toThrow(RangeError);
    expect(() => new FrameReader({ onFrame: none, onError: none, maxBodyBytes: 2 ** 32 })).toThrow(RangeError);
    expect(() => new FrameReader({ onFrame: none, onError: none, maxBodyBytes: 1.5 })).toThrow(RangeError);
  });
});
