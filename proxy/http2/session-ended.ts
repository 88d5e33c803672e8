/**
 * Whether nghttp2 has finished with an HTTP/2 session on its own: it sent
 * GOAWAY for a connection error (RFC 9113 §5.4.1: a frame over the maximum
 * size, a bad preface, …) and so wants neither to read nor to write, which
 * nghttp2's documentation says means the application should drop the
 * connection (nghttp2_session_want_read / nghttp2_session_want_write).
 *
 * Node 22 and 24 end such a session themselves ('error', then 'close').
 * Node 20 does not: it stops reading the socket and emits nothing, so the
 * client's close goes unseen and the connection stays in CLOSE-WAIT, its
 * descriptor and its place in limits.maxConnectionsPerClient held until the
 * idle deadline (up to http2IdleTimeoutMs + sendTimeoutMs, 135 s by default),
 * where RFC 9113 §5.4.1 has the endpoint close it after the GOAWAY.
 *
 * Read through the native session's `hasPendingData()` (lib/internal/http2/
 * core.js, kMaybeDestroy, Node 20 to 24): true on every live session seen
 * (idle, streams open, closing gracefully), false once nghttp2 ended it.
 * Internal, so: a Node without it reads as never ended (the idle deadlines
 * still bound the connection), and test/abuse-http2-framing.test.ts pins it.
 */
import type { Http2Session } from 'node:http2';

interface NativeSession {
  hasPendingData?: () => boolean;
}

/** The symbol Node keeps the native session under; null once looked for and not found. */
let handleKey: symbol | null | undefined;

export function endedByNghttp2(session: Http2Session): boolean {
  handleKey ??= Object.getOwnPropertySymbols(session).find((key) => key.description === 'kHandle') ?? null;
  if (handleKey === null) return false;
  const handle = (session as unknown as Record<symbol, NativeSession | undefined>)[handleKey];
  return typeof handle?.hasPendingData === 'function' && !handle.hasPendingData();
}
