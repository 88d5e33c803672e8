/**
 * A worker's HTTP/1.1 connections (of its TLS listeners, and of its
 * plain-HTTP port for the stop), kept so that a
 * certificate change can end the ones it no longer covers: a reload that
 * drops a name from the certificate a connection was served (a renewal
 * without it, an entry removed) would otherwise leave a keep-alive client
 * sending requests for that name on its old connection for as long as the
 * connection lives. HTTP/2's counterpart is http2/sessions.ts `retire()`
 * (GOAWAY); the check is the same (tls/connection.ts `stillCovers`).
 *
 * On the change, as nginx treats the connections of an old configuration:
 * - an idle connection (no answer in progress, no request head begun) is closed at once, gracefully
 *   (our FIN, then what arrives is read and dropped until the client closes
 *   or the linger ends: linger.ts), and a request arriving meanwhile is not
 *   processed: a keep-alive client retries it on a new connection (RFC 9112
 *   §9.3.1, §9.5); one whose request head has begun to arrive is not idle
 *   (nor to nginx, nor to Node's closeIdleConnections): that request's answer
 *   closes it, as a late connection's first (below), within the header deadline;
 * - a connection with answers in progress (one being sent, pipelined ones
 *   queued behind it, each already forwarded to its origin) gets every one
 *   of them, the last with `Connection: close` (or, its head already
 *   sent, closed right after it), and nothing parsed after the change is
 *   processed (RFC 9112 §9.6): a request that reached an origin (a POST,
 *   say) always gets its answer, since the client could not tell whether it
 *   was processed (§9.3.2 lets it retry only unanswered ones it knows safe);
 * - a connection whose handshake completes after the change (its ClientHello
 *   picked the old certificate) is checked as it arrives: its first answer
 *   says `Connection: close`, so its client reconnects and sees what serves now.
 * WebSocket tunnels and CONNECT tunnels already under way are left alone (one
 * whose origin's 101 is on its way too); one pipelined behind answers still
 * being sent is not opened (the connection closes after those answers), nor
 * one asked for by the first request of a connection whose first answer closes
 * it (below): a 101 cannot say `Connection: close`, so it is refused (503,
 * upgrade.ts) and its client opens it on a new connection.
 *
 * The worker's graceful stop (`closeAll`) ends every connection the same
 * way, as nginx's graceful shutdown does: Node's `server.close()` closes only
 * idle ones, and a busy one was kept alive, its client's next requests
 * processed until the grace period cut them. The plain-HTTP port's
 * connections (`addPlain`: redirects, ACME HTTP-01) are ended with them; no
 * certificate change concerns those. A connection that comes during the stop
 * (its handshake under way when the listener stopped accepting) closes after
 * its first answer, and is closed as an idle one if no request of it has
 * begun to arrive within FIRST_REQUEST_AT_STOP_MS: one that said nothing held
 * the worker's exit until its header deadline.
 *
 * Cost: per connection, a map entry and one 'close' listener; per request,
 * one WeakSet lookup (`closeFirst`), and per pipelined request one field
 * write (queued.ts `queueAnswer`); the walk over the connections happens at
 * the change only.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ProxyMetrics } from '../metrics.js';
import type { ConnectionInfo } from '../tls/connection.js';
import type { ExpectingHandler } from './expect.js';
import { headsArriving } from './arriving-heads.js';
import { closeAfterAnswer, lingerAfterEnd, processNoMore } from './linger.js';
import { answerInProgress, lastAnswer } from './queued.js';
import { sayCloseInUnsentHead } from './unsent-head.js';

/** Node's server sets `_last` from `shouldKeepAlive` when it writes the head, and closes after an answer with it set. */
type NodeAnswer = ServerResponse & { _last?: boolean };

/**
 * How long a connection that comes during the stop has for its first request
 * to begin to arrive before it is closed as an idle one (one begun is
 * answered, within the header deadline): a client sends its
 * request as its handshake ends (or as its TCP connection opens, on the
 * plain-HTTP port), so this covers the round trip, not a client that waits.
 */
const FIRST_REQUEST_AT_STOP_MS = 1_000;

export class Http1Connections {
  /** Every connection being served; a plain-HTTP one has no ConnectionInfo (no certificate to retire it for). */
  readonly #live = new Map<Socket, ConnectionInfo | undefined>();
  /** Connections whose handshake completed after a change they are not covered by: their first answer closes them. */
  readonly #closeFirst = new WeakSet<Duplex>();
  readonly #stillCovered: (connection: ConnectionInfo) => boolean;
  readonly #metrics: ProxyMetrics;
  /** The worker is stopping (`closeAll`): a connection that comes now closes after its first answer. */
  #stopping = false;

  constructor(stillCovered: (connection: ConnectionInfo) => boolean, metrics: ProxyMetrics) {
    this.#stillCovered = stillCovered;
    this.#metrics = metrics;
  }

  /** Connections being served. */
  get size(): number {
    return this.#live.size;
  }

