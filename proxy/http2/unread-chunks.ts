/**
 * Bounds how many separate chunks an HTTP/2 stream's request body may hold
 * unread in Node's buffer. Node keeps each DATA frame's payload as a Buffer
 * object of its own, about a hundred bytes of heap besides its bytes, until
 * it is read. Flow control bounds the bytes a stream holds unread (its
 * 64 KiB window, settings.ts), not the objects: sent a byte a frame, one
 * window is 65,535 of them, some 6 MB. A client that granted no window to
 * our answers (so their streams stayed open until `limits.sendTimeoutMs`)
 * held that on each of 128 streams a connection, and a few connections took
 * the worker's heap (test/abuse-http2-review.test.ts); streams paused while
 * their upload waited for an origin connection held the same.
 *
 * So a stream whose buffer took more than MAX_UNREAD_CHUNKS chunks averaging
 * under MIN_CHUNK_BYTES without once being empty is reset with
 * ENHANCE_YOUR_CALM, a reset that counts against its connection's bound
 * (reset-guard.ts) and is logged as KEYEDGE_HTTP_TINY_FRAMES with status
 * 444 when no answer head went out, not as the client's leaving (499,
 * stream.ts). Counted in runs of MAX_UNREAD_CHUNKS + 1
 * chunks, each run started when the buffer was empty or the last run passed:
 * - a stream read as its body arrives (body.ts, whose own chunks are bounded
 *   there) holds none, whatever the frames' size;
 * - an upload streamed to an origin that takes it slower than the client
 *   sends may keep its buffer from emptying for the whole upload, thousands
 *   of frames (only the window of them unread at a time): its runs average
 *   what its frames carry, so frames of a few hundred bytes or more never
 *   come near. Counting chunks alone since the buffer was last empty (with
 *   the bytes unread under 64 a chunk) would have reset such an upload;
 * - an unread stream takes no more than its window and the 16 KiB Node
 *   takes before it stops granting more (some 80 KiB) in all: one run may
 *   pass on large frames, and the next, with what is left, cannot; no run's
 *   large frames vouch for the next run's tiny ones (one average since the
 *   buffer was last empty would let a client that first sent megabytes in
 *   large frames to a slow origin follow them with a window of one-byte
 *   frames).
 *
 * What a chunk holds: Node's session hands each DATA frame over as a view of
 * the whole socket read it came in (a decrypted TLS record, up to 16 KiB; tens
 * of KiB without TLS), so a frame of one byte, held unread, kept that read
 * alive. A client that sent each tiny frame with a large one Node reads and
 * drops behind it (a frame of unknown type, RFC 9113 §4.1: ignored) made the
 * 1,024 one-byte frames the bound lets in hold 16 MB, not the kilobyte they
 * carry; 128 such streams a connection, gigabytes. So a chunk smaller than
 * half its read is copied into memory of its own as it is pushed: what an
 * unread stream holds is then at most twice the bytes it holds (its window
 * and Node's 16 KiB) and the objects of its chunks. Large frames, most of
 * their read, are not copied.
 *
 * How: the stream's `push`, which Node calls with each chunk it reads
 * (lib/internal/stream_base_commons.js onStreamRead, Node 20 to 24), is
 * shadowed for the stream's life by one that counts first. Cost per stream:
 * two numbers; per chunk, a look at `readableLength` (public, as all this
 * reads: no Node internals), two sums and a comparison, and one more at a
 * run's end; a chunk under half its read, a copy of its bytes.
 */
import { constants, type ServerHttp2Stream } from 'node:http2';
import { Readable } from 'node:stream';

/** Chunks past which a run's average size is looked at: 1,024 tiny ones are some 100 KB of heap. */
const MAX_UNREAD_CHUNKS = 1024;
/** An average DATA payload under this, over a run that long, is a client sending its body a few bytes a frame. */
const MIN_CHUNK_BYTES = 64;

/** Chunks and bytes of the current run. */
const CHUNKS = Symbol('keyedge.unread-chunks');
const BYTES = Symbol('keyedge.unread-bytes');
type Counted = ServerHttp2Stream & { [CHUNKS]: number; [BYTES]: number };

/** Streams reset here: their access line says KEYEDGE_HTTP_TINY_FRAMES. */
const calmed = new WeakSet<ServerHttp2Stream>();

const push = Readable.prototype.push;

function boundedPush(this: Counted, chunk: unknown, encoding?: BufferEncoding): boolean {
  if (chunk !== null && chunk !== undefined) {
    const length = (chunk as Buffer).length;
    // Nothing unread: this chunk starts a new run.
    if (this.readableLength === 0) {
      this[CHUNKS] = 1;
      this[BYTES] = length;
    } else if (++this[CHUNKS] <= MAX_UNREAD_CHUNKS) {
      this[BYTES] += length;
    } else if (this[BYTES] + length < this[CHUNKS] * MIN_CHUNK_BYTES) {
      calmed.add(this);
      if (!this.closed && !this.destroyed) this.close(constants.NGHTTP2_ENHANCE_YOUR_CALM);
      return false;
    } else {
      // The run passed: the next one is judged on its own chunks.
      this[CHUNKS] = 0;
      this[BYTES] = 0;
    }
    // A view of the whole socket read it came in (the header): a few bytes would keep all of it.
    if (length * 2 < (chunk as Buffer).buffer.byteLength) return push.call(this, own(chunk as Buffer), encoding);
  }
  return push.call(this, chunk, encoding);
}

/** `chunk`'s bytes in memory of their own: a copy the size of the chunk. */
function own(chunk: Buffer): Buffer {
  const copy = Buffer.allocUnsafeSlow(chunk.length);
  chunk.copy(copy);
  return copy;
}

/** Called once, as the stream is handed over. */
export function boundUnreadChunks(stream: ServerHttp2Stream): void {
  const counted = stream as Counted;
  counted[CHUNKS] = 0;
  counted[BYTES] = 0;
  counted.push = boundedPush;
}

/** Whether the stream was reset here (its body sent in too many tiny frames): our refusal, not the client's leaving. */
export function tinyFramesReset(stream: ServerHttp2Stream): boolean {
  return calmed.has(stream);
}
