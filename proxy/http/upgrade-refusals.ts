/**
 * Our own answers to an Upgrade (upgrade.ts) that a request (handler.ts)
 * never gets, and the request's busy-origin 503 as an Upgrade gets it. Each
 * is written on the raw socket (raw-answer.ts refusalText) and closes it; the
 * plain-HTTP port answers CONNECT and a body-carrying Upgrade with the same
 * (redirect.ts). Their codes are in the registry and README's table of our
 * answers (test/code-parity.test.ts).
 */
import { ownFailureRefusal, type Refusal } from './handler.js';

/** An Upgrade request with a body (Content-Length over 0, any Transfer-Encoding): Node's server does not read it, and WebSocket handshakes (GET) have none. */
export const BODY_REFUSED: Refusal = { status: 400, code: 'KEYEDGE_HTTP_UPGRADE_BODY', body: 'an upgrade request cannot have a body\n' };
/**
 * An Upgrade on a connection the stop or a certificate change closes after its first answer (retire.ts): 503, the
 * connection closed after it; a new connection (another worker, or the certificate that serves now) can open it.
 */
export const CLOSING_REFUSED: Refusal = {
  status: 503,
  code: 'KEYEDGE_HTTP_UPGRADE_CLOSING',
  body: 'this connection is closing (the proxy is stopping or its certificate changed): open the WebSocket on a new connection\n',
};
/** CONNECT (RFC 9110 §9.3.6) asks for a tunnel, which keyedge does not offer; as on HTTP/2 (http2/stream.ts) and port 80 (redirect.ts), 400. */
export const CONNECT_REFUSED: Refusal = { status: 400, code: 'KEYEDGE_HTTP_BAD_TARGET', body: 'bad request target: CONNECT is not served\n' };
/** The origin's places and queue are full, or the wait was too long: a request's answer (handler.ts), Retry-After included. */
export const BUSY_REFUSED: Refusal = ownFailureRefusal('KEYEDGE_HTTP_ORIGIN_BUSY', 0)!;
