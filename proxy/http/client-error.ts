/**
 * Our answer to a request Node's parser refused (a 'clientError': headers
 * over `limits.maxHeaderBytes`, malformed framing, the header timeout). Node
 * answers these itself, the same statuses, but writes the answer and
 * destroys the socket in one step: over TLS the answer is often lost in the
 * reset, and the client sees a hang-up instead of its 431 or 400. Here the
 * answer is written and the connection ended gracefully, then destroyed
 * after LINGER_MS if the client keeps it open (nginx's lingering close,
 * RFC 9112 §9.6). Nothing after the bad request is forwarded: Node's parser
 * stays in its error state, and what the client still sends is dropped. The
 * answers to requests pipelined before the bad one go out first (queued.ts).
 * Bytes after a request that said `close` are no bad request: its answer goes
 * out, then the connection lingers (linger.ts `lingerAfterLastAnswer`).
 * The HTTP/2 connection preface gets a 400 of ours that says what it met.
 * Each answer here carries its code in `x-keyedge-error`, as every answer of
 * keyedge's own does (Node's own carried none).
 * A request whose body turned bad after its head was handed over (a bad
 * chunk size mid-body) has its answer's access line and count say our
 * status and code (`parserRefusal`), not the client's leaving: its own
 * answer never starts, the connection closes after ours.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { HttpErrorCode } from '../../config/codes.js';
import { closesAfterAnswer, LINGER_MS, lingerAfterLastAnswer } from './linger.js';
import { answerInProgress, whenAnswersSent } from './queued.js';

/**
 * The HTTP/2 connection preface (`PRI * HTTP/2.0`, RFC 9113 §3.4), sent with
 * prior knowledge on a connection that speaks HTTP/1.1: llhttp stops on it
 * (HPE_PAUSED_H2_UPGRADE). 400, as nginx answers, rather than 505 (RFC 9110
 * §15.6.6, a major version not supported): over TLS, HTTP/2 is chosen with
 * ALPN only (RFC 9113 §3.3: prior knowledge is for cleartext TCP), so the
 * preface there is the client's error; keyedge offers no cleartext HTTP/2
 * at all; and a 5xx would count as our failure in the server-error rate,
 * for bytes any scanner can send. The client, speaking HTTP/2, cannot read
 * the answer; a person with a raw tool or a packet capture can.
 */
const H2_PREFACE_BODY = 'HTTP/2 connection preface on a connection that speaks HTTP/1.1: HTTP/2 needs TLS with ALPN h2, not prior knowledge\n';
const H2_PREFACE = {
  status: 400,
  reason: 'Bad Request',
  headers: `content-type: text/plain; charset=utf-8\r\ncontent-length: ${H2_PREFACE_BODY.length}\r\n`,
  body: H2_PREFACE_BODY,
};

interface ParserAnswer {
  readonly status: number;
  readonly reason: string;
  /** Its code (README's codes): in the answer's x-keyedge-error, as in each of keyedge's own, and in the access line of a request refused mid-body. */
  readonly code: HttpErrorCode;
  readonly headers?: string;
  readonly body?: string;
}

/**
 * Node's own choice of status for a parser error (lib/_http_server.js, socketOnError); ours for the HTTP/2 preface.
 * `midBody`: the request's head was handed over, its body not all read (a timeout then is the whole request's).
 */
