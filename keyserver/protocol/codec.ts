/**
 * Encoder and decoder for key-server frames (keyserver/protocol/SPEC.md).
 *
 * Pure: Buffers in, Buffers or plain objects out, no I/O, no clocks. Both the
 * key server and its client (the proxy) use it, so the two sides cannot
 * disagree about the format.
 *
 * Aliasing: every Buffer in a decoded Request/Response is a subarray of the
 * frame passed in, not a copy, because this runs once per TLS handshake.
 * A caller that keeps a decoded value beyond the frame's life, or that reuses
 * the frame's memory, must copy first.
 *
 * Failures are ProtocolError: `wireCode` is what the server sends back,
 * `requestId` is set once the 12-byte header was readable, `fatal` is set only
 * when the frame's boundaries themselves are wrong (SPEC.md, "Connection
 * rules"). Encoders reject anything the decoder would reject, so a peer never
 * receives a frame we produced and then complains about.
 *
 * This module is what both sides import; the work is in decode.ts (frames to
 * messages), encode.ts (messages to frames) and messages.ts (the messages as
 * values).
 */
export { decodeRequest, decodeResponse, readHeader } from './decode.js';
export { encodeRequest, encodeResponse, truncateUtf8 } from './encode.js';
export type { FrameHeader, Request, Response } from './messages.js';
