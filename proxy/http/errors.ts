/**
 * The errors the request path throws with a code of ours, so that no failure
 * is a plain Error with a code bolted on. They are not KeyedgeErrors: they
 * never reach the CLI; the handler turns `code` into an answer or an
 * access-log code (README, "HTTP answers of our own"; codes and meanings in
 * config/codes.ts).
 */
import type { HttpErrorCode } from '../../config/codes.js';

/** A request failed for one of the proxy's own reasons (a body too large or too slow, an answer the client would not take). */
export class HttpFailure extends Error {
  constructor(
    readonly code: HttpErrorCode,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * The client left before its request was whole. `code` is ECONNRESET, the
 * code Node gives the socket error for the same event, so that both are
 * handled as one (forward.ts's LATER_FAILURES, handler.ts's client-gone path).
 */
export class ClientGone extends Error {
  readonly code = 'ECONNRESET';

  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * An origin answer the proxy does not relay, because what it is could not be
 * told to the client as sent (transfer codings besides chunked,
 * forward-headers.ts). Thrown from undici's onHeaders: undici aborts the
 * request, closes that origin connection and calls onError, and the client
 * gets a 502 (KEYEDGE_HTTP_ORIGIN_UNREACHABLE), as for an answer undici could
 * not parse. The origin did answer: it is not cooled down (balancer.ts).
 */
export class OriginAnswerRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
