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
 */
import { EventEmitter } from 'node:events';
import http, { type IncomingMessage } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from '../../keyserver/shared/log.js';
import { type ProxyMetrics, statusClass } from '../metrics.js';
import type { NameIndex } from '../tls/names.js';
import { upgradeExpectation } from './expect.js';
import { answerHeaderList, refuseTransferCodings } from './forward-headers.js';
import { refuseInvalidStatus } from './origin-status.js';
import { type OriginFailure, originFailure, originRequestHeaders } from './forward.js';
import { type Domain, EXPECTATION_FAILED, hostName, hstsValue, originRefusal, ownFailureRefusal, type Refusal, routeRequest, servedNames } from './handler.js';
import type { OriginGate } from './origin-gate.js';
import type { OriginPools, OriginTarget } from './origins.js';
import { inAnswerOrder } from './queued.js';
import { fieldLinesRefusal } from './request-framing.js';
import { normaliseTarget } from './target.js';
import { openTunnel } from './tunnel.js';
import type { TrustedPeers } from './trusted-peers.js';

/**
 * How long a client connection we close may still send before it is cut
 * (nginx's lingering_timeout): closing with its bytes unread would reset the
 * connection, and the reset can destroy our last answer before it is read.
 */
const LINGER_MS = 5_000;
/** nginx's "client closed request": the client left before the origin answered. */
const CLIENT_GONE = 499;
/** Its code, as for every request whose client left before any answer (access.ts, README's metrics). */
const CLIENT_CLOSED = 'KEYEDGE_HTTP_CLIENT_CLOSED';

/** Our answers to upgrades: the request's (handler.ts) and one of upgrades only. */
export const BODY_REFUSED: Refusal = { status: 400, code: 'KEYEDGE_HTTP_UPGRADE_BODY', body: 'an upgrade request cannot have a body\n' };
/**
 * An Upgrade on a connection the stop or a certificate change closes after its first answer (retire.ts): 503, the
 * connection closed after it; a new connection (another worker, or the certificate that serves now) can open it.
 */
const CLOSING_REFUSED: Refusal = {
  status: 503,
  code: 'KEYEDGE_HTTP_UPGRADE_CLOSING',
  body: 'this connection is closing (the proxy is stopping or its certificate changed): open the WebSocket on a new connection\n',
};
/** CONNECT (RFC 9110 §9.3.6) asks for a tunnel, which keyedge does not offer; as on HTTP/2 (http2/stream.ts) and port 80 (redirect.ts), 400. */
export const CONNECT_REFUSED: Refusal = { status: 400, code: 'KEYEDGE_HTTP_BAD_TARGET', body: 'bad request target: CONNECT is not served\n' };
/** The origin's places and queue are full, or the wait was too long: a request's answer (handler.ts), Retry-After included. */
const BUSY_REFUSED: Refusal = ownFailureRefusal('KEYEDGE_HTTP_ORIGIN_BUSY', 0)!;
/**
 * The origin's HSTS never reaches the client: ours (tls.hstsMaxAgeSeconds, the domain's `hsts`) replaces it, as on
 * every answer to a request. Kept, an origin's max-age=0 made the browser forget the host's HSTS (RFC 6797 §6.1.1),
 * and its includeSubDomains, which the operator did not set, held every subdomain to HTTPS.
 */
const HSTS = 'strict-transport-security';
const WITH_HSTS: ReadonlySet<string> = new Set([HSTS]);
/** A tunnel's place at the gate is a long-held one (origin-gate.ts: at most half the places, with streamed uploads). */
const LONG_HELD = true;

