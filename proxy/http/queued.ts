/**
 * Answers waiting on a connection. A pipelined request's answer waits behind
 * the one before it (RFC 9112 §9.3.2): node has not given it the socket yet,
 * so it gets no 'close' of its own when the connection closes. Those answers
 * are told here, through one 'close' listener per connection however deep
 * the pipeline (one listener per request would grow with it). Answers that
 * hold their socket need none of this: their 'close' comes from node. And
 * what must wait for a connection's answers to be sent (an upgrade, a CONNECT,
 * our answer to a request node could not parse) waits here, and an answer
 * cut while queued closes its connection when its turn comes (`cutAnswer`).
 */
import type { Socket } from 'node:net';
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

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

/**
 * Cuts an answer that cannot be sent whole (its origin broke off after its
 * head, a stall, a failure of ours after it started): its connection closes,
 * the only way left to tell an HTTP/1.1 client (RFC 9112 §8). An answer
 * still queued behind another closes it once the answers before it are sent,
 * when node hands it the socket. Node 20's and 22's destroy() waits for that
 * socket itself; Node 24's (no socket yet) only emits the answer's 'close',
 * and when the socket comes to it writes what it held (its head, part of its
 * body) and never ends: the connection was held open with a part answer the
 * client waited on, and the requests pipelined behind it got nothing.
 */
export function cutAnswer(res: ServerResponse): void {
  if (res.socket === null && !res.destroyed) res.once('socket', destroySocket);
  res.destroy();
}

function destroySocket(socket: Socket): void {
  socket.destroy();
}

/**
 * The answer that holds `socket` while it is being sent, if any: node's
 * server keeps it as `socket._httpMessage` (Node 20 to 24), and answers queued
 * behind it get the socket only once it is done, so none means none pending.
 */
export function answerInProgress(socket: Duplex): ServerResponse | undefined {
  const answer = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
  // Not writableFinished: an answer written at once on a plain socket is finished before its 'finish' (next tick),
  // which is what hands the socket to the answer queued behind it; taken as done, that one was overtaken (port 80).
  return answer == null || answer.destroyed ? undefined : answer;
}

/**
 * Calls `then` once no answer is being sent or queued on `socket` (at once
 * when none is): what comes after a request that node's server hands over
 * without an answer of its own (an upgrade, a request it could not parse)
 * must not overtake the answers of the requests before it (RFC 9112 §9.3.2).
 */
export function whenAnswersSent(socket: Duplex, then: () => void): void {
  const earlier = answerInProgress(socket);
  if (earlier === undefined) return then();
  const next = (): void => {
    earlier.off('finish', next);
    earlier.off('close', next);
    // After node's own 'finish' listener, which hands the socket to the next queued answer, if any.
    whenAnswersSent(socket, then);
  };
  earlier.once('finish', next);
  earlier.once('close', next);
}

/**
 * Calls `then` for a connection node's server handed over without an answer
 * of its own (an upgrade, a CONNECT) once the answers to the requests before
 * it are sent: handled at once, its answer would overtake theirs (RFC 9112
 * §9.3.2). Until then the socket is paused (what the client sent after the
 * request is not read), and its 'drain' is passed to the answer being sent:
 * node's server dropped its own error and 'drain' listeners when it handed
 * the socket over, and an answer that met backpressure would otherwise wait
 * for a 'drain' that never comes, until its send timeout cut it.
 */
export function inAnswerOrder(socket: Duplex, then: () => void): void {
  if (answerInProgress(socket) === undefined) return then();
  socket.pause();
  if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
  const drain = (): void => void answerInProgress(socket)?.emit('drain');
  socket.on('drain', drain);
  whenAnswersSent(socket, () => {
    socket.off('drain', drain);
    then();
  });
}
