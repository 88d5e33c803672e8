/**
 * Our answer to a request Node's parser refused (a 'clientError': headers
 * over `limits.maxHeaderBytes`, malformed framing, the header timeout). Node
 * answers these itself, the same statuses, but writes the answer and
 * destroys the socket in one step: over TLS the answer is often lost in the
 * reset, and the client sees a hang-up instead of its 431 or 400. Here the
 * answer is written and the connection ended gracefully, then destroyed
 * after LINGER_MS if the client keeps it open (nginx's lingering close,
 * RFC 9112 §9.6). Nothing after the bad request is forwarded: Node's parser
 * stays in its error state, and what the client still sends is dropped.
 */
import type { Duplex } from 'node:stream';

/** How long a connection we ended may stay open for the client to read our answer (nginx: lingering_timeout 5 s). */
const LINGER_MS = 5_000;

/** Node's own choice of status for a parser error (lib/_http_server.js, socketOnError). */
function statusFor(code: string | undefined): { readonly status: number; readonly reason: string } {
  if (code === 'HPE_HEADER_OVERFLOW') return { status: 431, reason: 'Request Header Fields Too Large' };
  if (code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') return { status: 413, reason: 'Payload Too Large' };
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return { status: 408, reason: 'Request Timeout' };
  return { status: 400, reason: 'Bad Request' };
}

/** Connections answered and lingering: further bytes put Node's parser in error again, which changes nothing. */
const answered = new WeakSet<Duplex>();

export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (answered.has(socket)) return;
  // Node removed its own error listener before telling us; a reset from here on is expected.
  if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
  const written = (socket as Duplex & { bytesWritten?: number }).bytesWritten ?? 0;
  // A client gone, or an answer already under way: nothing can be said on this connection.
  if (!socket.writable || written > 0 || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const { status, reason } = statusFor(err.code);
  answered.add(socket);
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
  socket.once('close', () => clearTimeout(timer));
}