export interface UpgradeOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  readonly hstsMaxAgeSeconds: number;
  readonly trustedPeers?: TrustedPeers;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
  /** `limits.tunnelIdleTimeoutMs` (tunnel.ts): null, no idle bound. Required: a caller that forgot it got none. */
  readonly tunnelIdleTimeoutMs: number | null;
}

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
    // Read now, as a request's line reads them (access.ts): after the connection closes, node's TLS accessors may touch freed state.
    const tlsVersion = client.getProtocol?.() ?? undefined;
    const resumed = client.isSessionReused?.() ?? undefined;
    let origin: string | undefined;
    let settled = false;
    /** The request's one access line and count; `end` says how a relayed answer ended (its bytes, whether it was cut). */
    const settle = (status: number, code: Refusal['code'] | undefined, end?: { bytes: number; aborted: boolean }): void => {
      if (settled) return;
      settled = true;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.requests.inc({ status_class: statusClass(status), code: code ?? 'none', protocol: 'http/1.1' });
      // The origin's time to answer, as a request's (access.ts): only when the origin answered whole (no code of ours),
      // to its 101 (the tunnel's life is not the origin's answer) or to the end of a relayed refusal. By status class
      // only: a bounded label set whatever the origin sends.
      if (code === undefined) metrics.originDuration.labels(statusClass(status)).observe(seconds);
      log.info(
        {
          access: true,
          // The fields of a request's line (access.ts), protocol among them: dashboards split by it.
          protocol: 'http/1.1',
          upgrade: String(req.headers.upgrade ?? '').slice(0, 32),
          domain: domain?.name,
          method: req.method,
          path: (req.url ?? '/').split('?')[0],
          status,
          bytes: end?.bytes,
          durationMs: Math.round(seconds * 1e4) / 10,
          origin,
          code,
          tls: tlsVersion,
          resumed,
          ...(status === CLIENT_GONE || end?.aborted === true ? { aborted: true } : {}),
        },
        'request',
      );
    };
    /**
     * Ends the client connection after `last`, then reads and drops what the client still sends for LINGER_MS, from
     * the moment all the answer is handed to the kernel ('finish'), as nginx lingers once its answer is sent: begun
     * at `end()`, it destroyed what the kernel had no room for yet (its buffers to a slow client full) under a client
     * still reading, which got the answer cut, and without a length could not tell. Until then, a client that took
     * nothing of it (`writableLength` did not go down) for a whole `sendTimeoutMs` is cut, `stalled` told first, as
     * the relay's stall clock does: one that stopped reading holds the connection no longer than during the relay.
     */
    const finish = (last = '', stalled?: () => void): void => {
      if (!client.writable) return void client.destroy();
      client.end(last, 'latin1');
      client.resume();
      let timer: NodeJS.Timeout | undefined;
      const linger = (): void => {
        clearTimeout(timer);
        timer = setTimeout(() => client.destroy(), LINGER_MS);
      };
      let left = client.writableLength;
      const check = (): void => {
        // All of the answer is in the kernel, only TLS's close_notify (and the FIN) may wait for room: it is sent.
        if (client.writableLength === 0) {
          client.off('finish', linger);
          return linger();
        }
        if (client.writableLength >= left) {
          stalled?.();
          return void client.destroy();
        }
        left = client.writableLength;
        timer = setTimeout(check, pools.sendTimeoutMs);
      };
      timer = setTimeout(check, pools.sendTimeoutMs);
      client.once('finish', linger);
      client.once('close', () => {
        clearTimeout(timer);
        client.off('finish', linger);
      });
    };
    const refuse = (refusal: Refusal): void => {
      settle(refusal.status, refusal.code);
      finish(refusalText(refusal, hsts));
    };
    /** Ends the origin side of the attempt under way, if any. */
    let dropOrigin: (() => void) | undefined;
    /** What the client's close settles: its leaving before any answer, unless an answer being relayed says otherwise. */
    let gone = (): void => settle(CLIENT_GONE, CLIENT_CLOSED);
    client.once('close', () => {
      dropOrigin?.();
      gone();
    });
    // Gone while earlier answers on its connection were sent (above).
    if (client.destroyed) return settle(CLIENT_GONE, CLIENT_CLOSED);
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
    /** A place at the origin's gate (above), then the attempt on its origin; a busy first origin's upgrade goes on to the next. */
    const attempt = (index: number): void => {
      const target = targets[index];
      if (target === undefined) return refuse(originRefusal('connect'));
      origin = target.url.origin;
      const gate = pools.gate(target);
      const abandon = new EventEmitter();
      const entered = gate.enter(LONG_HELD, abandon);
      if (entered === true) return send(index, gate);
      // The client's close (above) gives up the place in the queue.
      dropOrigin = () => abandon.emit('abort');
      entered.then(
        () => {
          // Gone as its place came: the place goes back at once.
          if (client.destroyed) return gate.leave(LONG_HELD);
          send(index, gate);
        },
        (err: Error) => {
          // A client that left is settled as 499 by its close.
          if ((err as { code?: string }).code !== BUSY_REFUSED.code) return;
          // Nothing was sent: the next origin may take it, as a request (origin-exchange.ts).
          if (index === 0 && targets.length > 1) return attempt(1);
          refuse(BUSY_REFUSED);
        },
      );
    };
    /** The attempt on `targets[index]`, holding a place at its `gate` until its origin connection closes. */
    const send = (index: number, gate: OriginGate): void => {
      const target = targets[index]!;
      let upstream: net.Socket;
      try {
        upstream = connect(target, pools.timeouts.connectMs);
      } catch (err) {
        // Options node refuses before any connection exists (none expected: CA files are checked when read).
        gate.leave(LONG_HELD);
        log.warn({ code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE', domain: route.domain.name, origin, err }, 'origin upgrade failed');
        return refuse(originRefusal('broken'));
      }
      // Exactly once, on every path: a socket closes once, whether it failed, was cut, ended or its tunnel closed.
      upstream.once('close', () => gate.leave(LONG_HELD));
      let connected = false;
      let answered = false;
      let done = false;
      /** Why an ordinary answer being relayed was cut, for its access line. */
      let cut: 'KEYEDGE_HTTP_SEND_TIMEOUT' | 'KEYEDGE_HTTP_ORIGIN_ABORTED' | undefined;
      const fail = (failure: OriginFailure, err: Error): void => {
        if (done) return;
        done = true;
        upstream.destroy();
        // Mid-answer, the client can only be told by a cut connection.
        if (answered) {
          cut ??= 'KEYEDGE_HTTP_ORIGIN_ABORTED';
          return void client.destroy();
        }
        if (failure !== 'not-origin') pools.failed(target);
        // Nothing reached the origin before its connection was up, so any upgrade may go to the next one.
        if (index === 0 && targets.length > 1 && (failure === 'connect' || failure === 'certificate')) return attempt(1);
        const refusal = originRefusal(failure);
        log.warn({ code: refusal.code, domain: route.domain.name, origin, err }, 'origin upgrade failed');
        refuse(refusal);
      };
      // The client is still there (its leaving ends the attempt first): any failure is the origin's. But an answer node's
      // parser refuses (HPE_*) is one the origin gave: 502, not cooled down, as for requests (origin-failure.ts). Cooled
      // down, a client kept an origin out of rotation with Upgrades to a path it answers so.
      const onError = (err: Error): void => {
        // Node's parse error carries the origin's bytes as `rawPacket` (its answer's content, cookies), which the failure's
        // log line would print; its message says what broke (as origin-exchange.ts does for undici's).
        delete (err as { rawPacket?: unknown }).rawPacket;
        const parserRefused = String((err as { code?: unknown }).code ?? '').startsWith('HPE_');
        const failure = originFailure(err);
        fail(failure === 'not-origin' && !parserRefused ? 'broken' : failure, err);
      };
      dropOrigin = () => {
        done = true;
        upstream.destroy();
      };
      // node:http's client drops its error listener at the switch: this one stays.
      upstream.on('error', onError);
      const onTimeout = (): void => fail(connected ? 'timeout' : 'connect', new Error(connected ? 'origin answer timed out' : 'origin connect timed out'));
      upstream.once('timeout', onTimeout);
      /**
       * From the connection on, the wait is for the answer, due responseMs after the request whatever comes before it,
       * as for requests (README, "Interim answers"; origin-interim.ts): not the socket's idle timer, which each interim
       * 1xx, or each byte of a head trickled, restarted, so that an origin sending one now and then held the client and
       * the upgrade's place at the origin for as long as it liked.
       */
      let answerDue: NodeJS.Timeout | undefined;
      upstream.once(target.tls === undefined ? 'connect' : 'secureConnect', () => {
        connected = true;
        upstream.setTimeout(0);
        answerDue = setTimeout(onTimeout, pools.timeouts.responseMs);
      });
      upstream.once('close', () => clearTimeout(answerDue));
      let request: http.ClientRequest;
      try {
        request = http.request({
          method: req.method,
          path: req.url ?? '/',
          headers: upgradeHeaders(req, websocket, target, client.remoteAddress, options.trustedPeers),
          // Host is the one of the forwarding rule; without one, none (node would invent its own).
          setHost: false,
          createConnection: () => upstream,
        });
      } catch (err) {
        // A request node's client refuses to send as given (it validates path and headers).
        return fail('not-origin', err as Error);
      }
      request.on('error', onError);
      request.on('upgrade', (res: IncomingMessage, _socket: Duplex, originHead: Buffer) => {
        clearTimeout(answerDue);
        // Only the switch the proxy asked for is relayed (above); RFC 6455 §4.1: the client would fail it too.
        if (!websocket || !namesWebSocket(res.headers.upgrade)) {
          return fail('broken', new Error('origin switched to a protocol the proxy did not ask for'));
        }
        answered = true;
        // The handshake's timeouts end here; the tunnel's idle bound is its own (tunnel.ts).
        upstream.off('timeout', onTimeout);
        pools.succeeded(target);
        settle(res.statusCode ?? 101, undefined);
        // The switch is ours to say to the client (§7.8), to the protocol checked above; then the origin's fields.
        const headers: [string, string][] = [['upgrade', 'websocket'], ['connection', 'Upgrade'], ...relayedFields(res, hsts)];
        client.write(responseHead(101, res.statusMessage, headers), 'latin1');
        if (originHead.length > 0) client.write(originHead);
        // Switched: what the client sent after its request belongs to the new protocol now.
        if (head.length > 0) upstream.write(head);
        // Either side's end or close closes the other, the tunnel's way (tunnel.ts): a side the relay ended after the
        // other's last byte lingers, so that what is still on its way to it is not thrown away by a reset. An origin
        // failure now closes its connection alone, and the tunnel the client's.
        dropOrigin = undefined;
        upstream.off('error', onError);
        upstream.on('error', () => upstream.destroy());
        openTunnel({ client, upstream, idleMs: options.tunnelIdleTimeoutMs, log, domain: domain?.name, origin });
      });
      request.on('response', (res: IncomingMessage) => {
        clearTimeout(answerDue);
        // A 101 without Upgrade and Connection (RFC 9110 §15.2.2) switches to nothing we could relay.
        if ((res.statusCode ?? 0) < 200) return fail('broken', new Error('origin answered 101 without switching protocols'));
        // Codings besides chunked would reach the client as if they were the content (forward-headers.ts), and a status
        // over 599 is invalid (origin-status.ts); the origin answered, so it is not cooled down, as for requests.
        try {
          refuseInvalidStatus(res.statusCode ?? 0);
          refuseTransferCodings(res.rawHeaders);
        } catch (err) {
          return fail('not-origin', err as Error);
        }
        answered = true;
        // Between two reads of its body, the origin has originReadTimeoutMs, as an answer to a request has (its body
        // may end with the connection only): a stalled one held the client and the origin connection for ever.
        upstream.setTimeout(pools.readMs);
        pools.succeeded(target);
        const status = res.statusCode ?? 502;
        // Logged at the relay's end, as an answer to a request is (access.ts): with its bytes, and, when it was cut, why
        // (the client stopped reading, the origin cut it, or the client left), not as a whole answer at its head.
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
        });
        client.once('finish', () => settle(status, undefined, { bytes, aborted: false }));
        gone = () => settle(status, cut ?? CLIENT_CLOSED, { bytes, aborted: true });
        // Not switched: the held bytes are dropped, so the connection cannot go on (its framing is lost).
        const headers = [...relayedFields(res, hsts), ['connection', 'close'] as [string, string]];
        client.write(responseHead(status, res.statusMessage, headers), 'latin1');
        res.on('error', () => undefined);
        // A client that takes nothing of the answer for sendTimeoutMs is cut, its origin connection with it (the
        // client's close drops it), as an answer to a request is (send-stall.ts): nothing else times out here.
        let stall: NodeJS.Timeout | undefined;
        const flowing = (): void => {
          clearTimeout(stall);
          stall = undefined;
          if (!done) upstream.setTimeout(pools.readMs);
        };
        res.on('pause', () => {
          // The client's close unpipes the answer, which pauses it, after the close's own clearing (`flowing`): armed
          // then, the clock held the answer and both connections for sendTimeoutMs after the connection was gone.
          if (client.destroyed) return;
          stall ??= setTimeout(() => {
            cut = 'KEYEDGE_HTTP_SEND_TIMEOUT';
            client.destroy();
          }, pools.sendTimeoutMs);
          // Not the origin's stall while the client is the one not reading (sendTimeoutMs is), as for requests.
          upstream.setTimeout(0);
        });
        client.on('drain', flowing);
        client.once('close', flowing);
        res.pipe(client, { end: false });
        res.once('close', () => {
          // Never back to a pool: the origin connection closes with its answer.
          done = true;
          upstream.destroy();
          // An answer cut short is passed on cut, never completed as if whole.
          if (res.complete) {
            // From here on `finish` watches the client's progress. The relay's clock, armed by the 'pause' that comes
            // with the answer's end, would never be stopped (no 'drain' comes once the socket is ended): it cut a
            // client still taking the answer's last bytes sendTimeoutMs after the end.
            clearTimeout(stall);
            return finish('', () => {
              cut = 'KEYEDGE_HTTP_SEND_TIMEOUT';
            });
          }
          cut ??= 'KEYEDGE_HTTP_ORIGIN_ABORTED';
          client.destroy();
        });
      });
      request.end();
    };
    attempt(0);
  };
  // An Upgrade pipelined behind requests whose answers are not all sent yet waits for them (queued.ts). Node hands the
  // upgrade over at once; handled now, its 101 (or refusal) would overtake those answers, which would then be written
  // into the switched connection (or be cut by a refusal).
  return (req, socket, head, closing) => inAnswerOrder(socket, () => handle(req, socket, head, closing));
}

