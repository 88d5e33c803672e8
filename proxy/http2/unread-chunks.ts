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
 * So a stream with more than MAX_UNREAD_CHUNKS chunks unread, averaging
 * under MIN_CHUNK_BYTES, is reset with ENHANCE_YOUR_CALM, a reset that counts
 * against its connection's bound (reset-guard.ts). Counted at each chunk
 * Node hands over while some are unread: a stream read as its body arrives
 * (body.ts, whose own chunks are bounded there) holds none, whatever the
 * frames' size; a client whose frames carry a few hundred bytes or more
 * never comes near it.
 *
 * How: the stream's `push`, which Node calls with each chunk it reads
 * (lib/internal/stream_base_commons.js onStreamRead, Node 20 to 24), is
 * shadowed for the stream's life by one that counts first. Cost per stream:
 * one property; per chunk, two comparisons.
 */
import { constants, type ServerHttp2Stream } from 'node:http2';
import { Readable } from 'node:stream';

/** Chunks unread past which their average size is looked at: 1,024 tiny ones are some 100 KB of heap. */
const MAX_UNREAD_CHUNKS = 1024;
/** An average DATA payload under this, with that many unread, is a client sending its body a few bytes a frame. */
const MIN_CHUNK_BYTES = 64;

const UNREAD = Symbol('keyedge.unread-chunks');
type Counted = ServerHttp2Stream & { [UNREAD]?: number };

const push = Readable.prototype.push;

function boundedPush(this: Counted, chunk: unknown, encoding?: BufferEncoding): boolean {
  if (chunk !== null && chunk !== undefined) {
    // Nothing unread: this chunk is the first of a new count.
    const unread = this.readableLength === 0 ? 1 : (this[UNREAD] ?? 0) + 1;
    this[UNREAD] = unread;
    if (unread > MAX_UNREAD_CHUNKS && this.readableLength < unread * MIN_CHUNK_BYTES) {
      if (!this.closed && !this.destroyed) this.close(constants.NGHTTP2_ENHANCE_YOUR_CALM);
      return false;
    }
  }
  return push.call(this, chunk, encoding);
}

/** Called once, as the stream is handed over. */
export function boundUnreadChunks(stream: ServerHttp2Stream): void {
  (stream as Counted).push = boundedPush;
}
