/**
 * The messages of the key-server protocol (keyserver/protocol/SPEC.md) as
 * values: what decode.ts makes of a frame and encode.ts makes a frame of.
 * Buffers in a decoded message alias the frame (codec.ts says why).
 */
import { type AlgorithmByte, type AlgorithmInfo, describeTag, Tag } from './constants.js';

export type Request =
  | { op: 'ping'; id: number; payload: Buffer }
  | { op: 'getPublicKey'; id: number; keyId: Buffer }
  | { op: 'sign'; id: number; keyId: Buffer; algorithm: AlgorithmByte; digest: Buffer };

export type Response =
  | { op: 'pong'; id: number; payload: Buffer }
  | { op: 'publicKey'; id: number; spki: Buffer }
  | { op: 'signature'; id: number; signature: Buffer }
  | { op: 'error'; id: number; code: number; detail: string };

export interface FrameHeader {
  version: number;
  opcode: number;
  requestId: number;
  bodyLength: number;
}

/** The refusal of a digest whose length is not its algorithm's: both directions check it, in the same words. */
export function digestMismatch(length: number, info: AlgorithmInfo): string {
  return `SIGN: ${describeTag(Tag.DIGEST)} is ${length} bytes, but ${info.name} needs a ${info.digestBytes}-byte ${info.hash} digest`;
}
