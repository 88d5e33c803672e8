/**
 * Protocol upgrades (WebSocket, RFC 6455 §4) through the proxy: the HTTPS
 * server's 'upgrade' event hands us the client's request, its raw socket and
 * the bytes read past the request head. We route it like any request (421/404
 * as handler.ts) and send it to the chosen origin with node:http's client, so
 * Node's parser reads the origin's answer, with the same forwarding headers
 * and Host rule as forward.ts.
 *
 * Nothing the client sends after the request head reaches the origin before
 * the origin has switched protocols. Until then those bytes are HTTP that was
 * never routed, checked (421), rewritten or logged: a pipelined request behind
 * the Upgrade, with another Host and forged X-Forwarded-For, must not get past
 * all of that (request smuggling). So the client socket stays paused and
 * `head` is held:
 * - on 101 Switching Protocols the held bytes go to the origin, in order, and
 *   the two sockets are piped both ways, bytes untouched, until either side
 *   ends or fails, which closes the other, or until neither carried a byte for
 *   `limits.tunnelIdleTimeoutMs` (tunnel.ts);
 * - any other answer (but one with transfer codings besides chunked: 502, as
 *   for requests) is relayed as an ordinary response with
 *   `connection: close`, the held bytes are dropped and both connections
 *   close: the origin's at once after its answer (it never returns to a
 *   pool), the client's once the answer is sent (after a lingering close that
 *   begins once all of it is with the kernel, not when the origin's end was
 *   read), or when the client takes nothing of it for `sendTimeoutMs` (as
 *   send-stall.ts does for requests, and until the kernel has it all);
 *   an origin that sends nothing of its body for `originReadTimeoutMs`
 *   (while the client reads) has the answer cut, as for requests.
 * Each origin connection an upgrade opens takes a place at the origin's gate
 * (origin-gate.ts) first, as a request does, and holds it until that
 * connection closes, the tunnel's whole life included: tunnels count against
 * `limits.originMaxConnections` with the requests (nginx's `max_conns` counts
 * an upgraded connection as active). A tunnel is held as long as its client
 * likes, so its place is one of the long-held ones, which streamed uploads
 * share: at most half the origin's places, the other half always serving
 * requests (a client opening WebSockets by the dozen would otherwise leave an
 * origin's requests queued, then refused). With none free, the upgrade waits in the
 * origin's queue like a request (`originMaxQueue`, `originQueueTimeoutMs`),
 * holding nothing of the origin; past either bound it gets the requests' 503
 * `KEYEDGE_HTTP_ORIGIN_BUSY` with Retry-After, or goes to the domain's next
 * origin if it has one. A client that leaves while it waits gives its place
 * in the queue up at once (499).
 * A CONNECT comes here too (Node hands it over the same way) and gets 400.
 * An Upgrade pipelined behind requests whose answers are still being sent
 * is handled once they are sent (RFC 9112 §9.3.2), so nothing of it overtakes them.
 * An Upgrade on a connection whose first answer closes it (one that came
 * during the graceful stop or after a certificate change that does not cover
 * it, or whose request head was arriving when either began: retire.ts) gets
 * 503 `KEYEDGE_HTTP_UPGRADE_CLOSING` and no tunnel: a 101 cannot say
 * `Connection: close`, and the tunnel would outlive the close (held the
 * stopping worker to the end of its grace). A tunnel open, or whose 101 is on
 * its way, when the stop begins is kept until the grace ends, then cut with
 * every connection left (shutdown.ts), as nginx keeps upgraded connections
 * until `worker_shutdown_timeout`.
 * An Upgrade request with a body (Content-Length over 0, any
 * Transfer-Encoding) is refused with 400: Node's server does not read it (it
 * arrives among the held bytes), and WebSocket handshakes (GET) have none.
 * An Upgrade request with an Expect other than 100-continue gets 417, as a
 * request does (Node hands it over before its 'checkExpectation': expect.ts).
 *
 * Upgrade and Connection are hop-by-hop (RFC 9110 §7.6.1, §7.8): the client's
 * are dropped with the other hop-by-hop headers and the proxy asks the origin
 * for WebSocket itself, and for nothing else; the 101 the client gets says the
 * switch itself, with the origin's end-to-end fields only, as every answer.
 * Any other protocol (h2c above all: "h2c smuggling", where an origin that
 * switches to HTTP/2 takes every later request on the connection straight
 * from the client, past routing and
 * the forwarding headers) is ignored, as RFC 9110 §7.8 lets a server do: the
 * request goes to the origin as an ordinary one and its answer is relayed as
 * below; so is an Upgrade in an HTTP/1.0 request, which RFC 9110 §7.8 has a
 * server ignore. A 101 that names anything but WebSocket is the origin's failure (502),
 * never a tunnel. A failed connect is retried once on the next
 * origin (nothing of the request has left the proxy before the connection is
 * up); otherwise the client gets our 502/504. The 101 and relayed answers
 * carry our HSTS like every HTTPS answer, in place of any the origin sent.
 * A client gone before the answer is logged and counted as 499 (nginx's
 * "client closed request") with KEYEDGE_HTTP_CLIENT_CLOSED, as a request is
 * (access.ts). The origin's answer (its 101, or a refusal relayed whole) is
 * observed in the origin duration histogram by status class, as a request's.
 *
 * This file is the handler: the checks, routing and the origin's gate. Its
 * parts: the attempt on an origin (upgrade-attempt.ts, upgrade-origin.ts),
 * the switch (upgrade-switch.ts, then tunnel.ts), a relayed answer
 * (upgrade-relay.ts), our refusals (upgrade-refusals.ts) as written on the
 * raw socket (raw-answer.ts), the close after them (upgrade-close.ts), the
 * access line (upgrade-access.ts), and what they share (upgrade-exchange.ts).
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type tls from 'node:tls';
import { upgradeExpectation } from './expect.js';
import { EXPECTATION_FAILED, hostName, hstsValue, originRefusal, type Refusal, routeRequest, servedNames } from './handler.js';
import type { OriginTarget } from './origins.js';
import { inAnswerOrder } from './queued.js';
import { refusalText } from './raw-answer.js';
import { fieldLinesRefusal } from './request-framing.js';
import { normaliseTarget } from './target.js';
import { CLIENT_CLOSED, CLIENT_GONE, upgradeAccess } from './upgrade-access.js';
import { LONG_HELD, sendUpgrade } from './upgrade-attempt.js';
import { closeAfter } from './upgrade-close.js';
import type { UpgradeExchange, UpgradeOptions } from './upgrade-exchange.js';
import { namesWebSocket } from './upgrade-origin.js';
import { connectionOf } from '../tls/connection.js';
import { BODY_REFUSED, BUSY_REFUSED, CLOSING_REFUSED, CONNECT_REFUSED } from './upgrade-refusals.js';

export type { UpgradeOptions } from './upgrade-exchange.js';

/** The server's 'upgrade' (and 'connect') listener; `closing`: the connection's first answer closes it (retire.ts). */
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer, closing: boolean) => void;

