/**
 * An origin's status line with a higher HTTP/1 minor version (`HTTP/1.2`):
 * read as HTTP/1.1. RFC 9112 §2.3: a recipient SHOULD process a message of
 * a higher minor version as if it were the highest minor version it
 * implements within that major version (nginx does). undici's llhttp
 * parser accepted only the versions it knows (0.9, 1.0, 1.1, 2.0) and
 * refused any other with HPE_INVALID_VERSION: a 502 for an answer that was
 * fine.
 *
 * llhttp's `lenient_version` flag, set on each origin connection's parser,
 * lifts that check and nothing else: in llhttp 9 (undici 7) the flag is read
 * only where the version digits are checked (src/llhttp/http.ts,
 * `checkVersion`), and the version then decides only keep-alive
 * (`llhttp_should_keep_alive`: any minor above 0 is read as 1.1), never
 * framing. The flag lets any one digit through on either side of the dot, so
 * the answer's head is refused here, before undici sees it, when its version
 * is neither HTTP/1.x nor one llhttp accepted without the flag: a version of
 * another major (`HTTP/3.0`) still fails as it did, the connection destroyed
 * with OriginAnswerRefused (a 502; the origin answered, it is not cooled
 * down, origin-failure.ts).
 *
 * What this relies on: undici 7's parser (undici-parser.ts) with `ptr`,
 * `socket`, `onHeadersComplete`, and the wasm exports
 * `llhttp_set_lenient_version`, `llhttp_get_http_major` and
 * `llhttp_get_http_minor`; if any is missing nothing is changed and
 * `HTTP/1.2` fails as before (test/abuse-origin-answers.test.ts says so).
 *
 * Cost: one wasm call per origin connection; per answer head, two.
 */
import type { Socket } from 'node:net';
import { OriginAnswerRefused } from './errors.js';
import { type UndiciParser, undiciParser } from './undici-parser.js';

/** Whether llhttp, without the flag, accepts HTTP/`major`.`minor`, or it is an HTTP/1 minor version (RFC 9112 §2.3). */
export function acceptedVersion(major: number, minor: number): boolean {
  return major === 1 || (major === 0 && minor === 9) || (major === 2 && minor === 0);
}

/** Makes the parser undici attached to `socket` read `HTTP/1.x` status lines of any minor version `x` as HTTP/1.1. */
export function acceptHigherMinorVersions(socket: Socket): void {
  const parser = undiciParser(socket);
  const onHeadersComplete = parser?.onHeadersComplete;
  const llhttp = parser?.llhttp;
  if (
    parser === undefined ||
    typeof parser.ptr !== 'number' ||
    typeof onHeadersComplete !== 'function' ||
    typeof llhttp?.llhttp_set_lenient_version !== 'function' ||
    typeof llhttp.llhttp_get_http_major !== 'function' ||
    typeof llhttp.llhttp_get_http_minor !== 'function'
  )
    return;
  llhttp.llhttp_set_lenient_version(parser.ptr, 1);
  parser.onHeadersComplete = function (this: UndiciParser, statusCode, upgrade, shouldKeepAlive) {
    const ptr = this.ptr;
    const major = ptr === null ? 1 : this.llhttp.llhttp_get_http_major(ptr);
    const minor = ptr === null ? 1 : this.llhttp.llhttp_get_http_minor(ptr);
    if (acceptedVersion(major, minor)) return onHeadersComplete.call(this, statusCode, upgrade, shouldKeepAlive);
    // As undici refuses an answer itself: the socket destroyed with the reason, -1 for the parser.
    this.socket.destroy(new OriginAnswerRefused(`the origin answered with HTTP/${major}.${minor}, not an HTTP/1 version`));
    return -1;
  };
}
