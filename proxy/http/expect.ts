/**
 * The Expect request header (RFC 9110 §10.1.1) at the edge. A client that
 * sends `Expect: 100-continue` waits for 100 (Continue) before its body.
 * Node's server would send that 100 itself, before we know whether the
 * request goes anywhere; with a 'checkContinue' listener it leaves it to us.
 * So keyedge answers a request it refuses (421, 404, 413, …) without 100 and
 * without reading the body (Node then closes the connection: the body the
 * client may still send is not parsed as a next request), and sends 100 for
 * a forwarded request only when the origin connection takes the body, i.e.
 * when undici starts reading it. The expectation is met here, so the header
 * itself is not sent on (undici refuses it anyway). Any other expectation
 * is answered 417 (Node's 'checkExpectation').
 *
 * A client may send its body without waiting (RFC 9110 §10.1.1), and a
 * server may then omit the 100; Node's server does not know it was
 * received, and closes the connection after an answer that went without
 * one, while the request pipelined behind has been handed over already: it
 * reached its origin and its answer was never sent. So once the whole body
 * is read, the 100 goes too, if it has not (the origin connection may read
 * an empty body's end without asking for data, and none reads it when the
 * origin cannot be reached).
 *
 * A request whose framing says it has no content (no Transfer-Encoding,
 * Content-Length absent or 0) has no body to wait for: its 100 goes at once,
 * as Node's own server sends it, and the request is handled as any other.
 * Left unmet, Node closes the connection after the answer (the client might
 * still send a body), and a request pipelined behind it has reached its
 * origin by then, its answer never sent.
 *
 * A request with Upgrade is handed over before Node's server looks at its
 * Expect (no 'checkExpectation' for it): `upgradeExpectation` says what Node
 * would have found, for a listener that answers it as a request.
 */
import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { unmetExpectation } from '../../keyserver/shared/closing-answer.js';
import { bodyUnread } from './linger.js';

/** Which expectation the server found: `continue` (100 not sent yet) or one keyedge cannot meet. */
export type Expectation = 'continue' | 'unsupported';

export type ExpectingHandler = (req: IncomingMessage, res: ServerResponse, expectation?: Expectation) => void;

/** Sends `server`'s requests that carry an expectation to `handler`, saying which. */
export function handleExpectations(server: http.Server, handler: ExpectingHandler): void {
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if (bodyUnread(req)) {
      // The whole body read: nothing is awaited any more (above).
      req.once('end', () => sendContinue(res));
      return handler(req, res, 'continue');
    }
    // Nothing to wait for (above): met now, so the connection is kept like any other's.
    res.writeContinue();
    handler(req, res);
  });
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => handler(req, res, 'unsupported'));
}

/**
 * The expectation Node's server would have told of for a request it handed
 * over with Upgrade: `unsupported` for an Expect of HTTP/1.1 without
 * 100-continue (answered 417, as 'checkExpectation' is); none otherwise (an
 * Upgrade declares no body here, so there is no 100 to wait for). The test is
 * the admin ports' too (keyserver/shared/closing-answer.ts).
 */
export function upgradeExpectation(req: IncomingMessage): Expectation | undefined {
  return unmetExpectation(req) ? 'unsupported' : undefined;
}

/**
 * `body` as given to undici, sending the client its 100 (Continue) when
 * undici starts reading it: the request has an origin connection, so the
 * body has somewhere to go. A stream's 'resume' is that moment (undici
 * attaches its 'data' listener once the request is written).
 */
export function continueOnRead(body: Readable, res: ServerResponse): Readable {
  body.once('resume', () => sendContinue(res));
  return body;
}

/** Answers given their 100 (Continue) by sendContinue: Node writes another for each call. */
const continued = new WeakSet<ServerResponse>();

/** The 100 (Continue) of `res`, once, while its final answer has not started. */
function sendContinue(res: ServerResponse): void {
  if (res.headersSent || res.destroyed || continued.has(res)) return;
  continued.add(res);
  res.writeContinue();
}
