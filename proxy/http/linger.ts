/**
 * Closing an HTTP/1.1 connection after our last answer while the client may
 * still be sending (a request body we did not read, requests pipelined
 * behind the last one): the lingering close of
 * RFC 9112 §9.6, as nginx does it. Closing a socket with unread bytes makes
 * the kernel reset the connection, and the reset can destroy the answer
 * before the client has read it; keeping the connection open instead lets
 * a client with an endless body (a chunked body that never ends, a huge
 * Content-Length trickled) hold it until Node's whole-request timeout,
 * minutes. So the connection is half-closed after the answer, what still
 * arrives is read and dropped, and it is destroyed when the client closes
 * or after LINGER_MS, whichever comes first.
 *
 * Nothing the client sends after that request is processed (RFC 9112 §9.6:
 * a server that sends `close` must not process further requests on the
 * connection): Node's parser reads on while the connection lingers, and a
 * request after the unread body would reach the origin, its answer never
 * sent. The server's listeners are wrapped in `notAfterClose` (server.ts).
 *
 * Bound: LINGER_MS in all from our end, not refreshed by what arrives
 * (nginx: `lingering_time` 30 s in all, `lingering_timeout` 5 s between
 * reads); what a client can make us read and drop is what it sends in that
 * time, with no copy kept.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** Connections an answer of ours closes after the request it answers (closeAfterAnswer). */
const closing = new WeakSet<Duplex>();

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
 * body is unread, a small declared one is dropped and the connection kept
 * when nothing else closes it (discardable); any other makes the answer say
 * `Connection: close` (the rest of the body is never parsed as a next
 * request) and the connection linger after it (closeAfterAnswer). Call
 * before the answer's head is written. Returns whether it will close.
 */
export function closeIfBodyUnread(req: IncomingMessage, res: ServerResponse): boolean {
  if (!bodyUnread(req) || res.headersSent) return false;
  // Only while the connection stays open: an answer that closes it (the client's `close`, HTTP/1.0, a 413 or 408 of
  // ours) must linger, or its reset can destroy the answer, and nothing after it may be processed (notAfterClose).
  const keeps = res.shouldKeepAlive && String(res.getHeader('connection') ?? '').toLowerCase() !== 'close';
  if (keeps && discardable(req)) {
    discardWithin(req, res);
    return false;
  }
  res.setHeader('connection', 'close');
  closeAfterAnswer(req, res);
  return true;
}

/**
 * A declared body this small (Content-Length, no Transfer-Encoding) is read
 * and dropped after our answer and the connection kept, as nginx discards a
 * refused request's body (ngx_http_discard_request_body): its end is known,
 * so the next request is found where it starts. Larger or chunked bodies
 * close the connection (closeAfterAnswer).
 */
const DISCARD_KEPT_BYTES = 64 * 1024;

/**
 * A small declared body, and no `Expect`: a client awaiting 100 (Continue)
 * may never send the body we did not invite (RFC 9110 §10.1.1), so its next
 * bytes could be a request or the body; that connection closes.
 */
function discardable(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  if (req.headers['transfer-encoding'] !== undefined || req.headers.expect !== undefined || length === undefined) return false;
  return /^\d{1,7}$/.test(length) && Number(length) <= DISCARD_KEPT_BYTES;
}

/**
 * Node reads and drops `req`'s unread body once `res` is sent, and keeps the
 * connection; a body that does not come whole within LINGER_MS of that ends
 * the connection (a slow client holds it no longer than a lingering close).
 */
function discardWithin(req: IncomingMessage, res: ServerResponse): void {
  res.once('finish', () => {
    if (req.complete || req.socket.destroyed) return;
    const socket = req.socket;
    const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
    // Both listeners go with the first: a kept-alive socket carries many requests, and would gather one per request.
    const done = (): void => {
      clearTimeout(timer);
      req.removeListener('end', done);
      socket.removeListener('close', done);
    };
    req.once('end', done);
    socket.once('close', done);
  });
}

/**
 * Once `res` (an answer with `Connection: close`) is sent: Node would end the
 * socket and destroy it as soon as the end is flushed. Instead the connection
 * stays half-closed, reading and dropping what arrives, until the client
 * closes or LINGER_MS pass: with `req`'s body still coming, and with it read
 * whole too, since the client did not ask for the close (our refusal, a
 * reload's or the stop's: retire.ts) and may have pipelined requests behind
 * it, whose bytes, meeting a closed socket, drew a reset that took away the
 * part of the answer the client had not read yet.
 */
