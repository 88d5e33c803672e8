/**
 * Puts off, to the next turn of the event loop, the destroys Node gives an
 * HTTP/2 session from inside its reading of the client's frames.
 *
 * Why: Node destroys a session there on the client's GOAWAY with an error
 * code (lib/internal/http2/core.js onGoawayData) and, on Node 22 and 24, on
 * a frame nghttp2 finds invalid with a protocol error (onSessionInternalError,
 * called from src/node_http2.cc OnInvalidFrame: a stream whose DATA exceeds
 * its content-length is enough), and nghttp2 goes on parsing the rest of
 * that read. A HEADERS behind it opens a stream Node no longer sets up
 * (onSessionHeaders returns at once on a destroyed session), and a DATA
 * frame on it then aborts the process on Node 22.23 (`Assertion failed:
 * onread->IsFunction()`, src/stream_base.cc; nodejs/node#64850). A few frames
 * in one TLS record, from any client, ended a worker and every connection it
 * held (test/abuse-http2-framing.test.ts). Node 20.20 and 24.21 survive them.
 *
 * How: the session's destroy is shadowed, for its life, by one that runs
 * Node's own on setImmediate when it comes with one of those two errors
 * (Node's codes, the same on Node 20, 22 and 24); any other destroy (ours,
 * with no error) runs at once. The frames behind become streams as usual,
 * which sessions.ts refuses (`destroyPending`), and the session is destroyed,
 * with the same error, once the read is done; a destroy in between finds
 * it destroyed, and the deferred one then does nothing.
 */
import type { Http2Session } from 'node:http2';

/** Node's errors for the destroys it calls while reading frames: the client's GOAWAY, nghttp2's protocol error. */
const FROM_READ = new Set(['ERR_HTTP2_SESSION_ERROR', 'ERR_HTTP2_ERROR']);

/** Sessions whose destroy is put off: no new stream is served on them. */
const pending = new WeakSet<Http2Session>();

/** Shadows `session`'s destroy (called once, when it starts). */
export function deferDestroysFromRead(session: Http2Session): void {
  const destroy = session.destroy;
  session.destroy = (error?: Error, code?: number): void => {
    const from = (error as { code?: unknown } | undefined)?.code;
    if (typeof from !== 'string' || !FROM_READ.has(from) || session.destroyed) return destroy.call(session, error, code);
    if (pending.has(session)) return;
    pending.add(session);
    setImmediate(() => destroy.call(session, error, code));
  };
}

/** Whether `session` is being destroyed (deferDestroysFromRead): no new stream is served. */
export function destroyPending(session: Http2Session): boolean {
  return pending.has(session);
}
