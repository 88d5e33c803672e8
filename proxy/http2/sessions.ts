/**
 * The HTTP/2 side of a TLS listener: it takes each connection whose ALPN
 * chose `h2` (RFC 9113 §3.2) and serves its streams (stream.ts), on Node's
 * stream API. A plain `http2.createServer` never listens: it is given
 * already-secured sockets, so TLS, SNI, tickets and the keyless handshake
 * stay the listener's.
 *
 * Per connection it keeps:
 * - a reset bound (reset-guard.ts): past it, GOAWAY ENHANCE_YOUR_CALM and
 *   the connection is closed, counted as `reset_flood`;
 * - an idle deadline: `limits.headerTimeoutMs` until the first stream (a
 *   connection that negotiated h2 and says nothing is a slowloris), then
 *   `limits.http2IdleTimeoutMs` with no stream open; then a graceful GOAWAY;
 * - the names of the certificate it was served, for coalesced streams and for
 *   `retire()`: a certificate change that drops one of them sends GOAWAY, so
 *   the browser reconnects and sees the new certificate.
 * Floods of frames are nghttp2's (settings.ts). `close()` sends GOAWAY
 * NO_ERROR to every connection, letting streams in flight finish (§6.8).
 *
 * Cost: one session object and a few closures per connection, one 'close'
 * listener per stream. Single-threaded: one instance per worker.
 */
