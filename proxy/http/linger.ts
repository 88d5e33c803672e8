/**
 * Closing an HTTP/1.1 connection after our last answer while the client may
 * still be sending (a request body we did not read): the lingering close of
 * RFC 9112 §9.6, as nginx does it. Closing a socket with unread bytes makes
 * the kernel reset the connection, and the reset can destroy the answer
 * before the client has read it; keeping the connection open instead lets
 * a client with an endless body (a chunked body that never ends, a huge
 * Content-Length trickled) hold it until Node's whole-request timeout,
 * minutes. So the connection is half-closed after the answer, what still
 * arrives is read and dropped, and it is destroyed when the client closes
 * or after LINGER_MS, whichever comes first.
 *
 * Bound: LINGER_MS in all from our end, not refreshed by what arrives
 * (nginx: `lingering_time` 30 s in all, `lingering_timeout` 5 s between
 * reads); what a client can make us read and drop is what it sends in that
 * time, with no copy kept.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** How long a connection we ended may stay open for the client to read our answer (nginx: lingering_timeout 5 s). */
export const LINGER_MS = 5_000;

/**
 * Whether `req` declares a body (Content-Length over 0, any
 * Transfer-Encoding) that has not been read whole. Node hands a request
 * over before parsing its body, so such a body is unread when a handler
 * answers at once, even one that arrived with the head.
 */
export function bodyUnread(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * Our own answer to `req` (one we give without reading its body): when the
 * body is unread, the answer says `Connection: close` (the rest of the body
 * is never parsed as a next request) and the connection lingers after it
 * (closeAfterAnswer). Call before the answer's head is written. Returns
 * whether it will close.
 */
export function closeIfBodyUnread(req: IncomingMessage, res: ServerResponse): boolean {
  if (!bodyUnread(req) || res.headersSent) return false;
  res.setHeader('connection', 'close');
  closeAfterAnswer(req, res);
  return true;
}

/**
 * Once `res` (an answer with `Connection: close`) is sent, with `req`'s body
 * still coming: Node would end the socket and destroy it as soon as the end
 * is flushed. Instead the connection stays half-closed, reading and
 * dropping what arrives, until the client closes or LINGER_MS pass.
 */
export function closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket;
  res.once('finish', () => {
    if (req.complete || socket.destroyed) return;
    // Registered by Node's destroySoon() in its own 'finish' listener, which runs before this one.
    socket.removeListener('finish', socket.destroy);
    lingerAfterEnd(socket);
    req.resume();
  });
}

/** `socket`, ended by us (or about to be): destroyed when the client ends it too, or after LINGER_MS, what it sends till then read and dropped. */
export function lingerAfterEnd(socket: Duplex): void {
  const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
  socket.once('close', () => clearTimeout(timer));
  socket.once('end', () => socket.destroy());
}
