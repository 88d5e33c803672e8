/**
 * An origin answer whose trailer section says `Connection: close`. RFC 9110
 * §6.5.1 leaves no place for it there (a trailer cannot change how the
 * message was delimited or the connection handled, and §7.6.1's Connection
 * belongs to the head), but undici's llhttp parser takes it in as it does in a
 * head: once the answer is complete it holds the connection closed, and
 * refuses whatever comes next on it. undici made its keep-alive decision at
 * the head and keeps the connection for the next request, which is sent and
 * then fails on the first byte of its answer (502, though the origin had
 * answered it; a POST's effect is then lost to its client), whoever's it is.
 *
 * The two views are made one: an answer whose end the parser holds the
 * connection closed after, when its head kept it alive, closes it, as a head's
 * `Connection: close` does (undici's own path: the connection is dropped once
 * the answer is complete, and the next request takes another). Honouring the
 * trailer rather than ignoring it is the choice that needs no change to the
 * parser; nginx reads no trailers from an origin at all. Only answers the
 * parser kept alive at their head are concerned: undici's own keep-alive
 * exceptions (a HEAD's answer) are left as undici decides them.
 *
 * What this relies on: undici 7's parser (undici-parser.ts) with
 * `onHeadersComplete`, `onMessageComplete`, `statusCode`, `shouldKeepAlive`,
 * `ptr` and `llhttp.llhttp_should_keep_alive`; if any is missing nothing is
 * changed.
 *
 * Cost: two closures per origin connection; per answer, one flag write and
 * one call into the parser.
 */
import type { Socket } from 'node:net';
import { type UndiciParser, undiciParser } from './undici-parser.js';

/** Makes the connection under `socket` close after an answer whose trailers said `Connection: close`. */
export function closeOnTrailerClose(socket: Socket): void {
  const parser = undiciParser(socket);
  const onHeadersComplete = parser?.onHeadersComplete;
  const onMessageComplete = parser?.onMessageComplete;
  if (
    parser === undefined ||
    typeof onHeadersComplete !== 'function' ||
    typeof onMessageComplete !== 'function' ||
    typeof parser.llhttp?.llhttp_should_keep_alive !== 'function'
  )
    return;
  /** What the parser said of the final answer's head: keep the connection. */
  let headKeptAlive = false;
  parser.onHeadersComplete = function (this: UndiciParser, statusCode, upgrade, shouldKeepAlive) {
    if (statusCode >= 200) headKeptAlive = shouldKeepAlive;
    return onHeadersComplete.call(this, statusCode, upgrade, shouldKeepAlive);
  };
  parser.onMessageComplete = function (this: UndiciParser) {
    if (this.statusCode >= 200 && headKeptAlive && this.shouldKeepAlive && this.ptr !== null && this.llhttp.llhttp_should_keep_alive(this.ptr) === 0)
      this.shouldKeepAlive = false;
    return onMessageComplete.call(this);
  };
}