export function createUpgradeHandler(options: UpgradeOptions): UpgradeHandler {
  const { pools, log, metrics } = options;
  const handle = (req: IncomingMessage, socket: Duplex, head: Buffer, closing: boolean): void => {
    const client = socket as tls.TLSSocket;
    // Held until the origin has switched protocols (above). The error
    // listener stays until the socket is gone: no phase may throw.
    client.pause();
    client.on('error', () => client.destroy());
    const started = process.hrtime.bigint();
    // Before routing, as for requests: an absolute-form target's authority is the Host routed on. An Expect other than
    // 100-continue gets its 417, as a request's does: Node hands an Upgrade over before it looks at Expect (expect.ts).
    const own = normaliseTarget(req) ?? fieldLinesRefusal(req) ?? (upgradeExpectation(req) === 'unsupported' ? EXPECTATION_FAILED : undefined);
    const host = hostName(req.headers.host);
    const route = routeRequest(options, host, servedNames(client));
    const domain = route.domain;
    const hsts = hstsValue(options.hstsMaxAgeSeconds, domain);
    const access = upgradeAccess(req, client, domain?.name, started, log, metrics);
    const refuse = (refusal: Refusal): void => {
      access.settle(refusal.status, refusal.code);
      closeAfter(client, pools.sendTimeoutMs, refusalText(refusal, hsts));
    };
    /** Once routed and sent on (below): what the client's close ends and settles. */
    let exchange: UpgradeExchange | undefined;
    client.once('close', () => {
      // Before any attempt: its leaving before any answer.
      if (exchange === undefined) return access.settle(CLIENT_GONE, CLIENT_CLOSED);
      exchange.dropOrigin?.();
      exchange.gone();
    });
    // Gone while earlier answers on its connection were sent (above).
    if (client.destroyed) return access.settle(CLIENT_GONE, CLIENT_CLOSED);
    // Node hands a CONNECT over as it does an upgrade ('connect', server.ts); its target is never forwarded.
    if (req.method === 'CONNECT') return refuse(CONNECT_REFUSED);
    // The stop, or a certificate change, closes this connection after its first answer (retire.ts): a tunnel would
    // outlive that close (during the stop, hold the worker to the end of its grace). Nothing reaches an origin.
    if (closing) return refuse(CLOSING_REFUSED);
    if (own !== undefined) return refuse(own);
    if ('refusal' in route) return refuse(route.refusal);
    if (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0) return refuse(BODY_REFUSED);

    // RFC 9110 §7.8: a server MUST ignore Upgrade in an HTTP/1.0 request (node's parser does not): no switch is asked for.
    const websocket = req.httpVersion !== '1.0' && namesWebSocket(req.headers.upgrade);
    let targets: readonly OriginTarget[];
    try {
      targets = pools.targets(route.domain);
    } catch (err) {
      // A domain whose origin CA cannot be read (only when it was never retained).
      log.warn({ code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE', domain: route.domain.name, err }, 'origin upgrade failed');
      return refuse(originRefusal('broken'));
    }
    const sent: UpgradeExchange = {
      options,
      req,
      client,
      countedAs: connectionOf(client)?.client,
      head,
      domain: route.domain.name,
      hsts,
      websocket,
      access,
      refuse,
      dropOrigin: undefined,
      gone: () => access.settle(CLIENT_GONE, CLIENT_CLOSED),
    };
    exchange = sent;
    /** A place at the origin's gate (above), then the attempt on its origin; a busy first origin's upgrade goes on to the next. */
    const attempt = (index: number): void => {
      const target = targets[index];
      if (target === undefined) return refuse(originRefusal('connect'));
      access.origin = target.url.origin;
      const gate = pools.gate(target);
      const retry = index === 0 && targets.length > 1 ? () => attempt(1) : undefined;
      const abandon = new EventEmitter();
      const entered = gate.enter(LONG_HELD, abandon, sent.countedAs);
      if (entered === true) return sendUpgrade(sent, target, gate, retry);
      // The client's close (above) gives up the place in the queue.
      sent.dropOrigin = () => abandon.emit('abort');
      entered.then(
        () => {
          // Gone as its place came: the place goes back at once.
          if (client.destroyed) return gate.leave(LONG_HELD, sent.countedAs);
          sendUpgrade(sent, target, gate, retry);
        },
        (err: Error) => {
          // A client that left is settled as 499 by its close.
          if ((err as { code?: string }).code !== BUSY_REFUSED.code) return;
          // Nothing was sent: the next origin may take it, as a request (origin-exchange.ts).
          if (retry !== undefined) return retry();
          refuse(BUSY_REFUSED);
        },
      );
    };
    attempt(0);
  };
  // An Upgrade pipelined behind requests whose answers are not all sent yet waits for them (queued.ts). Node hands the
  // upgrade over at once; handled now, its 101 (or refusal) would overtake those answers, which would then be written
  // into the switched connection (or be cut by a refusal).
  return (req, socket, head, closing) => inAnswerOrder(socket, () => handle(req, socket, head, closing));
}
