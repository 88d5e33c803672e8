/**
 * undici's handler for one forwarded HTTP/2 stream (exchange.ts sends it):
 * the origin's answer head goes to `respond`, each body chunk to the
 * stream's `write` with undici's pause and resume as backpressure (a refused
 * write pauses the origin until the stream's 'drain', with the stall clock
 * running, send-stall.ts), trailers when the origin declared them (RFC 9110
 * §6.6.2; the END_STREAM then goes with them, so an answer whose trailers
 * a shut window holds back is not over: `endAwaitsTrailers`). What it
 * shares with forward.ts's Exchange for HTTP/1.1 (the
 * attempt, the gate, settling, aborting, backpressure) is origin-exchange.ts.
 *
 * The one rule for a client that leaves: the stream closes or is reset, or
 * its connection ends (sessions.ts calls `abandonStream`), before the
 * origin's answer was read whole: the origin request is aborted at once and
 * undici closes that origin connection. Nothing else has to hear of it.
 *
 * Cost per stream: one object; listeners are module functions that find it
 * on the stream.
 */
import type { ServerHttp2Stream } from 'node:http2';
import { refuseTransferCodings } from '../http/forward-headers.js';
import { type Carrier, EXCHANGE, type ExchangeOwner, OriginExchange, onAnswerEnd } from '../http/origin-exchange.js';
import { refuseInvalidStatus } from '../http/origin-status.js';
import type { OriginPools, OriginTarget } from '../http/origins.js';
import { allowedTrailers } from '../http/trailer-fields.js';
import type { TrustedPeers } from '../http/trusted-peers.js';
import { http2Fields, sendableFieldSection } from './headers.js';

export interface StreamForwardOptions extends ExchangeOwner {
  /** Set on the answer after the origin's fields (HSTS). */
  readonly extraHeaders: Record<string, string>;
  readonly maxBodyBytes: number;
  readonly trusted?: TrustedPeers;
  /** The client's address, for X-Forwarded-For. */
  readonly peer: string | undefined;
  /** Who the stream counts as at its origin's gate (origin-gate.ts); undefined: no share. */
  readonly client: string | undefined;
  /** Told the status once the answer's head is sent. */
  onStatus(status: number): void;
  /** The answer's body bytes handed to the stream, for the access line: 0 until they flow (a client gone before them: 0), HTTP/1.1's count. */
  bytes: number;
}

type Tracked = ServerHttp2Stream & Carrier;

/** One forwarded stream: undici's handler (origin-exchange.ts holds what it shares with forward.ts's Exchange) answering on `stream`. */
export abstract class StreamExchange extends OriginExchange<StreamForwardOptions> {
  readonly stream: ServerHttp2Stream;
  /** The origin's answer was read whole: nothing is left to abort. */
  complete = false;
  /** The origin's raw trailers, sent when Node asks for them. */
  trailers: Buffer[] | string[] | null = null;

  constructor(pools: OriginPools, stream: ServerHttp2Stream, options: StreamForwardOptions, targets: readonly OriginTarget[], method: string) {
    super(pools, options, targets, method, options.client);
    this.stream = stream;
  }

  get headersSent(): boolean {
    return this.stream.headersSent;
  }

  /** The client left (the stream or its connection ended) before the origin's answer was read whole: the origin request is aborted. */
  clientLeft(): void {
    if (this.gone || this.complete) return;
    this.leftBeforeEnd();
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[] | string[] | null, resume: () => void): boolean {
    // A status outside 100–599 (an interim one too): our 502, as on HTTP/1.1 (origin-status.ts); Node's respond refuses over 599.
    refuseInvalidStatus(statusCode);
    // 1xx: an interim answer the client was not asked about (100 went out already when it was).
    if (statusCode < 200) return true;
    const stream = this.stream;
    // Closed (by its connection's end) without a word to this exchange yet: the client left.
    if (stream.destroyed || stream.closed) {
      this.clientLeft();
      return false;
    }
    // Refused before Node's respond: it would accept the head, fail to send it, and close the client's whole session.
    // A failure undici hands to onError (a 502), as it does a head over its own bound on either protocol.
    if (!sendableFieldSection(rawHeaders ?? [])) throw new Error('the origin answer head is larger than an HTTP/2 header block may be');
    // Codings besides chunked, which HTTP/2 cannot say: a 502 as on HTTP/1.1 (forward-headers.ts).
    refuseTransferCodings(rawHeaders ?? []);
    // The origin answered, whatever the status: a 5xx is the application's, not the connection's.
    this.pools.succeeded(this.target!);
    this.resumeOrigin = resume;
    const head = http2Fields(rawHeaders ?? [], this.owner.extraHeaders, statusCode);
    // A 204 has no content and no Content-Length (RFC 9110 §8.6); nghttp2 clients (curl, Node) reset a 204 that
    // carries one other than 0 with PROTOCOL_ERROR. A 205 has no content either (§15.3.6) and Node ends its stream
    // with the head as for a 204: a length an origin gave it goes too. HTTP/1.1 clients get a 204's dropped too (forward.ts).
    if (statusCode === 204 || statusCode === 205) delete head['content-length'];
    const declaresTrailers = head.trailer !== undefined;
    // A head Node refuses to send (a value with bytes RFC 9110 §5.5 forbids, a stream already closed) throws here: undici aborts and calls onError.
    stream.respond(head, declaresTrailers ? WAIT_FOR_TRAILERS : undefined);
    this.owner.onStatus(statusCode);
    if (declaresTrailers) {
      // Not for an answer Node ended with its head (HEAD, 204, 304): its END_STREAM went with the head.
      if (!stream.writableEnded) trailersDue.add(stream);
      stream.once('wantTrailers', () => {
        trailersDue.delete(stream);
        sendTrailers(stream, this.trailers ?? [], this.owner);
      });
    }
    return true;
  }

