/**
 * Cuts a byte stream into key-server frames (SPEC.md, "Framing").
 *
 * Contract:
 * - The owner of one connection (the key server per accepted socket, the
 *   proxy per key-server connection) creates one FrameReader and calls
 *   `push` with every chunk the socket delivers, in order.
 * - `onFrame` receives each complete frame (12-byte header + body, exactly),
 *   synchronously and in stream order; pass it to decodeRequest or
 *   decodeResponse. The framer reads only the body length: version, opcode
 *   and items are the decoder's business, so those faults stay per request.
 * - `push` takes ownership of the chunk: a frame lying inside one chunk is a
 *   subarray of it (no copy), so the caller must not reuse the chunk's memory,
 *   and a kept frame keeps its whole chunk alive. A frame spanning chunks is
 *   copied into a fresh Buffer, or, when it was gathered from small chunks, may
 *   be a subarray of the 4 KiB buffer those are copied into (which it then
 *   keeps alive). Either way the frame is the callee's.
 * - `onError` fires at most once, for a body length above maxBodyBytes, as
 *   soon as the header is in and before any of the body is buffered, so a
 *   peer cannot make us hold a huge body. The error is fatal: the stream has
 *   lost its frame boundaries, so the owner answers FRAME_TOO_LARGE with the
 *   error's request id and closes. Everything pushed afterwards is dropped.
 * - `onFrame` may call `push` (frames still come out in order); if it throws,
 *   the exception leaves `push` and frames already buffered come out on the
 *   next `push`.
 * - At end of stream, `bufferedBytes > 0` means the peer stopped mid-frame.
 * - A small chunk that continues an unfinished frame is copied, into a
 *   buffer of ours that such chunks share, rather than kept: a peer sending
 *   a frame a byte per read made us keep a Buffer per byte (some 200 bytes
 *   of heap each, 3 MB for a frame of 16 KiB) until the frame was whole.
 *   Whole frames in one chunk, the usual case, are not copied.
 */
import { ProtocolError } from '../shared/errors.js';
import { DEFAULT_MAX_BODY_BYTES, ErrorCode, HEADER_BYTES, MAX_BODY_LENGTH_FIELD } from './constants.js';

export interface FrameReaderOptions {
  onFrame: (frame: Buffer) => void;
  onError: (err: ProtocolError) => void;
  maxBodyBytes?: number;
}

const RELEASED = Buffer.alloc(0);
/** A chunk shorter than this that continues an unfinished frame is copied into a shared buffer of ours... */
const SMALL_CHUNK = 512;
/** ...of this many bytes: one Buffer for the bytes of many small reads. */
const SMALL_CHUNKS_BUFFER = 4096;
/** Consumed list slots are only reclaimed in batches, so dropping a chunk stays O(1) amortised. */
const COMPACT_AFTER = 64;

export class FrameReader {
  readonly #onFrame: (frame: Buffer) => void;
  readonly #onError: (err: ProtocolError) => void;
  readonly #maxBodyBytes: number;

  // Unconsumed input is chunks[head..] with the first `offset` bytes of
  // chunks[head] already used. Keeping chunks instead of concatenating on
  // every push keeps the work linear in the bytes received.
  #chunks: Buffer[] = [];
  #head = 0;
  #offset = 0;
  #buffered = 0;
  /** Header + body length of the frame at the front, once its header has been read; -1 before. */
  #frameLength = -1;
  #failed = false;
  readonly #headerScratch = Buffer.alloc(HEADER_BYTES);
  /** Where small chunks are copied (SMALL_CHUNK): bytes up to #smallEnd are written, and are never written again. */
  #small = RELEASED;
  #smallEnd = 0;
  /** The chunk in the list that is a view of #small, from #smallStart to #smallEnd, which the next small chunk extends. */
  #smallView = RELEASED;
  #smallStart = 0;

  constructor(options: FrameReaderOptions) {
    const max = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    if (!Number.isInteger(max) || max < 0 || max > MAX_BODY_LENGTH_FIELD) {
      throw new RangeError(`maxBodyBytes must be an integer from 0 to ${MAX_BODY_LENGTH_FIELD}, got ${max}`);
    }
    this.#onFrame = options.onFrame;
    this.#onError = options.onError;
    this.#maxBodyBytes = max;
  }

