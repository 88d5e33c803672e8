/**
 * Request bodies at the admin API, bounded: read up to a limit, and past it
 * read and dropped up to a further bound (DISCARD_BYTES / DISCARD_MS), so the
 * client sees the 413 rather than a reset of a connection it still writes to,
 * as nginx's lingering close does; past the bound the connection ends. A body
 * an answer leaves unread is bounded the same way (boundDrain): any client
 * that reaches the port may send an endless one.
 */
import type http from 'node:http';

/** A PEM chain of a leaf and a few intermediates is a few KiB; anything near this is not one. */
export const MAX_UPLOAD_BYTES = 256 * 1024;
/** Past the limit, this much more is read and dropped before answering 413 (nginx's lingering close reads for up to 5 s). */
const DISCARD_BYTES = 4 * 1024 * 1024;
const DISCARD_MS = 5_000;
/** How often a body Node drops unread is measured against DISCARD_BYTES. */
const DRAIN_POLL_MS = 20;

/**
 * A body the answer left unread (a GET's, a 404's, a refused one still arriving) is read and dropped by Node to its end
 * to keep the connection, however long, an endless chunked one for ever: bounded here as readBody bounds one over the
 * limit (DISCARD_BYTES more or DISCARD_MS), past which the connection ends. Any client that reaches the port may send one.
 */
export function boundDrain(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.once('finish', () => {
    if (req.complete) return;
    // Node's dump emits no 'data' (it drops the bytes in its parser): what it read is the socket's count.
    const socket = req.socket;
    const from = socket.bytesRead;
    // Both listeners go with the first: a kept-alive connection carries many requests, and would gather one per request.
    const done = (): void => {
      clearTimeout(timer);
      clearInterval(poll);
      req.removeListener('end', done);
      socket.removeListener('close', done);
    };
    const cut = (): void => {
      done();
      socket.destroy();
    };
    const timer = setTimeout(cut, DISCARD_MS).unref();
    // Past what readBody lets Node drop for a declared length it answered at once (413 without Connection: close).
    const bound = MAX_UPLOAD_BYTES + DISCARD_BYTES;
    const poll = setInterval(() => socket.bytesRead - from > bound && cut(), DRAIN_POLL_MS).unref();
    req.once('end', done);
    socket.once('close', done);
  });
}

/** Whether a body follows the request's head: a non-zero Content-Length, or any Transfer-Encoding (RFC 9112 §6.3). */
export function hasBody(req: http.IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || declaredLength(req) > 0;
}

export function declaredLength(req: http.IncomingMessage): number {
  const length = Number(req.headers['content-length'] ?? 0);
  return Number.isFinite(length) ? length : Infinity;
}

/** 413 for a body over `limit`; with `close`, the connection ends after it (the rest of the body is not read). */
export function tooLarge(res: http.ServerResponse, close: boolean, limit = MAX_UPLOAD_BYTES): void {
  const body = `${JSON.stringify({ error: { code: 'KEYEDGE_HTTP_BODY_TOO_LARGE', message: `the body is over ${limit} bytes` } }, null, 2)}\n`;
  res
    .writeHead(413, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'x-keyedge-error': 'KEYEDGE_HTTP_BODY_TOO_LARGE',
      ...(close ? { connection: 'close' } : {}),
    })
    .end(body);
}

/** A body over the limit; `close` when what is left of it will not be read (the connection ends after the 413). */
interface TooLarge {
  readonly close: boolean;
}

/**
 * The body as text, or TooLarge. A declared length over the limit is answered
 * at once: Node reads and drops the rest of a declared body after the answer,
 * which keeps the connection usable, so that is left to it up to DISCARD_BYTES
 * past the limit. A chunked body is read and dropped past the limit until it
 * ends, up to DISCARD_BYTES / DISCARD_MS, so the 413 reaches a client that has
 * finished writing. Never rejects.
 */
export function readBody(req: http.IncomingMessage, limit: number): Promise<string | TooLarge> {
  return new Promise((resolve) => {
    const declared = declaredLength(req);
    if (declared > limit) return resolve({ close: declared > limit + DISCARD_BYTES });
    const chunks: Buffer[] = [];
    let length = 0;
    let timer: NodeJS.Timeout | undefined;
    const over = (close: boolean): void => {
      clearTimeout(timer);
      resolve({ close });
    };
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length <= limit) chunks.push(chunk);
      else if (length > limit + DISCARD_BYTES) over(true);
      else if (timer === undefined) {
        chunks.length = 0;
        timer = setTimeout(() => over(true), DISCARD_MS);
      }
    });
    req.on('end', () => (length > limit ? over(false) : resolve(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', () => over(true));
  });
}