export function closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket;
  // From now on: what Node parses on this connection comes after this request (its body is not all parsed yet).
  closing.add(socket);
  res.once('finish', () => {
    if (socket.destroyed) return;
    // Node ended the socket (destroySoon) in its 'finish' listener, which runs before this one, if the answer closes
    // it; one that does not (a head already sent without `close`, Node keeping the connection) is left to Node.
    if (req.complete) return socket.writable ? undefined : lingerAfterLastAnswer(socket);
    // Registered by Node's destroySoon() in its own 'finish' listener, which runs before this one.
    socket.removeListener('finish', socket.destroy);
    lingerAfterEnd(socket);
    req.resume();
  });
}

/**
 * `socket`, whose last answer (one that closes it) has just been sent while the
 * client may still be sending: what it pipelined behind a request that said
 * `close` (client-error.ts), or behind one an answer of ours closed the
 * connection after (closeAfterAnswer). Node's server ended it in that answer's 'finish'
 * (destroySoon), to destroy it once the end is flushed; the client's next
 * bytes would then meet a closed socket, and its reset can destroy the answer
 * before the client has read it (RFC 9112 §9.6). It lingers instead.
 */
export function lingerAfterLastAnswer(socket: Duplex): void {
  if (socket.destroyed) return;
  // Registered by Node's destroySoon() in its own 'finish' listener of the answer, which runs before the caller's.
  socket.removeListener('finish', socket.destroy);
  // Ended here if Node did not (no answer closed it): the connection closes all the same, as retire.ts ends an idle one.
  if (socket.writable) socket.end();
  lingerAfterEnd(socket);
}

/** `socket`, ended by us (or about to be): destroyed when the client ends it too, or after LINGER_MS, what it sends till then read and dropped. */
export function lingerAfterEnd(socket: Duplex): void {
  const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
  socket.once('close', () => clearTimeout(timer));
  socket.once('end', () => socket.destroy());
}

/** Nothing Node parses on `socket` from now on is processed (notAfterClose): a connection we are closing with no answer in progress. */
export function processNoMore(socket: Duplex): void {
  closing.add(socket);
}

/** Whether an answer of ours closes `socket` after a request whose body is not read (closeAfterAnswer). */
export function closesAfterAnswer(socket: Duplex): boolean {
  return closing.has(socket);
}

/**
 * `handle` (a server's 'request', 'upgrade' or 'connect' listener), except
 * for a request that arrives on a connection an answer of ours closes
 * (closeAfterAnswer): it is not processed and gets no answer; what it sends
 * is read and dropped until the connection ends.
 */
export function notAfterClose<A, B>(handle: (req: IncomingMessage, a: A, b: B) => void): (req: IncomingMessage, a: A, b?: B) => void {
  // Fixed arity, no rest parameter: this runs on every request (no array per call).
  return (req, a, b) => {
    const socket = req.socket;
    if (!closing.has(socket)) return handle(req, a, b as B);
    req.resume();
    parseNoMore(socket);
    // An upgrade or a CONNECT: Node handed the socket itself over, its parser and error listener gone.
    if ((a as unknown) === socket) {
      if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
      socket.resume();
    }
  };
}

/** Node's parser on a socket (lib/_http_server.js): `consume` reads the socket's handle itself, without 'data' events. */
type Parsed = Duplex & { parser?: { _consumed?: boolean; unconsume?: () => void } | null; _handle?: { _consumed?: boolean } | null };

/**
 * Stops Node's parser on `socket`, a connection whose requests are no longer
 * processed (notAfterClose): what still arrives is read and dropped unparsed.
 * Parsed, each pipelined request held its request and answer objects until
 * the connection ended (none is answered), and a client flooding a lingering
 * connection with small requests grew the worker's heap by hundreds of MiB
 * within LINGER_MS, its event loop busy parsing them.
 */
function parseNoMore(socket: Parsed): void {
  const parser = socket.parser;
  if (parser == null) return;
  if (parser._consumed === true) {
    parser.unconsume?.();
    parser._consumed = false;
    if (socket._handle) socket._handle._consumed = false;
  }
  // Node's 'data' listener feeds the parser (socketOnData); from now on what arrives is dropped.
  socket.removeAllListeners('data');
  socket.on('data', () => undefined);
}
