/**
 * How many requests pipelined on one HTTP/1.1 connection (RFC 9112 §9.3.2)
 * are forwarded at once. Their answers go out in request order, so an answer
 * queued behind another holds its origin request (and an origin place,
 * origin-gate.ts) until every answer before it is sent: forwarded all at
 * once, one write of 400 pipelined GETs took every place of an origin and
 * its queue, and its other clients got 503 at once. nginx and HAProxy take a
 * connection's requests one at a time; here at most PIPELINE_IN_FLIGHT run
 * (the one being sent among them), and the next is forwarded when one of
 * them has ended (its answer's 'close'). The rest wait, holding no origin
 * place, up to `limits.originMaxQueue` on a connection (what may wait for
 * an origin's places); one past those is refused as a full origin queue
 * refuses one (503 KEYEDGE_HTTP_ORIGIN_BUSY, with Retry-After): a waiting
 * request has no output, and Node's server, which
 * stops reading a connection only while its answers' output is large, would
 * read and keep them without bound. (Node parses what one read brought
 * whole, a few hundred small requests, so pausing the connection here
 * would not bound them either: measured, it changed nothing.)
 *
 * Cost: nothing for a request that holds its connection on one that never
 * pipelined (`pipelined` asked first: no entry, no listener, no closure); a
 * connection that pipelines gets one entry, and each of its requests one
 * 'close' listener.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { answerInProgress } from './queued.js';

/** Requests of one connection forwarded at once (nginx, HAProxy: one). */
export const PIPELINE_IN_FLIGHT = 4;

interface Turns {
  running: number;
  readonly waiting: (() => void)[];
}

const turns = new WeakMap<Duplex, Turns>();

/** Whether a request on `socket` may wait its turn: the connection pipelined before (it has an entry). */
export function pipelined(socket: Duplex): boolean {
  return turns.has(socket);
}

/**
 * Calls `start` for the request on `socket` whose answer is `res`, at once or
 * when its turn comes (never, when the connection closes first); returns
 * false, `start` never called, when `maxWaiting` already wait there.
 */
export function inTurn(socket: Duplex, res: ServerResponse, maxWaiting: number, start: () => void): boolean {
  let entry = turns.get(socket);
  if (entry === undefined) {
    // Nothing before it on the connection: not pipelined (yet).
    if (res.socket !== null) {
      start();
      return true;
    }
    entry = { running: 0, waiting: [] };
    turns.set(socket, entry);
    // The answer being sent, started before the connection had an entry, is one of those running.
    const current = answerInProgress(socket);
    if (current !== undefined) run(entry, current);
  }
  if (entry.running < PIPELINE_IN_FLIGHT && entry.waiting.length === 0) {
    run(entry, res);
    start();
    return true;
  }
  if (entry.waiting.length >= maxWaiting) return false;
  const turn = entry;
  entry.waiting.push(() => {
    run(turn, res);
    start();
  });
  return true;
}

function run(entry: Turns, res: ServerResponse): void {
  entry.running++;
  res.once('close', () => next(entry, res));
}

function next(entry: Turns, res: ServerResponse): void {
  entry.running--;
  const socket = res.req.socket;
  // A connection that closed forwards nothing more: its waiting requests heard of it (queued.ts).
  if (socket.destroyed) {
    entry.waiting.length = 0;
    return;
  }
  while (entry.running < PIPELINE_IN_FLIGHT && entry.waiting.length > 0) entry.waiting.shift()!();
}
