/**
 * Turning an answer's head that says `Connection: keep-alive` into one that
 * says `Connection: close`, while the head has not reached the connection:
 * a pipelined answer queued behind another (RFC 9112 §9.3.2) has its head
 * written (node keeps it in the answer's own buffer until the connection is
 * handed to it) as soon as its origin answers. When the connection is then
 * retired, that answer is its last, and its head must say so (RFC 9112 §9.6:
 * `close` on the last answer), or the client learns of the close only from
 * the connection's end.
 *
 * Node's internals used (Node 20 to 24): `_header` (the head as written),
 * `_headerSent` (moved into `outputData`), `outputData` / `outputSize` (what
 * waits for the socket), `_onPendingData` (the server's count of it). Any
 * other shape is left as it is: the connection still closes after the answer.
 *
 * Cost: nothing per request; runs only for a retired connection's last answer.
 */
import type { ServerResponse } from 'node:http';

type Internals = ServerResponse & {
  _header?: string | null;
  _headerSent?: boolean;
  outputData?: { data: unknown }[];
  outputSize?: number;
  _onPendingData?: (delta: number) => void;
};

/** Node's keep-alive lines (`Keep-Alive` only with a keep-alive timeout); the status line's CRLF before them. */
const KEEP_ALIVE = /\r\nConnection: keep-alive\r\n(?:Keep-Alive: [^\r\n]*\r\n)?/;

/** Makes `res`'s head, written but not on the connection yet, say `Connection: close`; returns whether it does now. */
export function sayCloseInUnsentHead(res: ServerResponse): boolean {
  const answer = res as Internals;
  const head = answer._header;
  if (typeof head !== 'string') return false;
  const closing = head.replace(KEEP_ALIVE, '\r\nConnection: close\r\n');
  if (closing === head) return false;
  // Written, not yet sent: the head goes out with the first body write (or the end).
  if (answer._headerSent !== true) {
    answer._header = closing;
    return true;
  }
  // Moved to the connection already, or being: too late.
  if (res.socket !== null) return false;
  // Not always the first thing waiting: an interim answer written while it waited (a 100 Continue) goes before it.
  const first = answer.outputData?.find((output) => typeof output.data === 'string' && output.data.startsWith(head));
  if (first === undefined || typeof first.data !== 'string') return false;
  first.data = closing + first.data.slice(head.length);
  answer._header = closing;
  const delta = closing.length - head.length;
  if (typeof answer.outputSize === 'number') answer.outputSize += delta;
  answer._onPendingData?.(delta);
  return true;
}