function statusFor(code: string | undefined, midBody: boolean): ParserAnswer {
  if (code === 'HPE_PAUSED_H2_UPGRADE') return { ...H2_PREFACE, code: 'KEYEDGE_HTTP_H2_PREFACE' };
  // In a chunked body's trailer section: the head was within bounds, or it would not have been handed over.
  if (code === 'HPE_HEADER_OVERFLOW') return { status: 431, reason: 'Request Header Fields Too Large', code: 'KEYEDGE_HTTP_HEADERS_TOO_LARGE' };
  if (code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') return { status: 413, reason: 'Payload Too Large', code: 'KEYEDGE_HTTP_BODY_TOO_LARGE' };
  // Node's headersTimeout (a head not whole in time) or requestTimeout (the whole request, its body included).
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT')
    return { status: 408, reason: 'Request Timeout', code: midBody ? 'KEYEDGE_HTTP_BODY_TIMEOUT' : 'KEYEDGE_HTTP_HEADER_TIMEOUT' };
  // A body whose framing does not parse (a bad chunk size, a chunk without its CRLF).
  return { status: 400, reason: 'Bad Request', code: 'KEYEDGE_HTTP_BAD_FRAMING' };
}

/** Answers to requests refused by the parser mid-body, with what we sent instead of them (`parserRefusal`). */
const refusedMidBody = new WeakMap<ServerResponse, { readonly status: number; readonly code: HttpErrorCode }>();

/**
 * What was sent instead of `res` when its request's body turned bad after
 * its head was handed over: our status and its code, for its access line and
 * count (access.ts, handler.ts `onAnswerEnd`). Without it, the answer closed
 * unstarted with the connection and was logged 499 KEYEDGE_HTTP_CLIENT_CLOSED,
 * the client's leaving, though the client had our 400.
 */
export function parserRefusal(res: ServerResponse): { readonly status: number; readonly code: HttpErrorCode } | undefined {
  return refusedMidBody.get(res);
}

/** Connections answered and lingering: further bytes put Node's parser in error again, which changes nothing. */
const answered = new WeakSet<Duplex>();

export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (answered.has(socket)) return;
  answered.add(socket);
  // Node removed its own error listener before telling us; a reset from here on is expected.
  if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
  // Bytes after a request that said `close` (or an HTTP/1.0 one without keep-alive): llhttp parses nothing after it
  // (HPE_CLOSED_CONNECTION), so nothing more is forwarded or answered (RFC 9112 §9.6), and that request's answer, the
  // connection's last, closes it; no 400, which would follow it as the answer to nothing. The client is pipelining and
  // may still be sending: the connection lingers after the answers (linger.ts), as nginx's does when bytes are left
  // to read. Destroyed at once, as Node does after a closing answer, the client's next bytes met a closed socket, and
  // its reset took the answer away: cut short, or never read by a client whose next write failed first.
  if (err.code === 'HPE_CLOSED_CONNECTION') return whenAnswersSent(socket, () => lingerAfterLastAnswer(socket));
  // Bytes after a request whose body is not read (a GET's awaiting 100, never asked for; one answered early): they
  // are read and dropped, not processed (linger.ts), so a parse error there is no error of the request. Answered
  // 400, the client was told its request failed while its origin had served it; its answer goes out instead.
  if (err.code?.startsWith('HPE_') === true && closesAfterAnswer(socket)) return;
  respond(err, socket);
}

/** Our answer, once the answers to the whole requests before the bad one are sent. */
function respond(err: NodeJS.ErrnoException, socket: Duplex): void {
  const pending = answerInProgress(socket);
  // Pipelined requests read whole before the bad one are answered first, in order (RFC 9112 §9.3.2): written now,
  // our status would reach the client as the answer to the first of them, and theirs would be lost.
  if (pending?.req.complete === true) return whenAnswersSent(socket, () => respond(err, socket));
  // A client gone, or the answer to the request whose body went bad under way: nothing can be said on this
  // connection. Bytes written before it are the answers to earlier requests, whole (a keep-alive connection's), or
  // the bad request's 100 (Continue), after which a final status is still due (RFC 9110 §15.2.1): the bad request
  // still gets its status, as the first on a connection does. Counting them, the connection was destroyed without a
  // word, and the client's request failed with no answer.
  if (!socket.writable || err.code === 'ECONNRESET' || pending?.headersSent === true) {
    socket.destroy();
    return;
  }
  // The answer in progress is the bad request's own, its body unread to the end: ours goes out in its place.
  const midBody = pending !== undefined && !pending.req.complete;
  const { status, reason, code, headers = 'content-length: 0\r\n', body = '' } = statusFor(err.code, midBody);
  if (midBody) refusedMidBody.set(pending, { status, code });
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\nx-keyedge-error: ${code}\r\n${headers}\r\n${body}`);
  const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
  socket.once('close', () => clearTimeout(timer));
}
