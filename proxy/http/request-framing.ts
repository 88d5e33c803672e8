/**
 * A request's Transfer-Encoding (RFC 9112 §6.1, §6.3), checked before it
 * goes anywhere: one `chunked` (any case) is the only framing by coding
 * keyedge forwards. Node's parser takes the chunked framing off, and
 * Transfer-Encoding goes as hop-by-hop (forward-headers.ts), so whatever came
 * before the chunked went with it, and the origin took the body still coded
 * for the content.
 *
 * - A coding besides chunked, chunked last (`gzip, chunked`, or `gzip` and
 *   `chunked` in two field lines; Node joins them): 501 (§6.1: a server
 *   SHOULD answer 501 to a transfer coding it does not understand), as nginx
 *   does ("client sent unknown Transfer-Encoding"). The answer for origins is
 *   alike (forward-headers.ts refuseTransferCodings).
 * - chunked not last (`gzip` alone): 400 (§6.3: the length cannot be
 *   determined; the server MUST answer 400 and close). Node's parser refuses
 *   `chunked, gzip` and `chunked` twice itself (400, client-error.ts), but
 *   hands over a request with `gzip` alone, and fails only on its body.
 * - an HTTP/1.0 request with any Transfer-Encoding: 400 (§6.1: MUST treat
 *   the framing as faulty and close the connection after the message; a 1.0
 *   hop in front frames the body otherwise than chunked, so what comes
 *   behind it is read otherwise on each side), as nginx does ("client sent
 *   HTTP/1.0 request with Transfer-Encoding"). Node read the body as chunked
 *   and kept the connection for the next request.
 *
 * Each refusal says `Connection: close`: the body is never read to be
 * forwarded or kept in step, and nothing after it is processed (handler.ts
 * answer(), linger.ts). An Upgrade with any Transfer-Encoding is refused
 * already (upgrade.ts). HTTP/2 has no Transfer-Encoding (RFC 9113 §8.2.2):
 * nghttp2 resets a stream that sends one (test/abuse-http2-downgrade.test.ts).
 *
 * Runs on every request: one without Transfer-Encoding pays one property
 * look-up on the headers the handler reads anyway.
 *
 * And a head of MAX_FIELD_LINES or more (below): Node dropped the lines past
 * its count, which may have framed the body.
 */
import type { IncomingMessage } from 'node:http';
import type { Refusal } from './handler.js';

const CLOSE = { connection: 'close' };
const UNKNOWN_CODING: Refusal = {
  status: 501,
  code: 'KEYEDGE_HTTP_TRANSFER_CODING',
  body: 'transfer coding not implemented: only chunked is\n',
  headers: CLOSE,
};
const NOT_LAST: Refusal = { status: 400, code: 'KEYEDGE_HTTP_BAD_FRAMING', body: 'bad framing: chunked is not the final transfer coding\n', headers: CLOSE };
const HTTP_1_0: Refusal = { status: 400, code: 'KEYEDGE_HTTP_BAD_FRAMING', body: 'bad framing: an HTTP/1.0 request with Transfer-Encoding\n', headers: CLOSE };

/** Our refusal of `req`'s framing by Transfer-Encoding; undefined when it has none, or one `chunked`. */
export function framingRefusal(req: IncomingMessage): Refusal | undefined {
  const codings = req.headers['transfer-encoding'];
  if (codings === undefined) return undefined;
  if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) return HTTP_1_0;
  // Node has trimmed the value; field lines are joined with `, `.
  if (codings === 'chunked' || (codings.length === 7 && codings.toLowerCase() === 'chunked')) return undefined;
  // Anything else is refused, empty list elements too (`chunked, `, an empty field line beside chunked), which RFC 9110
  // §5.6.1.2 would have ignored: Node 20's parser reads them as chunked, Node 22's and 24's frame the body otherwise
  // (the request behind it was read as its body). nginx forwards only `chunked` alone as well.
  const last = codings
    .slice(codings.lastIndexOf(',') + 1)
    .trim()
    .toLowerCase();
  return last === 'chunked' ? UNKNOWN_CODING : NOT_LAST;
}

/**
 * The most field lines a request's head may have. Node keeps this many and
 * drops the rest without a word, while its parser still frames the body by a
 * Content-Length or Transfer-Encoding among them: a request that reached it
 * is refused, never forwarded without them. `limits.maxHeaderBytes` is the
 * bound a request meets first up to its default 16 KiB (4,096 lines of
 * `a:`); past it, this one keeps a head's cost bounded: 1 MiB of one-letter
 * fields is 150,000 of them, half a second to two of the worker's time to
 * make into objects and forward, every other client waiting (Node's own cap,
 * 2,000, dropped silently).
 */
export const MAX_FIELD_LINES = 4096;
const TOO_MANY_LINES: Refusal = {
  status: 431,
  code: 'KEYEDGE_HTTP_HEADERS_TOO_LARGE',
  body: `request header fields too large: more than ${MAX_FIELD_LINES} field lines\n`,
  headers: CLOSE,
};

/** Our refusal of a request whose head reached MAX_FIELD_LINES (Node dropped any beyond). */
export function fieldLinesRefusal(req: IncomingMessage): Refusal | undefined {
  return req.rawHeaders.length >= 2 * MAX_FIELD_LINES ? TOO_MANY_LINES : undefined;
}