function connect(target: OriginTarget, timeoutMs: number): net.Socket {
  const hostname = target.url.hostname.startsWith('[') ? target.url.hostname.slice(1, -1) : target.url.hostname;
  const port = Number(target.url.port || (target.tls === undefined ? 80 : 443));
  const socket =
    target.tls === undefined
      ? net.connect({ host: hostname, port })
      : tls.connect({ host: hostname, port, ca: target.tls.ca, servername: target.tls.servername, rejectUnauthorized: true, ALPNProtocols: ['http/1.1'] });
  // Until connected, the connect timeout; then it is switched off, and the answer has its own deadline (answerDue).
  socket.setTimeout(timeoutMs);
  socket.setNoDelay(true);
  return socket;
}

/** Whether an Upgrade field lists WebSocket (RFC 9110 §7.8: a list of protocol[/version], names case-insensitive). */
function namesWebSocket(upgrade: string | undefined): boolean {
  if (upgrade === undefined) return false;
  for (const protocol of upgrade.split(',')) if (protocol.trim().toLowerCase() === 'websocket') return true;
  return false;
}

/** The origin request's headers: asking for WebSocket alone, or, when the client asked for anything else, for no switch. */
function upgradeHeaders(
  req: IncomingMessage,
  websocket: boolean,
  target: OriginTarget,
  peer: string | undefined,
  trusted: TrustedPeers | undefined,
): Record<string, string | string[]> {
  const headers = originRequestHeaders(req.headers, peer, 'https', target, trusted);
  if (websocket) {
    headers.connection = 'upgrade';
    headers.upgrade = 'websocket';
  } else headers.connection = 'close';
  return headers;
}