import http2, { constants, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { ConnectionInfo } from '../tls/connection.js';
import type { HTTP2_CLOSE_REASONS } from '../metrics.js';
import { stalledSend } from '../http/send-stall.js';
import { ResetGuard } from './reset-guard.js';
import { http2ServerOptions } from './settings.js';
import { cutByUs, handleStream, type Http2Connection, type StreamHandlerOptions } from './stream.js';

/** Why a connection was closed by us (the `reason` label of keyedge_proxy_http2_connections_closed_total). */
type Http2CloseReason = (typeof HTTP2_CLOSE_REASONS)[number];

/** What a stream needs of its connection, read once from the socket and what its TLS listener recorded (tls/connection.ts). */
export function http2Connection(socket: TLSSocket, info: ConnectionInfo): Http2Connection {
  return {
    servername: info.serverName,
    certificateNames: info.certificateNames,
    peer: socket.remoteAddress,
    tlsVersion: socket.getProtocol() ?? undefined,
    resumed: socket.isSessionReused(),
  };
}

export interface Http2Options extends StreamHandlerOptions {
  readonly limits: ProxyConfig['limits'];
}

/** After a GOAWAY for abuse, how long the frame has to leave before the socket is destroyed. */
const ABUSE_LINGER_MS = 1000;

interface Live {
  readonly connection: Http2Connection;
  readonly resets: ResetGuard;
  streams: number;
  open: number;
  closing: boolean;
}

export class Http2Sessions {
  readonly #server: http2.Http2Server;
  readonly #options: Http2Options;
  readonly #live = new Map<ServerHttp2Session, Live>();
  #arriving: Http2Connection | undefined;
  /** The session made for the socket being handed over (set by #start). */
  #started: ServerHttp2Session | undefined;

  constructor(options: Http2Options) {
    this.#options = options;
    this.#server = http2.createServer(http2ServerOptions(options.limits));
    this.#server.on('session', (session: ServerHttp2Session) => this.#start(session));
    this.#server.on('stream', (stream: ServerHttp2Stream, headers) => this.#stream(stream, headers));
  }

  /** Connections being served. */
  get size(): number {
    return this.#live.size;
  }

  /** Serves `socket`, whose handshake chose `h2`. */
  handle(socket: TLSSocket, connection: Http2Connection): void {
    this.#arriving = connection;
    try {
      // Node's HTTP/2 server makes the session, synchronously, in its 'connection' listener.
      this.#server.emit('connection', socket);
      const session = this.#started;
      this.#started = undefined;
      // A TCP reset must end the session and every stream on it (their origin requests are aborted then), whatever Node noticed.
      socket.once('close', () => {
        if (session !== undefined && !session.destroyed) session.destroy();
      });
      // The client closed its side: HTTP/2 has no half-closed connection
      // (RFC 9113 §5.1 half-closes streams, not the connection), and a session
      // whose client stopped granting window would otherwise hold its streams
      // (and their origin requests) open until the send-stall timeout; nginx
      // closes on the same EOF.
      socket.once('end', () => {
        if (session !== undefined && !session.destroyed) session.destroy();
      });
    } finally {
      this.#arriving = undefined;
    }
  }

  /** Graceful GOAWAY to every connection `keep` refuses (its certificate no longer covers one of its names); returns how many. */
  retire(keep: (connection: Http2Connection) => boolean): number {
    let retired = 0;
    for (const [session, live] of this.#live) {
      if (live.closing || keep(live.connection)) continue;
      this.#goAway(session, live, 'certificate');
      retired++;
    }
    return retired;
  }

  /** GOAWAY NO_ERROR to every connection: streams in flight finish, no new ones start. */
  close(): void {
    for (const [session, live] of this.#live) if (!live.closing) this.#goAway(session, live, 'shutdown');
  }

  #start(session: ServerHttp2Session): void {
    const connection = this.#arriving;
    if (connection === undefined) return void session.destroy();
    const { limits, metrics } = this.#options;
    const live: Live = { connection, resets: new ResetGuard(limits.http2MaxResetStreams, Date.now()), streams: 0, open: 0, closing: false };
    this.#live.set(session, live);
    this.#started = session;
    // An 'error' nobody hears kills the worker; nghttp2's own GOAWAY (a flood, a bad frame) comes this way.
    session.on('error', () => {
      if (!live.closing) metrics.http2SessionsClosed.inc({ reason: 'protocol_error' });
      live.closing = true;
    });
    session.setTimeout(limits.headerTimeoutMs, () => {
      if (live.open === 0 && !live.closing) this.#goAway(session, live, 'idle');
    });
    session.once('close', () => {
      this.#live.delete(session);
      metrics.http2StreamsPerSession.observe(live.streams);
    });
  }

  #stream(stream: ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const session = stream.session as ServerHttp2Session | undefined;
    const live = session === undefined ? undefined : this.#live.get(session);
    if (session === undefined || live === undefined) return void stream.close(constants.NGHTTP2_REFUSED_STREAM);
    if (live.streams++ === 0) session.setTimeout(this.#options.limits.http2IdleTimeoutMs);
    live.open++;
    stream.once('close', () => {
      live.open--;
      const code = stream.rstCode;
      if (code === undefined || code === constants.NGHTTP2_NO_ERROR || cutByUs(stream) || stalledSend(stream as unknown as ServerResponse)) return;
      if (!live.resets.reset(Date.now()) && !live.closing) this.#abuse(session, live);
    });
    handleStream(this.#options, live.connection, stream, headers);
  }

  /** Rapid Reset or MadeYouReset (reset-guard.ts): GOAWAY ENHANCE_YOUR_CALM, and the connection goes. */
  #abuse(session: ServerHttp2Session, live: Live): void {
    live.closing = true;
    this.#options.metrics.http2SessionsClosed.inc({ reason: 'reset_flood' });
    this.#options.log.warn({ client: live.connection.peer, resets: live.resets.total }, 'HTTP/2 connection reset too many streams: GOAWAY ENHANCE_YOUR_CALM');
    if (!session.destroyed) session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM);
    setTimeout(() => session.destroy(), ABUSE_LINGER_MS).unref();
  }

  #goAway(session: ServerHttp2Session, live: Live, reason: Http2CloseReason): void {
    live.closing = true;
    this.#options.metrics.http2SessionsClosed.inc({ reason });
    // close(): GOAWAY NO_ERROR with the last stream id, then the socket closes once open streams end (RFC 9113 §6.8).
    session.close();
  }
}
