/**
 * An answer made on the socket Node's HTTP/1.1 server hands over with a
 * request it will not parse past (an 'upgrade' listener's): a ServerResponse
 * that closes the connection, filled by the caller's own request handler
 * (the plain-HTTP port's, proxy/http/redirect.ts; both admin ports',
 * admin-upgrade.ts). Once it hands the socket over, Node's server no longer
 * does two things its answers rely on, so this does them:
 * - the socket's 'drain' is passed on to the answer: one that met
 *   backpressure (an origin's answer over the socket's buffer) waited for it
 *   for ever, the connection held open;
 * - 'close' follows 'finish', as for Node's own answers: bookkeeping that
 *   counts an answer done at its 'close' (admin-connections.ts) held the
 *   connection from a newcomer at the cap until its client closed.
 */
import http from 'node:http';
import type net from 'node:net';

/** Whether `req` declares a body: one is unread among the bytes behind its head, which are dropped. */
export function declaresBody(req: http.IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
}

/** Node's test for 100-continue among an Expect's expectations (lib/_http_server.js `continueExpression`). */
const CONTINUE = /(?:^|\W)100-continue(?:$|\W)/i;

/**
 * Whether Node's server would have answered `req` 417 had it not handed it over with Upgrade: an Expect of HTTP/1.1
 * without 100-continue. Node hands an Upgrade over before it looks at Expect (no 'checkExpectation' for it), so a
 * listener that answers it as a request answers this itself (an Upgrade declares no body here: no 100 to wait for).
 */
export function unmetExpectation(req: http.IncomingMessage): boolean {
  const expect = req.headers.expect;
  return expect !== undefined && req.httpVersionMajor === 1 && req.httpVersionMinor === 1 && !CONTINUE.test(expect);
}

/** Has `fill` answer `req` on `socket`, `Connection: close`; `afterEnd` once the answer is out and the socket ended. */
export function closingAnswer(req: http.IncomingMessage, socket: net.Socket, fill: (res: http.ServerResponse) => void, afterEnd: () => void): void {
  const res = new http.ServerResponse(req);
  res.shouldKeepAlive = false;
  res.assignSocket(socket);
  const drain = (): void => void res.emit('drain');
  socket.on('drain', drain);
  res.once('finish', () => {
    socket.off('drain', drain);
    res.detachSocket(socket);
    process.nextTick(() => res.emit('close'));
    socket.end();
    afterEnd();
  });
  fill(res);
}