  /** Bytes received but not yet emitted as a frame. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /** True once a fatal error was reported; all later input is ignored. */
  get failed(): boolean {
    return this.#failed;
  }

  push(chunk: Buffer): void {
    if (this.#failed || chunk.length === 0) return;
    if (this.#buffered > 0 && chunk.length < SMALL_CHUNK) this.#pushSmall(chunk);
    else this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    this.#drain();
  }

  /** Copies `chunk` into the shared buffer: onto the end of the last chunk when that is a view of it with room after, else as a new view. */
  #pushSmall(chunk: Buffer): void {
    const room = this.#smallEnd + chunk.length <= this.#small.length;
    const last = this.#chunks.length - 1;
    const extend = room && last >= this.#head && this.#chunks[last] === this.#smallView;
    if (!room) {
      // Full: a fresh one. Frames and chunks cut from the old one keep it alive as long as they need it.
      this.#small = Buffer.allocUnsafe(SMALL_CHUNKS_BUFFER);
      this.#smallEnd = 0;
    }
    if (!extend) this.#smallStart = this.#smallEnd;
    chunk.copy(this.#small, this.#smallEnd);
    this.#smallEnd += chunk.length;
    // Bytes before #smallEnd are never written again, so views already handed out (frames) stay as they were.
    this.#smallView = this.#small.subarray(this.#smallStart, this.#smallEnd);
    if (extend) this.#chunks[last] = this.#smallView;
    else this.#chunks.push(this.#smallView);
  }

  #drain(): void {
    while (!this.#failed) {
      if (this.#frameLength < 0) {
        if (this.#buffered < HEADER_BYTES) return;
        const header = this.#peekHeader();
        const bodyLength = header.readUInt32BE(8);
        if (bodyLength > this.#maxBodyBytes) {
          this.#fail(header.readUInt32BE(4), bodyLength);
          return;
        }
        this.#frameLength = HEADER_BYTES + bodyLength;
      }
      if (this.#buffered < this.#frameLength) return;
      const frame = this.#take(this.#frameLength);
      // State is settled before the callback so a throwing or re-entrant onFrame sees a consistent reader.
      this.#frameLength = -1;
      this.#onFrame(frame);
    }
  }

  /** The first 12 buffered bytes; a view when they sit in one chunk, else copied into scratch. */
  #peekHeader(): Buffer {
    const first = this.#chunks[this.#head]!;
    if (first.length - this.#offset >= HEADER_BYTES) return first.subarray(this.#offset, this.#offset + HEADER_BYTES);
    let filled = 0;
    let offset = this.#offset;
    for (let i = this.#head; filled < HEADER_BYTES; i++) {
      const c = this.#chunks[i]!;
      const n = Math.min(c.length - offset, HEADER_BYTES - filled);
      c.copy(this.#headerScratch, filled, offset, offset + n);
      filled += n;
      offset = 0;
    }
    return this.#headerScratch;
  }

  /** Removes and returns the next `n` bytes (n <= buffered). */
  #take(n: number): Buffer {
    this.#buffered -= n;
    const first = this.#chunks[this.#head]!;
    if (first.length - this.#offset >= n) {
      const view = first.subarray(this.#offset, this.#offset + n);
      this.#offset += n;
      if (this.#offset === first.length) this.#dropHead();
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.#chunks[this.#head]!;
      const count = Math.min(c.length - this.#offset, n - filled);
      c.copy(out, filled, this.#offset, this.#offset + count);
      filled += count;
      this.#offset += count;
      if (this.#offset === c.length) this.#dropHead();
    }
    return out;
  }

  #dropHead(): void {
    this.#chunks[this.#head] = RELEASED;
    this.#head++;
    this.#offset = 0;
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    } else if (this.#head >= COMPACT_AFTER && this.#head * 2 >= this.#chunks.length) {
      this.#chunks.splice(0, this.#head);
      this.#head = 0;
    }
  }

  #fail(requestId: number, bodyLength: number): void {
    this.#failed = true;
    this.#chunks = [];
    this.#head = 0;
    this.#offset = 0;
    this.#buffered = 0;
    this.#onError(
      new ProtocolError(
        ErrorCode.FRAME_TOO_LARGE,
        `body length ${bodyLength} exceeds the maximum of ${this.#maxBodyBytes} bytes; closing the connection`,
        requestId,
        true,
      ),
    );
  }
}
