/**
 * Reading a request body before and while it goes to an origin, so that a
 * slow client holds memory, bounded, rather than an origin connection.
 *
 * A body that ends within `bufferBytes` is read whole first and sent as one
 * Buffer (with its Content-Length, as nginx does after buffering): a client
 * trickling its upload never reaches an origin until it is done. A longer
 * body, or one arriving while this worker's bodies already hold
 * `bufferTotalBytes`, streams: what was read so far, then the rest as it
 * comes (with backpressure: the client is read as fast as the origin takes it).
 * nginx spills such bodies to disk instead; keyedge keeps no files, and its
 * streamed uploads are capped to half an origin's connections (origin-gate.ts).
 *
 * Failures (errors.ts), each with a `code`:
 * - KEYEDGE_HTTP_BODY_TOO_LARGE past `maxBytes` (counted, not declared: a
 *   chunked body has no Content-Length);
 * - KEYEDGE_HTTP_BODY_TIMEOUT when nothing arrived for `idleTimeoutMs`
 *   (nginx's client_body_timeout: time between two reads, not counting time
 *   the proxy itself was not reading because the origin was slow to take it)
 *   or the whole body took longer than `timeoutMs`;
 * - ECONNRESET when the client left before the end.
 * While streaming, the failure destroys the stream, which makes undici abort
 * the origin request and close that connection.
 */
import type { IncomingMessage } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import { ClientGone, HttpFailure } from './errors.js';

export interface RequestBodyLimits {
  /** A body up to this is read whole before the origin is contacted. */
  readonly bufferBytes: number;
  /** What bodies being read whole may hold together in this worker. */
  readonly bufferTotalBytes: number;
  /** Longest time with no body byte arriving while the proxy is reading. */
  readonly idleTimeoutMs: number;
  /** Longest time for the whole body, from when it is first read. */
  readonly timeoutMs: number;
}

/** Chunks a body being read whole may hold before they are joined into one: a usual body never has that many. */
const COALESCE_AT = 64;

const DEFAULT_LIMITS: RequestBodyLimits = { bufferBytes: 65_536, bufferTotalBytes: 64 * 1024 * 1024, idleTimeoutMs: 60_000, timeoutMs: 300_000 };

/** A body as it is given to undici: whole, or streaming. */
export type RequestBody = Buffer | Readable;

export function bodyError(code: 'KEYEDGE_HTTP_BODY_TOO_LARGE' | 'KEYEDGE_HTTP_BODY_TIMEOUT' | 'ECONNRESET', message: string): Error {
  return code === 'ECONNRESET' ? new ClientGone(message) : new HttpFailure(code, message);
}

export class RequestBodies {
  readonly limits: RequestBodyLimits;
  /** Bytes held by bodies read whole, until `release`. */
  #held = 0;

  constructor(limits: RequestBodyLimits = DEFAULT_LIMITS) {
    this.limits = limits;
  }

  /** Bytes held by bodies read whole and not yet released (for tests and metrics). */
  get held(): number {
    return this.#held;
  }

  /**
   * Gives back what a whole body held (`read` resolved with a Buffer): called
   * once, when its request is done with it, whatever the outcome. Not tied to
   * the answer's 'close': a queued pipelined answer whose client left never
   * gets one, and its bytes would stay counted for the worker's life.
   */
  release(body: RequestBody | null): void {
    if (Buffer.isBuffer(body)) this.#held -= body.length;
  }

  /**
   * `req`'s body as a stream from its first byte, with the same limits and
   * timeouts: for a client that sends nothing before it is asked (Expect:
   * 100-continue), whose body cannot be read ahead.
   */
  stream(req: IncomingMessage, maxBytes: number): Readable {
    return streamBody(req, [], maxBytes, this.limits, this.limits.timeoutMs);
  }

