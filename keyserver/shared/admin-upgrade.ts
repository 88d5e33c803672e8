/**
 * An admin HTTP listener's (the key server's, the proxy's) requests with
 * Upgrade: it switches to nothing (RFC 9110 §7.8 lets a server ignore
 * Upgrade), so each is answered by the listener's own request handler as the
 * request it is, with `Connection: close`, and whatever the client sent
 * behind its head is read and dropped. `curl --http2` on an http:// address
 * sends `Upgrade: h2c` with its GET: it gets its answer.
 *
 * Why a listener: without one, Node's server (20 to 24) answers the request
 * too, but drops the rest of the read it came in (its parser stopped there for
 * the switch) and parses on from the next read, keeping the connection. A
 * request pipelined behind it was lost, unanswered, and bytes sent next as the
 * body of a request whose head was dropped were parsed as a request of their
 * own: the connection out of step with its client.
 *
 * One that declares a body (left unread among the dropped bytes) gets 400;
 * one with an Expect other than 100-continue, the 417 Node's server gives any
 * other request with it (it looks at Expect only after an Upgrade is handed over);
 * one pipelined behind an answer still in progress closes the connection
 * (ours would be written into the middle of it; scrapers and curl do not
 * pipeline). Every answer here closes the connection: an end, then a destroy
 * after CLOSE_GRACE_MS for a client that does not close its side.
 */
import type http from 'node:http';
import type net from 'node:net';
import { closingAnswer, declaresBody, unmetExpectation } from './closing-answer.js';

/** How long a connection answered here may stay open for its client to read the answer and close. */
export const CLOSE_GRACE_MS = 5_000;

const BODY_REFUSED = 'an upgrade request cannot have a body\n';

/**
 * Installs the 'upgrade' listener on `server`. `busy(socket)`: whether an earlier request's answer on that connection
 * is still in progress (admin-connections.ts knows).
 */
export function answerUpgradesAsRequests(server: http.Server, busy: (socket: net.Socket) => boolean): void {
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
    // Node removed its own error listener when it handed the socket over; a reset from here on is expected.
    if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
    // What follows the head is read and dropped.
    socket.resume();
    if (busy(socket)) return void socket.destroy();
    if (declaresBody(req)) {
      socket.end(`HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: ${BODY_REFUSED.length}\r\n\r\n${BODY_REFUSED}`);
      return closeAfterGrace(socket);
    }
    // Node's own answer to any other request with such an Expect (it never reaches the handler): 417, no body.
    if (unmetExpectation(req)) {
      return closingAnswer(
        req,
        socket,
        (res) => res.writeHead(417).end(),
        () => closeAfterGrace(socket),
      );
    }
    closingAnswer(
      req,
      socket,
      (res) => server.emit('request', req, res),
      () => closeAfterGrace(socket),
    );
  });
}

/** Destroys `socket` CLOSE_GRACE_MS from now unless it closed by then. */
function closeAfterGrace(socket: net.Socket): void {
  const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
  socket.once('close', () => clearTimeout(timer));
}