  onData(chunk: Buffer): boolean {
    const stream = this.stream;
    // HEAD, 204, 304: Node ended the stream with the head (RFC 9110 §6.4.1); nothing of a body is sent.
    if (stream.writableEnded && !stream.closed) return true;
    if (stream.destroyed || stream.closed) {
      this.clientLeft();
      return false;
    }
    const owner = this.owner;
    owner.bytes += chunk.length;
    if (stream.write(chunk)) return true;
    // The client's window or the socket is full.
    return this.waitForDrain(stream);
  }

  onComplete(trailers: Buffer[] | string[] | null): void {
    this.complete = true;
    this.leaveGate();
    if (trailers !== null && trailers.length > 0) this.trailers = trailers;
    const stream = this.stream;
    if (!stream.destroyed && !stream.writableEnded) stream.end();
    this.settle(undefined);
  }
}

/**
 * Aborts the origin request of `stream`, if one is still being read: for its
 * connection's end (sessions.ts), which Node reports to a stream held by flow
 * control only when it destroys it, some time later.
 */
export function abandonStream(stream: ServerHttp2Stream): void {
  (stream as Tracked)[EXCHANGE]?.clientLeft();
}

/**
 * Makes `exchange` the one `stream`'s ends are told to. The stream's owner
 * (stream.ts) has one 'aborted' and one 'close' listener per stream, and
 * each calls `streamEnded`: no listener of this module's own per stream.
 */
export function trackStream(stream: ServerHttp2Stream, exchange: StreamExchange): void {
  (stream as Tracked)[EXCHANGE] = exchange;
  // Closed before this was called: no 'close' is to come.
  if (stream.destroyed) exchange.clientLeft();
}

/** The stream closed, or was reset while its answer was open (each once; idempotent): its exchange, if any, hears the client left. */
export function streamEnded(stream: ServerHttp2Stream): void {
  onAnswerEnd.call(stream as Tracked);
}

/** Answers sent with waitForTrailers whose 'wantTrailers' has not come yet: their END_STREAM is still to go. */
const trailersDue = new WeakSet<ServerHttp2Stream>();

/**
 * Whether `stream`'s END_STREAM waits on its trailers, which Node sends only
 * once nghttp2 has read the body's end, and nghttp2 reads it only with
 * window to spare (RFC 9113 §6.9): a client whose window stays shut (0, or
 * exactly the body's length) never lets it, though the body was all written
 * (`writableFinished`). sessions.ts bounds such an end as any other
 * (`#checkEnds`).
 */
export function endAwaitsTrailers(stream: ServerHttp2Stream): boolean {
  return trailersDue.has(stream);
}

const WAIT_FOR_TRAILERS = Object.freeze({ waitForTrailers: true });
const NO_FIELDS: Readonly<Record<string, string>> = Object.freeze({});

/** Why an answer is cut at its trailers: told to the stream's owner as the origin's failure mid-answer. */
const TRAILERS_UNSENDABLE = new Error('the origin trailer section cannot be sent over HTTP/2 (too large for one header block, or refused by Node)');

/**
 * The origin's trailers without the fields no trailer section may carry
 * (RFC 9110 §6.5.1, trailer-fields.ts: framing, connection-specific, …) and
 * what HTTP/2 forbids; a trailer section Node refuses, or one too large to
 * send (headers.ts), ends the stream with a reset instead: through `owner`,
 * as the origin's failure mid-answer (stream.ts cuts it, logged
 * KEYEDGE_HTTP_ORIGIN_ABORTED). A close of our own here was taken for the
 * client's reset: counted against its connection's reset bound (reset-guard.ts),
 * an origin whose trailers were always too large got the client's whole
 * connection, its other streams with it, ended with GOAWAY ENHANCE_YOUR_CALM
 * after `limits.http2MaxResetStreams` answers, and each was logged as the
 * client's abort.
 */
function sendTrailers(stream: ServerHttp2Stream, trailers: readonly (Buffer | string)[], owner: StreamForwardOptions): void {
  if (!sendableFieldSection(trailers)) return owner.onFailure(TRAILERS_UNSENDABLE);
  const fields = http2Fields(allowedTrailers(trailers), NO_FIELDS);
  try {
    stream.sendTrailers(fields);
  } catch {
    owner.onFailure(TRAILERS_UNSENDABLE);
  }
}
