/**
 * Puts off, to the next turn of the event loop, the destroy Node gives an
 * HTTP/2 session whose client sent GOAWAY with an error code.
 *
 * Why: Node calls that destroy from inside its reading of the client's
 * frames (lib/internal/http2/core.js onGoawayData, which nghttp2 runs while
 * it parses one read's bytes), and nghttp2 goes on parsing the rest of that
 * read. A HEADERS behind the GOAWAY opens a stream Node no longer sets up
 * (onSessionHeaders returns at once on a destroyed session), and a DATA frame
 * on it then aborts the process on Node 22.23 (`Assertion failed:
 * onread->IsFunction()`, src/stream_base.cc; nodejs/node#64850). Four frames
 * in one TLS record, from any client, ended a worker and every connection it
 * held (test/abuse-http2-framing.test.ts). Node 20.20 and 24.21 survive them.
 *
 * How: Node emits 'goaway' just before that destroy; a listener shadows the
 * session's destroy, once, with one that calls the original on
 * setImmediate. The frames behind the GOAWAY become streams as usual, which
 * sessions.ts refuses (`goneAway`), and the session is destroyed, with the
 * same error, once the read is done. A destroy of ours in between (the
 * socket closed) runs at once; the deferred one then finds the session
 * destroyed and does nothing.
 */
import { constants, type Http2Session } from 'node:http2';

/** Sessions whose client sent GOAWAY with an error code: their destroy is under way. */
const gone = new WeakSet<Http2Session>();

/** Listens for the client's GOAWAY frames on `session` (called once, when it starts). */
export function deferDestroyOnGoaway(session: Http2Session): void {
  session.on('goaway', (code: number) => {
    // NO_ERROR: Node closes the session instead, letting open streams finish; new ones are refused by Node itself.
    if (code === constants.NGHTTP2_NO_ERROR || gone.has(session)) return;
    gone.add(session);
    const destroy = session.destroy;
    session.destroy = (error?: Error, errorCode?: number): void => {
      // Back to the prototype's own: this shadow serves the one call Node makes now.
      delete (session as Partial<Http2Session>).destroy;
      setImmediate(() => destroy.call(session, error, errorCode));
    };
  });
}

/** Whether the client of `session` sent GOAWAY with an error code: no new stream is served. */
export function goneAway(session: Http2Session): boolean {
  return gone.has(session);
}