  /** Keeps `socket`, just handed to an HTTP/1.1 server, until it closes; one that a change already left uncovered, or that comes during the stop, closes after its first answer. */
  add(socket: Socket, connection: ConnectionInfo): void {
    this.#keep(socket, connection);
    if (this.#stopping || this.#stillCovered(connection)) return;
    this.#closeFirst.add(socket);
    this.#count();
  }

  /** Keeps `socket`, a connection of the plain-HTTP port just handed to its server, until it closes: the stop ends it too. */
  addPlain(socket: Socket): void {
    this.#keep(socket, undefined);
  }

  #keep(socket: Socket, connection: ConnectionInfo | undefined): void {
    this.#live.set(socket, connection);
    socket.once('close', () => this.#live.delete(socket));
    if (!this.#stopping) return;
    this.#closeFirst.add(socket);
    // Its first request's answer closes it; none come in time, it is closed as an idle one, as the stop closed those.
    const timer = setTimeout(() => {
      if (this.#closeFirst.has(socket) && this.#live.has(socket)) this.#end(socket, headsArriving());
    }, FIRST_REQUEST_AT_STOP_MS).unref();
    socket.once('close', () => clearTimeout(timer));
  }

  /** After a serving-state change: ends every connection whose certificate no longer covers one of its names; returns how many. */
  retire(): number {
    let retired = 0;
    const arriving = headsArriving();
    for (const [socket, connection] of this.#live) {
      if (connection === undefined || this.#stillCovered(connection)) {
        // A tunnel under way is HTTP no more; one still waiting for the answers before it is kept, for a later change.
        if (tunnelled(socket) && answerInProgress(socket) === undefined) this.#live.delete(socket);
        continue;
      }
      if (this.#end(socket, arriving)) {
        retired++;
        this.#count();
      }
    }
    return retired;
  }

  /** The worker's graceful stop: ends every connection (`retire`'s way), and the ones whose handshake completes later after their first answer. */
  closeAll(): void {
    this.#stopping = true;
    const arriving = headsArriving();
    for (const socket of this.#live.keys()) this.#end(socket, arriving);
  }

  /** Ends `socket` after the answers to what it already forwarded; false for a tunnel under way (left alone). Ended once: a later change finds it gone. */
  #end(socket: Socket, arriving: (socket: Socket) => boolean): boolean {
    this.#live.delete(socket);
    const answer = lastAnswer(socket);
    // A tunnel (an upgrade, a CONNECT): Node's server has handed the socket over, its parser freed. Not HTTP any more,
    // once under way; one still waiting for the answers before it (queued.ts `inAnswerOrder`) is not opened: the
    // connection closes after them, as after any request taken before the change.
    if (tunnelled(socket) && answer === undefined) return false;
    if (answer !== undefined) closeAfter(answer);
    // A request head still arriving: not idle (nor to nginx, nor to Node's closeIdleConnections); closed, its request
    // was dropped unanswered, one the client could not tell unprocessed. Its answer closes it, as a late one's first.
    else if (arriving(socket)) this.#closeFirst.add(socket);
    else closeIdle(socket);
    return true;
  }

  /** `handle` (a server's request listener), except that the first request on a connection `add` found uncovered is the last. */
  closingFirst(handle: ExpectingHandler): ExpectingHandler {
    return (req, res, expectation) => {
      if (this.#closeFirst.has(req.socket)) {
        this.#closeFirst.delete(req.socket);
        closeAfter(res);
      }
      handle(req, res, expectation);
    };
  }

  /**
   * `upgrade` (a server's 'upgrade' and 'connect' listener), told whether the connection is one whose first answer
   * closes it (`closingFirst`: handshake after a change it is not covered by, or during the stop; a request head
   * arriving when it was ended). A 101 cannot say `Connection: close`: the tunnel would outlive the close the change
   * or the stop asked for (during the stop, held the worker to the end of its grace), so upgrade.ts refuses it.
   */
  closingFirstUpgrade<A, B>(upgrade: (req: IncomingMessage, a: A, b: B, closing: boolean) => void): (req: IncomingMessage, a: A, b: B) => void {
    return (req, a, b) => upgrade(req, a, b, this.#closeFirst.delete(req.socket));
  }

  #count(): void {
    this.#metrics.http1ConnectionsClosed.inc({ reason: 'certificate' });
  }
}

/** Whether Node's server handed `socket` over for a tunnel: it frees the connection's parser then (`socket.parser`, Node 20 to 24). */
function tunnelled(socket: Socket): boolean {
  return (socket as Socket & { parser?: unknown }).parser == null;
}

/** No answer in progress: our FIN now; what arrives until the client closes is read and dropped, not processed. */
function closeIdle(socket: Socket): void {
  processNoMore(socket);
  socket.end();
  lingerAfterEnd(socket);
}

/**
 * `answer` is the connection's last (the one to the last request it took;
 * those before it go out first, in order): its head says `Connection: close`
 * (Node writes it, and closes after the answer, when `shouldKeepAlive` is
 * false). A head already written says it too while it waits for the
 * connection (a queued answer's: unsent-head.ts); one already on the wire
 * cannot, and the connection closes after the answer all the same. Nothing
 * parsed after it is processed (linger.ts).
 */
function closeAfter(answer: NodeAnswer): void {
  if (answer.headersSent) {
    answer._last = true;
    sayCloseInUnsentHead(answer);
  } else answer.shouldKeepAlive = false;
  closeAfterAnswer(answer.req, answer);
}
