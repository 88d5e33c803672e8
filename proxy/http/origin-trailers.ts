/**
 * An origin answer's trailer section, as undici's llhttp parser reads it: the
 * same code as a head, so fields RFC 9110 §6.5.1 leaves no place for in
 * trailers acted there as if they were in the head. Two of them are made to
 * act as keyedge decided; what is passed on of trailers is trailer-fields.ts's.
 *
 * Framing fields (Content-Length, Transfer-Encoding) are not refused. llhttp
 * took a Content-Length in a chunked answer's trailers for one beside
 * Transfer-Encoding in its head (HPE_INVALID_CONTENT_LENGTH, and the same for
 * a Transfer-Encoding after it), and undici compared its value with the body
 * it had read (UND_ERR_RES_CONTENT_LENGTH_MISMATCH): the answer, whole and
 * valid, failed at its last bytes, and the client's connection was cut (HTTP/1.1)
 * or its stream reset (HTTP/2). A trailer cannot change how the message was
 * delimited (§6.5.1): its framing is settled when the last chunk comes. So
 * while the parser reads a trailer section (from its first field to the
 * answer's end) llhttp's `lenient_chunked_length` flag is set, which in llhttp
 * 9 lifts only those two checks (src/llhttp/http.ts, `checkInvalidContentLength`
 * and `checkInvalidTransferEncoding`; its other use concerns requests), and
 * undici's length check uses the head's Content-Length (none, for a chunked
 * answer), not the trailer's.
 *
 * Two Content-Lengths in one trailer section, or one whose value is not a
 * number (or empty), llhttp refuses whatever its flags: `Duplicate
 * Content-Length` (HPE_UNEXPECTED_CONTENT_LENGTH) and `Invalid character in
 * Content-Length` / `Empty Content-Length` (HPE_INVALID_CONTENT_LENGTH) are
 * checked by the field's name alone, with no lenient flag on their path
 * (llhttp 9, `header_value_content_length_once`, `invalidContentLength`,
 * `checkEmptyHeaderValue`), and an llhttp error is not resumable. The parser
 * stops there, short of the section's end, and undici failed the whole answer
 * at its last bytes, as above. But the answer's body is whole by then (a
 * trailer section begins after the last chunk, RFC 9112 §7.1), and no
 * framing can follow from a trailer (§6.5.1). So, when the parser fails with
 * one of those two codes in a trailer section, the answer is completed there
 * without trailers, and its origin connection is closed: none of the section
 * is passed on, since it was not read to its end (nginx passes an origin's
 * trailers on in no case), and the bytes after the refused field, unread,
 * leave the connection unusable for another answer; undici then takes
 * another one for the next request, as after a `Connection: close`. Every
 * other error in a trailer section (a byte no field may hold, one cut short)
 * still fails the answer: the framing checks of heads and bodies are as
 * llhttp has them.
 *
 * `Connection: close` in trailers (§7.6.1's Connection belongs to the head)
 * is honoured: once the answer is complete the parser holds the connection
 * closed, and refuses whatever comes next on it. undici made its keep-alive
 * decision at the head and kept the connection for the next request, which
 * was sent and then failed on the first byte of its answer (502, though the
 * origin had answered it; a POST's effect was then lost to its client),
 * whoever's it was. The two views are made one: an answer whose end the
 * parser holds the connection closed after, when its head kept it alive,
 * closes it, as a head's `Connection: close` does (undici's own path: the
 * connection is dropped once the answer is complete, and the next request
 * takes another). Honouring the trailer rather than ignoring it is the choice
 * that needs no change to the parser; nginx reads no trailers from an origin
 * at all. Only answers the parser kept alive at their head are concerned:
 * undici's own keep-alive exceptions (a HEAD's answer) are left as undici
 * decides them. A Transfer-Encoding other than chunked in trailers makes the
 * parser expect the connection's close the same way, and closes it too.
 *
 * What this relies on: undici 7's parser (undici-parser.ts) with
 * `onHeadersComplete`, `onHeaderField`, `onMessageComplete`, `createError`,
 * `headers`, `statusCode`, `contentLength`, `shouldKeepAlive`, `ptr`,
 * `llhttp.llhttp_should_keep_alive` and
 * `llhttp.llhttp_set_lenient_chunked_length`; if any is missing nothing is
 * changed.
 *
 * Cost: four closures per origin connection; per field of a head, one call
 * through the `onHeaderField` wrapper (two comparisons); per answer, one flag
 * write and one call into the parser; per answer with trailers, two more.
 */
