/**
 * An origin that ends its connection (FIN, or a reset) while the answer's
 * body waits for the client. An answer framed by the close (no length, RFC
 * 9112 §6.3), or one that says `Connection: close` (§9.6) or comes from an
 * HTTP/1.0 origin, ends with the origin's FIN, and a client slower than the
 * origin is the common case: each body chunk the client's socket (or its
 * HTTP/2 window) does not take at once pauses undici's parser until the
 * client's 'drain' (origin-exchange.ts), and a 64 KiB chunk is never taken at
 * once. undici 7 then reads the FIN with the parser paused and asserts it is
 * not (`Parser.finish`, lib/dispatcher/client-h1.js, nodejs/undici#5360): an
 * AssertionError thrown from the socket's 'end' (or 'error') listener,
 * uncaught, and the worker died with every connection it held. undici 8
 * fixed it (nodejs/undici#5474); undici 7 did not.
 *
 * The fix is undici 8's, on each connection's parser: a paused parser is
 * resumed and fed what is still buffered before it finishes, so a body framed
 * by its length or chunks completes there, and one framed by the close
 * completes at the finish; a body cut short still fails (length mismatch,
 * unterminated chunks), never passes for whole. The pause is advisory then:
 * the exchange takes the rest into the client's buffers (already read from
 * the origin, so bounded by what undici held), and its own 'drain' resume is a
 * no-op on a parser no longer paused.
 *
 * What this relies on: undici 7's parser (undici-parser.ts) with `finish`,
 * `execute`, `paused`, `ptr`, `socket` and `llhttp.llhttp_resume`; if any is
 * missing nothing is changed.
 *
 * Cost: one closure per origin connection; nothing per answer unless the
 * origin ends its connection while the parser is paused.
 */
import type { Socket } from 'node:net';
import { type UndiciParser, undiciParser } from './undici-parser.js';

const EMPTY = Buffer.alloc(0);

/** Makes the parser undici attached to `socket` finish even when it is paused as the origin ends the connection. */
export function finishWhenPaused(socket: Socket): void {
  const parser = undiciParser(socket);
  const finish = parser?.finish;
  if (parser === undefined || typeof finish !== 'function' || typeof parser.execute !== 'function' || typeof parser.llhttp?.llhttp_resume !== 'function')
    return;
  parser.finish = function (this: UndiciParser) {
    if (this.paused && this.ptr !== null) {
      // As undici 8's finish: resume across the exchange's pauses until what the socket still holds is parsed.
      let data: Buffer;
      do {
        this.llhttp.llhttp_resume(this.ptr);
        this.paused = false;
        data = (this.socket.read() as Buffer | null) ?? EMPTY;
        this.execute(data);
      } while (this.paused && data.length > 0 && this.ptr !== null);
      if (this.paused && this.ptr !== null) {
        this.llhttp.llhttp_resume(this.ptr);
        this.paused = false;
      }
    }
    return finish.call(this);
  };
}
