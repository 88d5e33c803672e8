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
 * The answer to the last request taken on a connection is kept while it is
 * pending (`lastAnswer`): a connection closed gracefully closes after it, so
 * that every request already forwarded gets its answer (retire.ts).
 */
import type { Socket } from 'node:net';
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { closesAfterAnswer } from './linger.js';

/** A connection's queued answers: what to tell when it closes, and the latest request's answer while it is pending. */
interface Waiting {
  readonly callbacks: Set<() => void>;
  /** The answer to the last request the handler took on the connection (`queueAnswer`), until that answer ends. */
  last: ServerResponse | undefined;
}

const waiting = new WeakMap<Socket, Waiting>();

/**
 * Calls `gone` when `socket` closes, if `res` is still queued on it (has no
 * socket yet); returns the function that cancels that. Nothing to do, and
 * nothing allocated, for an answer that holds its socket.
 */
export function whenQueuedClientGone(socket: Socket, res: ServerResponse, gone: () => void): () => void {
  if (res.socket !== null) return noop;
  const entry = waitingOn(socket);
  entry.callbacks.add(gone);
  return () => entry.callbacks.delete(gone);
}

/**
 * `whenQueuedClientGone` for the handler's own registration of each
 * request's answer (one per request): a queued one is also kept as the
 * connection's last answer until the returned cancel runs (when the answer
 * ends), for `lastAnswer`. One field write per pipelined request; none for
 * one that holds its socket.
 */
export function queueAnswer(socket: Socket, res: ServerResponse, gone: () => void): () => void {
  if (res.socket !== null) return noop;
  const entry = waitingOn(socket);
  entry.callbacks.add(gone);
  entry.last = res;
  return () => {
    entry.callbacks.delete(gone);
    // Not held past its end: a connection kept busy would otherwise keep one answer (and its request) reachable.
    if (entry.last === res) entry.last = undefined;
  };
}

function waitingOn(socket: Socket): Waiting {
  let entry = waiting.get(socket);
  if (entry === undefined) {
    const created: Waiting = { callbacks: new Set(), last: undefined };
    entry = created;
    waiting.set(socket, created);
    socket.once('close', () => {
      for (const callback of created.callbacks) callback();
      created.callbacks.clear();
      created.last = undefined;
    });
  }
  return entry;
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
 * The answer to the last request taken on `socket`, if it is not sent yet:
 * the one queued last behind the others (`queueAnswer`), or else the one in
 * progress (`answerInProgress`). Every request before it has its answer
 * ahead of it in node's queue (RFC 9112 §9.3.2: answers go in request order).
 */
export function lastAnswer(socket: Duplex): ServerResponse | undefined {
  const last = waiting.get(socket as Socket)?.last;
  return last === undefined || last.destroyed ? answerInProgress(socket) : last;
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
  waitForAnswers(socket, then, false);
}

/**
 * `inAnswerOrder` for a caller that drops what the client sent after the
 * request (the plain-HTTP port's CONNECT and Upgrade, answered as requests):
 * it is read and dropped meanwhile instead of paused, so that the client's
 * FIN is seen. A plain socket paused reads nothing, FIN included (a TLS one
 * still sees it): the client's leaving went unseen, the answer before was
 * written to no one and logged whole, and its origin request was not
 * abandoned. Its FIN ends the connection, as Node's server takes a request's
 * client's FIN (the answers cut, logged 499).
 */
export function dropAfterAnswers(socket: Duplex, then: () => void): void {
  waitForAnswers(socket, then, true);
}

function waitForAnswers(socket: Duplex, then: () => void, dropsRest: boolean): void {
  if (answerInProgress(socket) === undefined) return then();
  const left = (): void => void socket.destroy();
  if (dropsRest) {
    socket.on('end', left);
    socket.resume();
  } else socket.pause();
  if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
  const drain = (): void => void answerInProgress(socket)?.emit('drain');
  socket.on('drain', drain);
  whenAnswersSent(socket, () => {
    socket.off('drain', drain);
    socket.off('end', left);
    // The connection closes after an answer before it (its request's body unread, linger.ts; a reload or the stop,
    // retire.ts): nothing after that answer is processed (RFC 9112 §9.6), what the client still sends is dropped.
    if (closesAfterAnswer(socket)) return void socket.resume();
    then();
  });
}