/**
 * The fields of the origin's answer the client gets, a 101's or a relayed refusal's: its end-to-end ones, line by line
 * as it sent them, as on every answer (forward-headers.ts answerHeaderList): its hop-by-hop ones and those its
 * Connection names are for this hop (RFC 9110 §7.6.1), and the operator's HSTS replaces its own. From the raw head, not
 * node's parsed view, which keeps one line of a field such as Server repeated and lower-cases every name.
 */
function relayedFields(res: IncomingMessage, hsts: string): [string, string][] {
  const fields = answerHeaderList(res.rawHeaders, { list: [HSTS, hsts], names: WITH_HSTS });
  const pairs: [string, string][] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) pairs.push([fields[i]!, fields[i + 1]!]);
  return pairs;
}

/** An answer's head as we write it on the client's raw socket; header values come from node's parser (no CR/LF). */
function responseHead(status: number, reason: string | undefined, headers: readonly (readonly [string, string])[]): string {
  let text = `HTTP/1.1 ${status} ${reason || (http.STATUS_CODES[status] ?? '')}\r\n`;
  for (const [name, value] of headers) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

/** Our refusal as written on a raw socket, closing it; with HSTS over TLS (none on the plain-HTTP port: RFC 6797 §7.2). */
export function refusalText({ status, code, body, headers: own }: Refusal, hsts: string | undefined): string {
  const headers: [string, string][] = [
    ...(hsts === undefined ? [] : [['strict-transport-security', hsts] as [string, string]]),
    // Retry-After of a busy origin's 503; the connection closes whatever the refusal says.
    ...Object.entries(own ?? {}).filter(([name]) => name !== 'connection'),
    ['content-type', 'text/plain; charset=utf-8'],
    ['content-length', String(Buffer.byteLength(body))],
    ['x-keyedge-error', code],
    ['connection', 'close'],
  ];
  return responseHead(status, undefined, headers) + body;
}