  /**
   * Reads `req`'s body: resolves with it whole (a Buffer), or with a stream
   * of it once it outgrows the buffer; rejects with the failures above
   * before the body is handed over. A whole body counts against
   * `bufferTotalBytes` until it is given back with `release`.
   */
  read(req: IncomingMessage, maxBytes: number): Promise<RequestBody> {
    const { bufferBytes, bufferTotalBytes, idleTimeoutMs, timeoutMs } = this.limits;
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      // The leading entries of `chunks` that are joins of COALESCE_AT chunks each.
      let joined = 0;
      const started = Date.now();
      const fail = (err: Error): void => {
        stop();
        this.#held -= size;
        reject(err);
      };
      const idle = setTimeout(() => fail(bodyError('KEYEDGE_HTTP_BODY_TIMEOUT', `no request body bytes for ${idleTimeoutMs} ms`)), idleTimeoutMs);
      const total = setTimeout(() => fail(bodyError('KEYEDGE_HTTP_BODY_TIMEOUT', `request body not complete within ${timeoutMs} ms`)), timeoutMs);
      const onData = (chunk: Buffer): void => {
        if (size + chunk.length > maxBytes) return fail(bodyError('KEYEDGE_HTTP_BODY_TOO_LARGE', `request body over ${maxBytes} bytes`));
        if (size + chunk.length > bufferBytes || this.#held + chunk.length > bufferTotalBytes) {
          // Outgrown: what was held moves into the stream, which holds its own bounded buffer.
          stop();
          this.#held -= size;
          chunks.push(chunk);
          resolve(streamBody(req, chunks, maxBytes, this.limits, timeoutMs - (Date.now() - started)));
          return;
        }
        chunks.push(chunk);
        size += chunk.length;
        this.#held += chunk.length;
        // A body sent a few bytes a chunk (HTTP/2 DATA frames, HTTP/1.1 chunks): each is a Buffer object, about a hundred
        // bytes of heap besides its bytes, which `bufferTotalBytes` does not count; a 64 KiB body a byte a frame was some
        // 6 MB. Each COALESCE_AT chunks not yet joined become one: a 64th of the objects, each byte copied once.
        if (chunks.length - joined === COALESCE_AT) {
          chunks.push(Buffer.concat(chunks.splice(joined)));
          joined++;
        }
        idle.refresh();
      };
      const onEnd = (): void => {
        stop();
        resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
      };
      const onClose = (): void => {
        if (!req.complete) fail(bodyError('ECONNRESET', 'the client closed the connection before the end of its request body'));
      };
      const stop = (): void => {
        clearTimeout(idle);
        clearTimeout(total);
        req.pause();
        req.off('data', onData);
        req.off('end', onEnd);
        req.off('close', onClose);
        req.off('error', onClose);
      };
      req.on('data', onData);
      req.once('end', onEnd);
      req.once('close', onClose);
      // The client's reset comes as an error too; its meaning is the close's.
      req.once('error', onClose);
      quietErrors(req);
    });
  }
}

/**
 * A listener for `req`'s 'error' for the rest of its life, beside the ones
 * a read takes off when it stops. Node checks that a request has one when it
 * is destroyed (abortIncoming: the client's connection closed before the
 * body's end) and emits the error a tick later: a read that stopped in
 * between (undici let go of the body when the client's answer closed, the
 * same close) left none, and the error ended the worker. One bad chunk after
 * `Expect: 100-continue` was enough. Its meaning is the close's, which the
 * read hears.
 */
function quietErrors(req: IncomingMessage): void {
  if (!req.listeners('error').includes(ignoreError)) req.on('error', ignoreError);
}

function ignoreError(): void {}

/** Each side of a streamed body's buffer (streamBody). */
const STREAM_BUFFER_BYTES = 1024;

/**
 * `head` (what was read of `req`'s body) and the rest of it as one stream,
 * with the same limits (`timeoutMs` is what is left of the whole body's): the idle timer only runs while the
 * proxy is reading (a full stream, i.e. an origin slow to take the body, or a
 * request waiting for an origin connection, pauses `req` and the timer with it).
 */
function streamBody(req: IncomingMessage, head: readonly Buffer[], maxBytes: number, limits: RequestBodyLimits, timeoutMs: number): Readable {
  let seen = 0;
  const counted = new Transform({
    // Its buffers are bounds on objects as much as on bytes: an HTTP/2 client sending its body a byte a DATA frame
    // makes a chunk object of each, and at Node's default (16 KiB each side on Node 20, 64 KiB on 22 and later) the
    // whole 64 KiB window of them, some 65,000 objects, waited here for an origin place, out of the tiny-frame
    // bound's sight (http2/unread-chunks.ts counts the stream's own buffer). At 1 KiB a side, a chunk or two of a
    // real upload, at most some 2,000 tiny ones: the rest stays in the stream, where the bound sees it.
    writableHighWaterMark: STREAM_BUFFER_BYTES,
    readableHighWaterMark: STREAM_BUFFER_BYTES,
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      idle.refresh();
      if (seen > maxBytes) done(bodyError('KEYEDGE_HTTP_BODY_TOO_LARGE', `request body over ${maxBytes} bytes`));
      else done(null, chunk);
    },
  });
  const fail = (err: Error): void => {
    if (!counted.destroyed) counted.destroy(err);
  };
  const idle = setTimeout(function check() {
    if (req.isPaused() || req.readableLength > 0) idle.refresh();
    else fail(bodyError('KEYEDGE_HTTP_BODY_TIMEOUT', `no request body bytes for ${limits.idleTimeoutMs} ms`));
  }, limits.idleTimeoutMs);
  const total = setTimeout(
    () => fail(bodyError('KEYEDGE_HTTP_BODY_TIMEOUT', `request body not complete within ${limits.timeoutMs} ms`)),
    Math.max(0, timeoutMs),
  );
  const onClose = (): void => {
    if (!req.complete) fail(bodyError('ECONNRESET', 'the client closed the connection before the end of its request body'));
  };
  const stop = (): void => {
    clearTimeout(idle);
    clearTimeout(total);
    req.off('close', onClose);
    req.off('error', onClose);
  };
  req.once('close', onClose);
  req.once('error', onClose);
  quietErrors(req);
  req.once('end', stop);
  counted.once('close', () => {
    stop();
    req.unpipe(counted);
  });
  // Until undici takes the body (an origin connection may be a while coming) and after it let go, nobody else listens.
  counted.on('error', () => undefined);
  for (const chunk of head) counted.write(chunk);
  req.pipe(counted);
  return counted;
}
