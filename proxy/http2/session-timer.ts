/**
 * Disarms the timeout timer a closed HTTP/2 session still holds, so the
 * session is freed when it closes, not when its timer fires.
 *
 * Why: Node 20 to 24 clear a session's timer in closeSession
 * (lib/internal/http2/core.js) with `session.setTimeout(0)`, one line after
 * marking the session destroyed, and setTimeout returns at once on a
 * destroyed session (lib/internal/stream_base_commons.js, setStreamTimeout).
 * So the timer stays armed, and its callback (the session's bound
 * `_onTimeout`) holds the session, its TLS socket and everything reachable
 * from them (sessions.ts's record of it, its streams' state) for
 * `limits.http2IdleTimeoutMs` (or `headerTimeoutMs` before the first stream).
 * A client that opens and drops HTTP/2 connections kept one such session per
 * connection alive for 75 s: thousands a second, hundreds of megabytes
 * (test/abuse-http2-sessions-freed.test.ts). Calling `setTimeout(0)` ourselves
 * first is no cure: Node also ends sessions itself (socket closed, protocol
 * error), with no hook before it marks them destroyed.
 *
 * How: the timer is the session's own property under Node's `kTimeout`
 * symbol (lib/internal/timers.js, Symbol('timeout'), Node 20 to 24),
 * found by its description once. A Node without it leaves the timer as
 * before: freed when it fires.
 */
import type { Http2Session } from 'node:http2';

let key: symbol | undefined;

/** Called once the session has closed: its timer, if still armed, will never be wanted. */
export function disarmClosedSession(session: Http2Session): void {
  key ??= Object.getOwnPropertySymbols(session).find((s) => s.description === 'timeout');
  if (key === undefined) return;
  const timer = (session as unknown as Record<symbol, unknown>)[key];
  if (timer !== null && typeof timer === 'object' && 'refresh' in timer) clearTimeout(timer as NodeJS.Timeout);
}
