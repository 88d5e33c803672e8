/**
 * Telling a queued answer that its client has gone. A pipelined request's
 * answer waits behind the one before it (RFC 9112 §9.3.2): node has not given
 * it the socket yet, so it gets no 'close' of its own when the connection
 * closes. Those answers are told here, through one 'close' listener per
 * connection however deep the pipeline (one listener per request would grow
 * with it). Answers that hold their socket need none of this: their 'close'
 * comes from node.
 */
import type { Socket } from 'node:net';
import type { ServerResponse } from 'node:http';

const waiting = new WeakMap<Socket, Set<() => void>>();

/**
 * Calls `gone` when `socket` closes, if `res` is still queued on it (has no
 * socket yet); returns the function that cancels that. Nothing to do, and
 * nothing allocated, for an answer that holds its socket.
 */
export function whenQueuedClientGone(socket: Socket, res: ServerResponse, gone: () => void): () => void {
  if (res.socket !== null) return noop;
  let callbacks = waiting.get(socket);
  if (callbacks === undefined) {
    const set = new Set<() => void>();
    callbacks = set;
    waiting.set(socket, set);
    socket.once('close', () => {
      for (const callback of set) callback();
      set.clear();
    });
  }
  const set = callbacks;
  set.add(gone);
  return () => set.delete(gone);
}

function noop(): void {}
