/**
 * How an HTTP/2 stream's answer ends when it is ours to end (stream.ts,
 * sessions.ts): our own short answer, a reset that tells the client an
 * answer is incomplete (RFC 9113 §8.1), or the cut of an answer whose end the
 * client never takes. Each stream cut here is remembered, so its access line
 * and counts tell our reset from the client's.
 */
import type { OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { constants } from 'node:http2';
import type { Refusal } from '../http/handler.js';
import { bodyPending } from './exchange.js';
import { http2Answer } from './headers.js';

const cuts = new WeakSet<ServerHttp2Stream>();
/** Destroys a stream with RST_STREAM INTERNAL_ERROR (Node's code for a stream destroyed with an error); never thrown. */
const CUT = new Error('the answer was cut before its end');

/**
 * Once an answer has started, only a reset tells the client it is
 * incomplete (RFC 9113 §8.1). Not close(): it ends the stream's writable
 * side before it resets, and with none of the answer waiting for the
 * client's window, Node has nghttp2 send that END_STREAM first: the client
 * took the cut answer for a whole one (a chunked answer has no length to
 * betray it). destroy() with an error resets without ending.
 */
export function cut(stream: ServerHttp2Stream): void {
  cuts.add(stream);
  if (!stream.destroyed) stream.destroy(CUT);
}

const stalledEnds = new WeakSet<ServerHttp2Stream>();

/** Whether the stream was cut by cutStalledEnd: its access line says KEYEDGE_HTTP_SEND_TIMEOUT. */
export function stalledEnd(stream: ServerHttp2Stream): boolean {
  return stalledEnds.has(stream);
}

/**
 * Cuts a stream whose answer was all written but whose end the client has
 * not taken (its flow-control window stays shut) for `limits.sendTimeoutMs`
 * (sessions.ts finds them): logged as KEYEDGE_HTTP_SEND_TIMEOUT, as the
 * send-stall clock's cuts are, and not counted as the client's reset.
 */
export function cutStalledEnd(stream: ServerHttp2Stream): void {
  stalledEnds.add(stream);
  cuts.add(stream);
  // Not destroy(): that resets with NO_ERROR, which says the answer was whole (RFC 9113 §8.1).
  if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL);
}

const closedLeft = new WeakSet<ServerHttp2Stream>();

/**
 * Destroys a stream nghttp2 closed with NO_ERROR that Node would never
 * destroy (sessions.ts finds them): 'close' comes, with its access line.
 * No reset goes out: the stream is closed already.
 */
export function destroyClosed(stream: ServerHttp2Stream): void {
  closedLeft.add(stream);
  stream.destroy();
}

/** Whether the stream was destroyed by destroyClosed, a second or more after nghttp2 closed it. */
export function destroyedClosed(stream: ServerHttp2Stream): boolean {
  return closedLeft.has(stream);
}

/** Whether the stream was reset for a reason of ours (an origin failed mid-answer), not counted against its client. */
export function cutByUs(stream: ServerHttp2Stream): boolean {
  return cuts.has(stream);
}

/** Our answer: a short plain body and a stable code; no connection fields (RFC 9113 §8.2.2), whatever the refusal lists. */
export function answer(stream: ServerHttp2Stream, { status, code, body, headers: own }: Refusal, extra: Readonly<Record<string, string>>): void {
  // Closed, not yet destroyed (closed with NO_ERROR, by the client or by us; or its session ending): Node's respond
  // throws ERR_HTTP2_INVALID_STREAM on it, and from a 'stream' listener that throw is uncaught and ends the worker.
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  const head: OutgoingHttpHeaders = http2Answer(
    status,
    { ...extra, ...own },
    {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': String(Buffer.byteLength(body)),
      'x-keyedge-error': code,
    },
  );
  stream.respond(head);
  // A HEAD's answer ends with its head: Node ends (and finishes) the stream in respond, and a body now is an error.
  if (!stream.writableEnded) stream.end(body);
  // A body the client still sends is not read: it may stop (RFC 9113 §8.1). Waiting for a 'finish' that HEAD's
  // answer had already had left such a stream open for ever, holding its connection past every timeout. Closed in
  // the next turn, once Node has handed the head to nghttp2's output: an RST_STREAM submitted first makes nghttp2
  // drop the HEADERS still queued for the stream (seen on Node 22: the client got the reset and no answer).
  if (stream.writableFinished) setImmediate(closeUnreadBody, stream);
  else stream.once('finish', () => closeUnreadBody(stream));
}

function closeUnreadBody(stream: ServerHttp2Stream): void {
  if (!stream.destroyed && bodyPending(stream)) stream.close(constants.NGHTTP2_NO_ERROR);
}
