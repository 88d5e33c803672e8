/**
 * Unasked-for 100 (Continue) answers from an origin, read as the interim
 * answers they are. RFC 9110 §15.2: a client must be able to parse 1xx
 * answers before the final one even when it did not expect them (nginx
 * drops them). keyedge never sends `Expect: 100-continue` to an origin
 * (expect.ts: the expectation is met at the edge), so every 100 it gets is
 * one of those; some servers send one anyway before a POST's answer.
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
 * bookkeeping (the header timeout, the parser's reset for the next answer),
 * and the final answer follows on the same connection.
 *
 * What this relies on: undici keeps the connection's parser on the socket
 * under a symbol described 'parser', and calls its `onHeadersComplete` per
 * answer head (undici 7). Set on the one parser instance, not
 * undici's class: nothing else in the process that uses undici changes. If a
 * later undici keeps its parser elsewhere, nothing is changed and a 100
 * fails as before (test/proxy-h1-edges.test.ts says so).
 *
 * Cost: one property lookup per origin connection, one closure per connection.
 */
import type { Socket } from 'node:net';

/** The interim status undici is told instead of 100: one it hands on as interim (Early Hints, RFC 8297), which our exchanges drop. */
const INTERIM = 103;

type Parser = { onHeadersComplete: (statusCode: number, upgrade: boolean, shouldKeepAlive: boolean) => number };

/** Makes the parser undici attached to `socket` (once undici has it, i.e. after the connector's callback) read a 100 as interim. */
export function acceptUnaskedContinue(socket: Socket): void {
  const key = Object.getOwnPropertySymbols(socket).find((symbol) => symbol.description === 'parser');
  const parser = key === undefined ? undefined : ((socket as unknown as Record<symbol, unknown>)[key] as Partial<Parser> | null | undefined);
  const onHeadersComplete = parser?.onHeadersComplete;
  if (parser == null || typeof onHeadersComplete !== 'function') return;
  parser.onHeadersComplete = function (this: Parser, statusCode, upgrade, shouldKeepAlive) {
    return onHeadersComplete.call(this, statusCode === 100 ? INTERIM : statusCode, upgrade, shouldKeepAlive);
  };
}
