/**
 * Interim (1xx) answers from an origin: an unasked-for 100 (Continue) read
 * as the interim answer it is, and none of them restarting the head
 * timeout. RFC 9110 §15.2: a client must be able to parse 1xx answers
 * before the final one even when it did not expect them (nginx drops them).
 * keyedge never sends `Expect: 100-continue` to an origin (expect.ts: the
 * expectation is met at the edge), so every 100 it gets is one of those;
 * some servers send one anyway before a POST's answer.
 *
 * undici 7 treats any 100 as a broken answer: its HTTP/1.1 parser
 * (lib/dispatcher/client-h1.js, `Parser.onHeadersComplete`) destroys the
 * connection with `SocketError('bad response')` (UND_ERR_SOCKET), by design
 * (nodejs/undici#197, no option turns it off). The client then got a 502 and
 * the origin a passive-health cool-down (balancer.ts), for every domain that
 * shares it, over an answer that was fine. Every other 1xx (102, 103) undici
 * already hands to the handler as interim, keeping the connection and its
 * parser state; both exchanges drop those (forward.ts,
 * http2/origin-handler.ts). So each origin connection's parser is told a
 * 100 is such an answer: undici's own handling of 103 runs, with all its
 * bookkeeping (the parser's reset for the next answer),
 * and the final answer follows on the same connection.
 *
 * Interim answers do not restart the head timeout. undici refreshes its
 * `headersTimeout` (`limits.originResponseTimeoutMs`) on each one, so an
 * origin sending a 103 every half second held its request, its place at the
 * gate and the client for ever. The clock is undici's own, counted from the
 * request sent (undici restarts it once the body is written, and does not cut
 * while the body still streams to an origin that takes it): interim answers
 * simply leave it running, and the final head is due `originResponseTimeoutMs`
 * after the request, as documented, whatever came before it (504 past it). A
 * cap on the number of interim answers was not chosen: any count is
 * arbitrary, an origin may send several (102 Processing was meant to be
 * repeated) and, spaced just under the timeout, a capped few still hold a
 * request for that many timeouts; a flood of them within the deadline costs
 * what a body of the same bytes does.
 *
 * What this relies on: undici keeps the connection's parser on the socket
 * under a symbol described 'parser', calls its `onHeadersComplete` per
 * answer head, and keeps its head timer as the parser's `timeout`, refreshed
 * there for an interim answer (undici 7). Set on the one parser instance, not
 * undici's class: nothing else in the process that uses undici changes. If a
 * later undici keeps its parser elsewhere, nothing is changed and a 100
 * fails as before (test/proxy-h1-edges.test.ts says so); if it keeps its timer
 * elsewhere, interim answers restart it again (test/abuse-origin-answers.test.ts
 * says so).
 *
 * Cost: one property lookup per origin connection, one closure per
 * connection; per interim answer, two property writes.
 */
import type { Socket } from 'node:net';
import { type UndiciParser, undiciParser } from './undici-parser.js';

/** The interim status undici is told instead of 100: one it hands on as interim (Early Hints, RFC 8297), which our exchanges drop. */
const INTERIM = 103;

type Parser = Pick<UndiciParser, 'onHeadersComplete' | 'timeout'>;

/**
 * Makes the parser undici attached to `socket` (once undici has it, i.e.
 * after the connector's callback) read a 100 as interim, and any interim
 * answer without restarting the head timeout.
 */
export function acceptInterimAnswers(socket: Socket): void {
  const parser = undiciParser(socket);
  const onHeadersComplete = parser?.onHeadersComplete;
  if (parser === undefined || typeof onHeadersComplete !== 'function') return;
  parser.onHeadersComplete = function (this: Parser, statusCode, upgrade, shouldKeepAlive) {
    if (statusCode >= 200) return onHeadersComplete.call(this, statusCode, upgrade, shouldKeepAlive);
    // Hidden for the call, so undici finds no timer to refresh; put back unless undici set one of its own meanwhile.
    const timer = this.timeout;
    this.timeout = null;
    try {
      return onHeadersComplete.call(this, statusCode === 100 ? INTERIM : statusCode, upgrade, shouldKeepAlive);
    } finally {
      if (this.timeout === null) this.timeout = timer;
    }
  };
}
