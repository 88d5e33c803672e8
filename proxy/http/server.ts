/**
 * A worker's HTTP/1.1 servers. The one of each TLS listener: a node:http
 * server that never listens; its listener (tls/listener.ts) hands it each
 * connection that negotiated http/1.1 or no ALPN protocol, secured. And the
 * plain-HTTP port's (`startRedirectServer`): redirects to HTTPS and ACME
 * HTTP-01 (redirect.ts). The TLS listeners' connections are kept in the
 * worker's Http1Connections (retire.ts), which ends those a certificate
 * change no longer covers; the plain-HTTP port's are kept there too, for the
 * graceful stop, which ends them all alike.
 *
 * Both run under the same limits. The plain-HTTP port also applies the
 * worker's connection caps at accept, as its TLS listeners do
 * (tls/connection-limits.ts): a port that took connections the caps do not
 * count would let a flood there hold the sockets (and file descriptors)
 * the caps exist to bound; without our header deadline a client that sends
 * nothing, or a byte now and then, would hold one for Node's 60 to 90 s.
 *
 * Its limits: over `maxHeaderBytes` Node answers 431 (client-error.ts says
 * it so the answer survives), headers not complete in time 408; Node's
 * whole-request deadline stays a backstop behind the body timeouts
 * (body.ts), which answer first; its checks run every second (Node's 30 s
 * default would let a slow client linger).
 */
import http from 'node:http';
import net from 'node:net';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { listen } from '../../keyserver/shared/listen.js';
import type { ProxyMetrics } from '../metrics.js';
import { refusalOf, type WorkerConnectionCaps } from '../tls/connection-limits.js';
import type { SecureConnectionHandler } from '../tls/connection.js';
import { answerClientError } from './client-error.js';
import { type ExpectingHandler, handleExpectations } from './expect.js';
import type { UpgradeHandler } from './upgrade.js';
import { notAfterClose } from './linger.js';
import { MAX_FIELD_LINES } from './request-framing.js';
import type { Http1Connections } from './retire.js';
import { answerUpgradeAsRequest, createConnectRefusal, createRedirectHandler, type RedirectOptions } from './redirect.js';

export interface Http1Server {
  readonly server: http.Server;
  /** The listener's handler for http/1.1 connections. */
  readonly take: SecureConnectionHandler;
}

export function createHttp1Server(
  limits: ProxyConfig['limits'],
  handler: ExpectingHandler,
  upgrade: UpgradeHandler,
  connections: Http1Connections,
): Http1Server {
  // Nothing after a request we answered with `close` is processed (linger.ts); the first request on a connection a
  // certificate change left uncovered is answered with `close` (retire.ts).
  const own = notAfterClose(connections.closingFirst(handler));
  // An HTTP/1.1 request without Host is refused by the handler (target.ts), not by Node: Node's own 400 says close
  // but its parser reads on, and a request pipelined behind it reached the origin, its answer never sent.
  const server = http.createServer({ ...serverOptions(limits), requireHostHeader: false }, own);
  capFieldLines(server);
  // A connection whose first answer closes it (retire.ts) opens no tunnel: its Upgrade is refused (upgrade.ts).
  const tunnel = notAfterClose(connections.closingFirstUpgrade(upgrade));
  server.on('upgrade', tunnel);
  // Without a 'connect' listener Node destroys a CONNECT's connection, with no answer, and the answers before it.
  server.on('connect', tunnel);
  handleExpectations(server, own);
  server.on('clientError', answerClientError);
  // Node starts a server's connection tracking (header and request timeouts, closeIdleConnections) on 'listening'.
  server.emit('listening');
  return {
    server,
    take: (socket, connection) => {
      // Kept first: a connection a change has left uncovered is marked before its first request can be parsed.
      connections.add(socket, connection);
      server.emit('connection', socket);
    },
  };
}

/** Node's limits and deadlines from ours; Node checks them every second (its 30 s default would let a slow client linger). */
function serverOptions(limits: ProxyConfig['limits']): http.ServerOptions {
  return {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headerTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    requestTimeout: limits.headerTimeoutMs + limits.bodyTimeoutMs + 1000,
    connectionsCheckingInterval: 1000,
  };
}

