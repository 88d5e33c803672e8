/**
 * An open tunnel (upgrade.ts, after the origin's 101): the client's socket and
 * the origin's piped both ways, bytes untouched, until either side ends or
 * fails, which closes the other (neither allows half-open connections, as
 * nginx). Two bounds keep a tunnel from holding its client connection, its
 * origin connection and its place at the origin (origin-gate.ts) for ever:
 * - idle: a tunnel that carried no byte either way for
 *   `limits.tunnelIdleTimeoutMs` is closed, both sockets destroyed (a
 *   WebSocket Close frame is the application's business). HAProxy's `timeout
 *   tunnel`; nginx closes one after `proxy_read_timeout` with nothing read
 *   from the origin (or `proxy_send_timeout` with nothing written to it).
 *   Either direction keeps it open: an origin pushing to a silent client, or
 *   a client sending to a silent origin, is a live tunnel. One timer does it:
 *   the origin socket's own (socket.setTimeout), which Node refreshes on each
 *   read from it (origin to client) and each write to it (client to origin),
 *   so every byte either way passes through it. A side that stops reading
 *   stops the bytes (the pipe waits for 'drain'): that is idle too.
 * - keepalive: once idle for TUNNEL_KEEPALIVE_MS, both connections are probed
 *   with TCP keepalive (RFC 9293 §3.8.4), so a peer that vanished without a
 *   FIN or a reset (a client whose network went away, a NAT that forgot the
 *   mapping) is found even when the idle bound is off (null) or longer: with
 *   nothing sent, TCP would never find it gone (Linux defaults, on Node 20's
 *   libuv: 9 probes 75 s apart; libuv 1.49 and later, Node 22 on: 10 probes
 *   1 s apart), and its close closes the other side.
 * No access line and no metric of its own: the tunnel's access line and its
 * count (status class 1xx) were written at the 101; an idle close is a debug
 * line.
 */
import type net from 'node:net';
import type tls from 'node:tls';
import type { Logger } from '../../keyserver/shared/log.js';

/** Idle time after which an open tunnel's connections are probed with TCP keepalive (above). */
const TUNNEL_KEEPALIVE_MS = 60_000;

export interface TunnelEnds {
  readonly client: tls.TLSSocket;
  readonly upstream: net.Socket;
  /** `limits.tunnelIdleTimeoutMs`: null, never. */
  readonly idleMs: number | null;
  readonly log: Logger;
  /** For the idle line: the tunnel's domain and origin. */
  readonly domain: string | undefined;
  readonly origin: string | undefined;
}

/** Pipes `client` and `upstream` both ways until either closes (above); the origin's timeouts of the handshake must be off. */
export function openTunnel({ client, upstream, idleMs, log, domain, origin }: TunnelEnds): void {
  client.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
  upstream.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
  if (idleMs !== null) {
    upstream.setTimeout(idleMs);
    upstream.once('timeout', () => {
      log.debug({ domain, origin, idleMs }, 'tunnel idle, closed');
      upstream.destroy();
      client.destroy();
    });
  }
  upstream.pipe(client);
  client.pipe(upstream);
  upstream.once('close', () => client.destroy());
}