import type { Socket } from 'node:net';
import { type UndiciParser, undiciParser } from './undici-parser.js';

/** llhttp's codes for a Content-Length field refused by its name alone (llhttp 9, `ERROR`): in trailers, no framing. */
const HPE_UNEXPECTED_CONTENT_LENGTH = 4;
const HPE_INVALID_CONTENT_LENGTH = 11;

/** Makes the parser under `socket` read trailer sections as above. */
export function readTrailerSections(socket: Socket): void {
  const parser = undiciParser(socket);
  const onHeadersComplete = parser?.onHeadersComplete;
  const onHeaderField = parser?.onHeaderField;
  const onMessageComplete = parser?.onMessageComplete;
  const createError = parser?.createError;
  if (
    parser === undefined ||
    typeof onHeadersComplete !== 'function' ||
    typeof onHeaderField !== 'function' ||
    typeof onMessageComplete !== 'function' ||
    typeof createError !== 'function' ||
    !Array.isArray(parser.headers) ||
    typeof parser.contentLength !== 'string' ||
    typeof parser.llhttp?.llhttp_should_keep_alive !== 'function' ||
    typeof parser.llhttp.llhttp_set_lenient_chunked_length !== 'function'
  )
    return;
  /** What the parser said of the final answer's head: keep the connection. */
  let headKeptAlive = false;
  /** The parser is in a trailer section, and the Content-Length undici had from the head. */
  let trailing = false;
  let headContentLength = '';
  parser.onHeadersComplete = function (this: UndiciParser, statusCode, upgrade, shouldKeepAlive) {
    if (statusCode >= 200) headKeptAlive = shouldKeepAlive;
    return onHeadersComplete.call(this, statusCode, upgrade, shouldKeepAlive);
  };
  parser.onHeaderField = function (this: UndiciParser, name) {
    // A field after the final answer's head (undici sets statusCode there and clears it at the answer's end) is a
    // trailer; llhttp checks a framing field once its name is read, after this call.
    if (!trailing && this.statusCode >= 200 && this.ptr !== null) {
      trailing = true;
      headContentLength = this.contentLength;
      this.llhttp.llhttp_set_lenient_chunked_length(this.ptr, 1);
    }
    return onHeaderField.call(this, name);
  };
  parser.onMessageComplete = function (this: UndiciParser) {
    if (trailing) {
      trailing = false;
      this.contentLength = headContentLength;
      if (this.ptr !== null) this.llhttp.llhttp_set_lenient_chunked_length(this.ptr, 0);
    }
    if (this.statusCode >= 200 && headKeptAlive && this.shouldKeepAlive && this.ptr !== null && this.llhttp.llhttp_should_keep_alive(this.ptr) === 0)
      this.shouldKeepAlive = false;
    return onMessageComplete.call(this);
  };
  parser.createError = function (this: UndiciParser, ret, data) {
    if (trailing && (ret === HPE_UNEXPECTED_CONTENT_LENGTH || ret === HPE_INVALID_CONTENT_LENGTH)) {
      // The answer ends whole at its last chunk, without trailers; not kept alive, undici closes the connection (its
      // parser stopped inside the section) and the error this returns finds it destroyed, and no request on it.
      this.headers = [];
      this.shouldKeepAlive = false;
      this.onMessageComplete();
    }
    return createError.call(this, ret, data);
  };
}
