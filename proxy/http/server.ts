/**
 * A worker's HTTP/1.1 servers. The one of each TLS listener: a node:http
 * server that never listens; its listener (tls/listener.ts) hands it each
 * connection that negotiated http/1.1 or no ALPN protocol, secured. And the
 * plain-HTTP port's (`startRedirectServer`): redirects to HTTPS and ACME
 * HTTP-01 (redirect.ts).
 *
 * Its limits: over `maxHeaderBytes` Node answers 431 (client-error.ts says
 * it so the answer survives), headers not complete in time 408; Node's
 * whole-request deadline stays a backstop behind the body timeouts
 * (body.ts), which answer first; its checks run every second (Node's 30 s
 * default would let a slow client linger).
 */
import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { listen } from '../../keyserver/shared/listen.js';
import type { SecureConnectionHandler } from '../tls/connection.js';
import { answerClientError } from './client-error.js';
import { type ExpectingHandler, handleExpectations } from './expect.js';
import { notAfterClose } from './linger.js';
import { createConnectRefusal, createRedirectHandler, type RedirectOptions } from './redirect.js';

export interface Http1Server {
  readonly server: http.Server;
  /** The listener's handler for http/1.1 connections. */
  readonly take: SecureConnectionHandler;
}

export function createHttp1Server(
  limits: ProxyConfig['limits'],
  handler: ExpectingHandler,
  upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
): Http1Server {
  // Nothing after a request we answered with `close` is processed (linger.ts).
  const own = notAfterClose(handler);
  const server = http.createServer(
    {
      maxHeaderSize: limits.maxHeaderBytes,
      headersTimeout: limits.headerTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      requestTimeout: limits.headerTimeoutMs + limits.bodyTimeoutMs + 1000,
      connectionsCheckingInterval: 1000,
    },
    own,
  );
  server.on('upgrade', notAfterClose(upgrade));
  // Without a 'connect' listener Node destroys a CONNECT's connection, with no answer, and the answers before it.
  server.on('connect', notAfterClose(upgrade));
  handleExpectations(server, own);
  server.on('clientError', answerClientError);
  // Node starts a server's connection tracking (header and request timeouts, closeIdleConnections) on 'listening'.
  server.emit('listening');
  return { server, take: (socket) => void server.emit('connection', socket) };
}

/** The plain-HTTP port, listening; resolves with its server and bound port. */
export async function startRedirectServer(
  address: { readonly host: string; readonly port: number },
  options: RedirectOptions,
): Promise<{ readonly server: http.Server; readonly port: number }> {
  // Nothing after a request we answered with `close` is processed (linger.ts).
  const handler = notAfterClose(createRedirectHandler(options));
  const server = http.createServer(handler);
  // Without a 'connect' listener Node destroys a CONNECT's connection, with no answer, and the answers before it.
  server.on('connect', notAfterClose(createConnectRefusal(options)));
  handleExpectations(server, handler);
  server.on('clientError', answerClientError);
  await listen(server, { host: address.host, port: address.port, exclusive: false });
  return { server, port: (server.address() as net.AddressInfo).port };
}