/**
 * Node's own bound on a request's field lines (`maxHeadersCount`, 2,000) drops the lines past it without a word,
 * while its parser still frames the body by a Content-Length or Transfer-Encoding among them: 2,001 lines of `a:`
 * (8 KB, half the default `maxHeaderBytes`) then a Content-Length, and the POST reached the origin with
 * `content-length: 0`, its body dumped, and the access line said nothing went wrong. Now Node keeps up to
 * MAX_FIELD_LINES, and a request that reaches them is refused 431 (request-framing.ts): under the default byte bound,
 * every line a request can have is kept and forwarded, as nginx does.
 */
function capFieldLines(server: http.Server): void {
  server.maxHeadersCount = MAX_FIELD_LINES;
}

/** The plain-HTTP port as the worker's stop sees it (shutdown.ts `Drainable`). */
export interface RedirectPort {
  readonly server: http.Server;
  readonly port: number;
  /** Stops accepting; open connections go on, under Node's deadlines still (its `close()` would stop their checks). */
  stopAccepting(): void;
  /** Open client connections. */
  readonly connections: number;
  destroyConnections(): void;
}

/**
 * The plain-HTTP port, listening, under `limits` and the worker's `caps`; each connection admitted is kept in
 * `connections` (the stop ends it as the TLS listeners' are, the first answer to one that comes during the stop
 * closes it); resolves with its server and bound port.
 */
export async function startRedirectServer(
  address: { readonly host: string; readonly port: number },
  options: RedirectOptions,
  limits: ProxyConfig['limits'],
  caps: WorkerConnectionCaps,
  connections: Http1Connections,
): Promise<RedirectPort> {
  // Nothing after a request we answered with `close` is processed (linger.ts).
  const redirect = connections.closingFirst(createRedirectHandler(options));
  const handler = notAfterClose(redirect);
  // An HTTP/1.1 request without Host is refused by the handler, as on HTTPS (above): Node's own 400 went unlogged and its
  // parser read on, and an ACME challenge request pipelined behind it reached the origin, its answer never sent.
  const server = http.createServer({ ...serverOptions(limits), requireHostHeader: false }, handler);
  capFieldLines(server);
  // Without a 'connect' listener Node destroys a CONNECT's connection, with no answer, and the answers before it.
  server.on('connect', notAfterClose(createConnectRefusal(options)));
  // Without an 'upgrade' listener Node drops what came behind an Upgrade's head in its read, and parses on (redirect.ts).
  server.on('upgrade', notAfterClose(answerUpgradeAsRequest(options, redirect)));
  handleExpectations(server, handler);
  server.on('clientError', answerClientError);
  const open = new Set<net.Socket>();
  capConnections(server, caps, options.metrics, (socket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    connections.addPlain(socket);
  });
  await listen(server, { host: address.host, port: address.port, exclusive: false });
  return {
    server,
    port: (server.address() as net.AddressInfo).port,
    // net.Server's own close: http.Server's also destroys idle connections at once (the stop ends them gracefully,
    // retire.ts) and ends the header and request deadline checks of the rest.
    stopAccepting: () => void net.Server.prototype.close.call(server),
    get connections() {
      return open.size;
    },
    destroyConnections: () => {
      for (const socket of open) socket.destroy();
    },
  };
}

/**
 * Closes a connection over the worker's caps at accept, counted as the TLS
 * listeners count theirs, before the server's own 'connection' listeners
 * (Node's, which set up an HTTP parser) run: they run for admitted ones only.
 */
function capConnections(server: http.Server, caps: WorkerConnectionCaps, metrics: ProxyMetrics, admitted: (socket: net.Socket) => void): void {
  const serve = server.listeners('connection') as ((socket: net.Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: net.Socket) => {
    const refusal = refusalOf(caps, socket);
    if (refusal === undefined) {
      // Counted with the TLS listeners' (listener.ts): the gauge is every client connection the worker holds.
      metrics.openConnections.inc();
      socket.once('close', () => metrics.openConnections.dec());
      // Kept before Node's parser is set up: one that comes during the stop is marked before its first request is parsed.
      admitted(socket);
      for (const listener of serve) listener.call(server, socket);
    } else {
      metrics.rejectedConnections.inc({ reason: refusal });
      socket.destroy();
    }
  });
}
