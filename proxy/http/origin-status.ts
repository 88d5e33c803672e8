/**
 * An origin's status code outside 100–599, refused as an invalid answer.
 *
 * RFC 9110 §15: a status code is three digits whose first names its class,
 * 1 to 5; values outside 100–599 are invalid, and a client that receives one
 * SHOULD process it as a 5xx. llhttp (undici's parser) takes any three digits.
 * Relayed, such an answer reached HTTP/1.1 clients as sent, while Node's
 * HTTP/2 layer refuses to send a status over 599 (ERR_HTTP2_STATUS_INVALID)
 * and an HTTP/2 client got a 502; one under 100 undici took for an interim
 * answer (`statusCode < 200`), then failed at its end on undici's own
 * assertion that a status is at least 100: a 502 by accident. Both protocols
 * now answer the same: the proxy's own 502, as for any answer it does not
 * relay (OriginAnswerRefused: undici aborts, that origin connection is
 * closed, the origin is not cooled down; forward-headers.ts's transfer
 * codings are the other such answer). nginx passes 600–999 through.
 *
 * Called from each exchange's onHeaders (interim answers included) and for
 * an Upgrade request's answer. Pure.
 */
import { OriginAnswerRefused } from './errors.js';

/** Throws OriginAnswerRefused for a status code outside 100–599 (RFC 9110 §15). */
export function refuseInvalidStatus(statusCode: number): void {
  if (statusCode >= 100 && statusCode <= 599) return;
  throw new OriginAnswerRefused(`the origin answered with status ${statusCode}, outside 100–599 (RFC 9110 §15)`);
}
