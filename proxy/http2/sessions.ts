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
 *   with streams open and frames queued that never left, the connection is
 *   closed instead (nghttp2 ended it on a connection error);
 * - Node's own destroys of the session from inside its reading of frames (the
 *   client's GOAWAY with an error code, a protocol error), put off until the
 *   read is done, new streams meanwhile refused (deferred-destroy.ts: they
 *   aborted Node 22);
 * - the names of the certificate it was served, for coalesced streams and for
 *   `retire()`: a certificate change that leaves one of them uncovered sends
 *   GOAWAY (a renewal from exact names to a wildcard covering them does not),
 *   so the browser reconnects and sees the new certificate; a connection whose
 *   handshake completes after such a change (its ClientHello picked the old
 *   certificate) is checked as it starts, and gets its GOAWAY then;
 * - its open streams: when the connection ends, however it ends (socket
 *   closed, failed or at EOF, session closed or failed, or its TCP
 *   connection found gone while Node was not reading it: `#checkPeers`; or
 *   nghttp2 done with it after its GOAWAY for a connection error, which Node
 *   20 neither reports nor closes: session-ended.ts, `#checkPeers` too),
 *   each stream's origin request is aborted at once (origin-handler.ts);
 *   and an answer whose end (its last bytes, or its trailers) has waited on
 *   a shut flow-control window for `limits.sendTimeoutMs` is cut
 *   (`#checkEnds`: the send-stall clock only runs while a write is
 *   refused); a stream nghttp2 closed with NO_ERROR that Node 20 would
 *   never destroy (the client's RST_STREAM NO_ERROR over an answer still
 *   queued, a request body left unread) is destroyed a second or two later,
 *   so it is logged and counted and its connection can idle (`#checkClosed`);
 *   a connection closing with no stream
 *   open whose last frames the client never takes is closed after
 *   `limits.sendTimeoutMs`, one Node destroyed after a second (`#checkLastWrite`).
 * Floods of frames are nghttp2's (settings.ts). `close()` sends GOAWAY
 * NO_ERROR to every connection, letting streams in flight finish (§6.8),
 * and to each one whose handshake completes after it, as it starts.
 *
 * Cost: one session object and a few closures per connection; per stream,
 * no listener of its own (the stream's one 'close' listener, stream.ts,
 * calls `#closed`); one getpeername(2) and a look at each open stream a
 * second per connection with streams open, a look at its state otherwise, and one native call a second per connection
 * (session-ended.ts). Access lines and counts share HTTP/1.1's accounting (http/access.ts).
 * Single-threaded: one instance per worker.
 */
import http2, { constants, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { ConnectionInfo } from '../tls/connection.js';
import type { HTTP2_CLOSE_REASONS } from '../metrics.js';
import { AccessAccounts } from '../http/access.js';
import { hstsHeaders } from '../http/handler.js';
import { stalledSend } from '../http/send-stall.js';
import { tcpConnectionGone } from '../tls/node-internals.js';
import { abandonStream, endAwaitsTrailers } from './origin-handler.js';
import { ResetGuard } from './reset-guard.js';
import { deferDestroysFromRead, destroyPending } from './deferred-destroy.js';
import { endedByNghttp2 } from './session-ended.js';
import { disarmClosedSession } from './session-timer.js';
import { http2ServerOptions } from './settings.js';
import { handleStream, type Http2Connection, type StreamContext, type StreamHandlerOptions } from './stream.js';
import { cutByUs, cutStalledEnd, destroyClosed } from './stream-end.js';

/** Why a connection was closed by us (the `reason` label of keyedge_proxy_http2_connections_closed_total). */
type Http2CloseReason = (typeof HTTP2_CLOSE_REASONS)[number];

/** What a stream needs of its connection, read once from the socket and what its TLS listener recorded (tls/connection.ts). */
export function http2Connection(socket: TLSSocket, info: ConnectionInfo): Http2Connection {
  return {
    servername: info.serverName,
    certificateNames: info.certificateNames,
    peer: socket.remoteAddress,
    client: info.client,
    tlsVersion: socket.getProtocol() ?? undefined,
    resumed: socket.isSessionReused(),
  };
}

export interface Http2Options extends StreamHandlerOptions {
  readonly limits: ProxyConfig['limits'];
  /** Whether what serves now still covers every name of the certificate `connection` was served (tls/connection.ts `stillCovers`). */
  readonly stillCovered: (connection: Http2Connection) => boolean;
}

/** How long a last GOAWAY has to leave before the socket is destroyed: after one for abuse, or from a session Node destroyed. */
const GOAWAY_LINGER_MS = 1000;

/**
 * How often connections with streams open are checked for a TCP connection
 * the kernel has already dropped: the longest an origin request outlives a
 * client that vanished while Node was not reading its socket.
 */
const PEER_CHECK_MS = 1000;

interface Live {
  readonly connection: Http2Connection;
  /** What its streams are given (stream.ts), made once per connection. */
  readonly context: StreamContext;
  readonly socket: TLSSocket;
  readonly resets: ResetGuard;
  streams: number;
  /** Streams not yet closed, whose origin requests the connection's end aborts. */
  readonly open: Set<ServerHttp2Stream>;
  closing: boolean;
  /** Cut for resetting too many streams (#abuse): its destroy's last GOAWAY says so too (destroySession). */
  calmed: boolean;
  /** When #checkPeers first found the session closing, no stream open, its socket still open. */
  lastWriteSince: number | undefined;
  /** The idle deadline passed while streams were open: Node's timer is spent until a stream reads or writes again. */
  idleSpent: boolean;
}

/**
 * Destroys a session (one not yet destroyed). Node's destroy sends a last
 * GOAWAY with the code it is given (Http2Session::Close), NO_ERROR by
 * default: after our GOAWAY ENHANCE_YOUR_CALM, that told the client the
 * connection had ended gracefully (RFC 9113 §5.4.1), so a connection cut for
 * abuse is destroyed with its code, however its end comes (our linger, the
 * client's close, nghttp2 done with it: #checkPeers). The 'error' that
 * destroy emits is heard (#start).
 */
function destroySession(session: ServerHttp2Session, live: Live | undefined): void {
  if (live?.calmed === true) session.destroy(new Error('HTTP/2 connection reset too many streams'), constants.NGHTTP2_ENHANCE_YOUR_CALM);
  else session.destroy();
}

export class Http2Sessions {
  readonly #server: http2.Http2Server;
  readonly #options: Http2Options;
  readonly #hstsOf: StreamContext['hstsOf'];
  readonly #accounts: AccessAccounts;
  readonly #live = new Map<ServerHttp2Session, Live>();
  #arriving: { readonly connection: Http2Connection; readonly socket: TLSSocket } | undefined;
  #peerCheck: NodeJS.Timeout | undefined;
  /** The session made for the socket being handed over (set by #start). */
  #started: ServerHttp2Session | undefined;
  /** Set by close(): the worker is shutting down, and every connection, even one still arriving, gets GOAWAY. */
  #shuttingDown = false;
  /** Answers whose end waits on the client's window: since when, with how many bytes pending (#checkEnds). */
  readonly #ends = new WeakMap<ServerHttp2Stream, { readonly at: number; readonly pending: number }>();
  /** Streams found closed but not destroyed by the last check (#checkClosed). */
  readonly #closedSeen = new WeakSet<ServerHttp2Stream>();

  constructor(options: Http2Options) {
    this.#options = options;
    this.#hstsOf = hstsHeaders(options.hstsMaxAgeSeconds);
    this.#accounts = new AccessAccounts(options.log, options.metrics);
    this.#server = http2.createServer(http2ServerOptions(options.limits));
    this.#server.on('session', (session: ServerHttp2Session) => this.#start(session));
    // The fourth argument, the raw [name, value, …] list, is Node's (documented on the session's 'stream'), not in its types.
    this.#server.on('stream', (stream: ServerHttp2Stream, headers, _flags: number, raw?: unknown) =>
      this.#stream(stream, headers, Array.isArray(raw) ? (raw as string[]) : undefined),
    );
  }

  /** Connections being served. */
  get size(): number {
    return this.#live.size;
  }

  /** Serves `socket`, whose handshake chose `h2`. */
  handle(socket: TLSSocket, connection: Http2Connection): void {
    this.#arriving = { connection, socket };
    try {
      // Node's HTTP/2 server makes the session, synchronously, in its 'connection' listener.
      this.#server.emit('connection', socket);
      const session = this.#started;
      this.#started = undefined;
      // A TCP reset must end the session and every stream on it (their origin requests are aborted then), whatever Node noticed.
      socket.once('close', () => this.#ended(session, true));
      socket.on('error', () => this.#ended(session, false));
      // The client closed its side: HTTP/2 has no half-closed connection
      // (RFC 9113 §5.1 half-closes streams, not the connection), and a session
      // whose client stopped granting window would otherwise hold its streams
      // (and their origin requests) open until the send-stall timeout; nginx
      // closes on the same EOF.
      socket.once('end', () => this.#ended(session, true));
    } finally {
      this.#arriving = undefined;
    }
  }

  /**
   * After a serving-state change: graceful GOAWAY to every connection whose
   * certificate no longer covers one of its names; returns how many. One
   * whose handshake was under way (its ClientHello had picked the old
   * certificate) is not here yet: #start checks it as its session starts.
   */
  retire(): number {
    let retired = 0;
    for (const [session, live] of this.#live) {
      if (live.closing || this.#options.stillCovered(live.connection)) continue;
      this.#goAway(session, live, 'certificate');
      retired++;
    }
    return retired;
  }

  /**
   * GOAWAY NO_ERROR to every connection: streams in flight finish, no new ones
   * start. A connection whose handshake completes after this (the listener
   * stops accepting, but lets handshakes under way finish) gets its GOAWAY as
   * its session starts (#start): served as usual, its streams would reach the
   * origins until the grace period cut them, mid-answer.
   */
  close(): void {
    this.#shuttingDown = true;
    for (const [session, live] of this.#live) if (!live.closing) this.#goAway(session, live, 'shutdown');
  }

  /**
   * The connection ended (its socket closed, failed, got the client's EOF or
   * is gone from the kernel; the session closed or failed): every stream's
   * origin request still being read is aborted now, before Node gets round to
   * destroying the streams; `destroy` then ends the session and its streams.
   */
  #ended(session: ServerHttp2Session | undefined, destroy: boolean): void {
    if (session === undefined) return;
    const live = this.#live.get(session);
    if (live !== undefined) for (const stream of live.open) abandonStream(stream);
    if (destroy && !session.destroyed) destroySession(session, live);
  }

  /**
   * Node's HTTP/2 session stops reading its socket while one of its writes is
   * pending (src/node_http2.cc, MaybeStopReading), and a write of an answer
   * that flow control and a full socket hold back stays pending after the
   * client vanished: with TLS output queued, Node reports neither the reset
   * nor the EOF, so no 'close', 'end' or 'error' comes, and the streams (and
   * their origin requests) would live until the send-stall timeout. Seen on
   * Node 20 in test/abuse-http2-aborts.test.ts: sessions whose TCP connection
   * the kernel had dropped (getpeername: ENOTCONN), one write pending. So a
   * connection with streams open is asked, once a second, whether its TCP
   * connection still exists; one that does not is ended as a reset would
   * have ended it. One system call per such connection per second.
   */
  #checkPeers(): void {
    const now = Date.now();
    for (const [session, live] of this.#live) {
      if (!session.destroyed && endedByNghttp2(session)) {
        this.#dropEnded(session, live);
        continue;
      }
      if (live.open.size === 0) {
        if (session.closed || session.destroyed) this.#checkLastWrite(session, live, now);
        continue;
      }
      if (session.destroyed) continue;
      this.#checkEnds(session, live, now);
      if (!tcpConnectionGone(live.socket)) continue;
      this.#ended(session, true);
      live.socket.destroy();
    }
  }

  /** nghttp2 ended the session on a connection error (session-ended.ts): the connection is closed, as RFC 9113 §5.4.1 says. */
  #dropEnded(session: ServerHttp2Session, live: Live): void {
    if (!live.closing) this.#options.metrics.http2SessionsClosed.inc({ reason: 'protocol_error' });
    live.closing = true;
    this.#ended(session, true);
    live.socket.destroy();
  }

  /**
   * A session closing with no stream open (our GOAWAY after its idle
   * deadline or for abuse, the client's, nghttp2's on a connection error)
   * closes its socket, and emits 'close', only once its pending frames are
   * written and its write in flight completes (lib/internal/http2/core.js
   * kMaybeDestroy, src/node_http2.cc Http2Session::Close): a client that
   * never reads (a PING flood whose acknowledgements it leaves unread) held
   * the connection for ever, with no stream or timer left to end it. It is
   * given `limits.sendTimeoutMs`, as an answer the client takes nothing of is.
   * A session Node has destroyed (a connection error, the client's GOAWAY
   * with an error code, its socket's end) is over: Node destroys the socket
   * once that write completes, the write being only its best effort at a
   * last GOAWAY (RFC 9113 §5.4.1). So it gets GOAWAY_LINGER_MS: its write can
   * wait for ever where Node stopped reading the socket (Http2Session::Close)
   * and the TLS layer holds the frames until it reads again; a client that
   * sent frames without the preface and closed held its connection, unseen,
   * for the whole send timeout (Node 20 and 22 alike).
   */
  #checkLastWrite(session: ServerHttp2Session, live: Live, now: number): void {
    live.lastWriteSince ??= now;
    const bound = session.destroyed ? GOAWAY_LINGER_MS : this.#options.limits.sendTimeoutMs;
    if (now - live.lastWriteSince >= bound) live.socket.destroy();
  }

  /**
   * The send-stall clock (send-stall.ts) runs only while a write is refused;
   * an answer small enough to be written whole (or the last part of a large
   * one) ends with its bytes still waiting on the client's window, and a
   * client that never opens it held that stream, and so its connection (whose
   * idle deadline waits for no stream to be open), for ever. So an answer
   * whose end has been waiting with no byte taken (its pending length
   * unchanged) for `limits.sendTimeoutMs` is cut, as the clock would cut it.
   * Node completes a stream's writes in batches, so progress shows a batch
   * at a time (at most the high-water mark and a chunk): the granularity of
   * the clock's 'drain'. An answer with trailers has its writable side
   * finished once its body is written, but its END_STREAM goes out with the
   * trailers, which Node sends only once nghttp2 has read the body's end
   * through flow control (RFC 9113 §6.9): its end waits on the window all the
   * same (nothing pending: Node 20 to 24), and a client that kept its window
   * shut held it for ever, with no write refused, nothing queued on the
   * session and no access line.
   */
  #checkEnds(session: ServerHttp2Session, live: Live, now: number): void {
    for (const stream of live.open) {
      if (stream.closed) {
        if (!stream.destroyed) this.#checkClosed(session, live, stream, now);
        continue;
      }
      // Finished: all written, its END_STREAM gone, unless that waits on trailers a shut window holds back (origin-handler.ts).
      if (!stream.writableEnded || stream.destroyed || (stream.writableFinished && !endAwaitsTrailers(stream))) continue;
      const pending = stream.writableLength;
      const seen = this.#ends.get(stream);
      if (seen === undefined || seen.pending !== pending) this.#ends.set(stream, { at: now, pending });
      else if (now - seen.at >= this.#options.limits.sendTimeoutMs) cutStalledEnd(stream);
    }
  }

  /**
   * A stream nghttp2 closed with NO_ERROR while its request body was not
   * read to its end is destroyed by Node 20 only once that end is read
   * (lib/internal/http2/core.js onStreamClose), and then only if all its
   * writes were called back (kMaybeDestroy); neither may ever come:
   * - the client's RST_STREAM NO_ERROR while our answer was still queued in
   *   nghttp2 (our own answer, handed over in the read that carried the
   *   reset; a forwarded answer held by the client's window): nghttp2 drops
   *   those writes, and Node calls them back only as it destroys the stream;
   * - a body left unread in the stream's buffer, paused (body.ts), after our
   *   RST_STREAM NO_ERROR (stream-end.ts, exchange.ts) or the client's.
   * Such a stream never emitted 'close': no access line, no count, its
   * connection never idle (so never sent its GOAWAY) and one of its
   * concurrent streams taken for the connection's life; at
   * `limits.http2MaxConcurrentStreams` of them Node ended the connection.
   * So a stream found closed and not destroyed on two checks in a row (a
   * second or more) is destroyed: 'close' comes, with its line. A stream
   * closed cleanly is destroyed as its writes are called back, long before.
   * The client's reset under an answer not all written counts against the
   * connection as #closed counts one that emitted 'aborted'.
   */
  #checkClosed(session: ServerHttp2Session, live: Live, stream: ServerHttp2Stream, now: number): void {
    if (!this.#closedSeen.has(stream)) return void this.#closedSeen.add(stream);
    const resetUnderAnswer = !stream.writableFinished && !stream.aborted;
    destroyClosed(stream);
    if (resetUnderAnswer && !live.resets.reset(now) && !live.closing) this.#abuse(session, live);
  }

  #start(session: ServerHttp2Session): void {
    const arriving = this.#arriving;
    if (arriving === undefined) return void session.destroy();
    const { connection, socket } = arriving;
    const { limits, metrics } = this.#options;
    const live: Live = {
      connection,
      context: { hstsOf: this.#hstsOf, accounts: this.#accounts, onClosed: (stream) => this.#closed(session, live, stream), lastRoute: undefined },
      socket,
      resets: new ResetGuard(limits.http2MaxResetStreams, Date.now()),
      streams: 0,
      open: new Set(),
      closing: false,
      calmed: false,
      lastWriteSince: undefined,
      idleSpent: false,
    };
    this.#live.set(session, live);
    // Node's destroys from inside its reading of frames, put off until the read is done (they aborted Node 22).
    deferDestroysFromRead(session);
    this.#peerCheck ??= setInterval(() => this.#checkPeers(), PEER_CHECK_MS).unref();
    this.#started = session;
    // An 'error' nobody hears kills the worker; nghttp2's own GOAWAY (a flood, a bad frame) comes this way.
    session.on('error', () => {
      if (!live.closing) metrics.http2SessionsClosed.inc({ reason: 'protocol_error' });
      live.closing = true;
      this.#ended(session, false);
    });
    // Node's session timer: no byte read or written for the timeout (a write still moving refreshes it). It fires
    // again after each later quiet spell; a callback given to setTimeout is a once('timeout') listener, so one that
    // fired while a stream waited on a slow origin left every later idle deadline unheard: a listener of our own.
    session.setTimeout(limits.headerTimeoutMs);
    session.on('timeout', () => {
      if (live.closing) return;
      if (live.open.size === 0) return this.#goAway(session, live, 'idle');
      // Streams open, frames waiting to go out, and nothing moved all this time: nghttp2 ended the session (it sent
      // GOAWAY on a connection error, RFC 9113 §5.4.1) and Node stopped reading, so the client's close goes unseen and
      // its streams would never close. A stream merely waiting on a slow origin has nothing queued.
      if (session.state.outboundQueueSize !== undefined && session.state.outboundQueueSize > 0) {
        this.#ended(session, true);
        live.socket.destroy();
      } else live.idleSpent = true;
    });
    session.once('close', () => {
      // Node leaves the idle timer armed on a closed session, holding it (and its socket) until it fires.
      disarmClosedSession(session);
      this.#ended(session, false);
      this.#live.delete(session);
      if (this.#live.size === 0) {
        clearInterval(this.#peerCheck);
        this.#peerCheck = undefined;
      }
      metrics.http2StreamsPerSession.observe(live.streams);
    });
    // GOAWAY with last stream 0 (RFC 9113 §6.8): the client retries its requests on a connection elsewhere.
    if (this.#shuttingDown) this.#goAway(session, live, 'shutdown');
    // Its ClientHello picked a certificate a reload has since dropped a name from (the reload's retire() ran before this
    // session existed): GOAWAY now, so the client reconnects and sees what serves now. Once per connection.
    else if (!this.#options.stillCovered(connection)) this.#goAway(session, live, 'certificate');
  }

  #stream(stream: ServerHttp2Stream, headers: http2.IncomingHttpHeaders, rawHeaders: readonly string[] | undefined): void {
    const session = stream.session as ServerHttp2Session | undefined;
    const live = session === undefined ? undefined : this.#live.get(session);
    // A session Node is destroying (deferred-destroy.ts): nothing new starts.
    if (session === undefined || live === undefined || destroyPending(session)) {
      // A stream closed with an error code emits 'error' (Node's ERR_HTTP2_STREAM_ERROR): unheard, it would end the worker.
      stream.on('error', () => undefined);
      return void stream.close(constants.NGHTTP2_REFUSED_STREAM);
    }
    if (live.streams++ === 0) session.setTimeout(this.#options.limits.http2IdleTimeoutMs);
    live.open.add(stream);
    // handleStream calls #closed from its one 'close' listener (or at once, for a stream already closed).
    handleStream(this.#options, live.context, live.connection, stream, headers, rawHeaders);
  }

  /** A stream of `session` closed: it leaves the open set, and a reset not of our making counts against the connection. */
  #closed(session: ServerHttp2Session, live: Live, stream: ServerHttp2Stream): void {
    live.open.delete(stream);
    // The last stream ended without a read or write (the client reset it before any answer) after the idle deadline
    // passed: Node's spent timer is re-armed only by one, and frames on the connection (PING, RST_STREAM) do not, so the
    // connection would have no idle deadline left. A fresh one, from now.
    if (live.idleSpent && live.open.size === 0 && !live.closing && !session.destroyed) {
      live.idleSpent = false;
      session.setTimeout(this.#options.limits.http2IdleTimeoutMs);
    }
    const code = stream.rstCode;
    if (code === undefined || cutByUs(stream) || stalledSend(stream as unknown as ServerResponse)) return;
    // NO_ERROR is a normal end, or our RST_STREAM after a whole answer (RFC 9113 §8.1). A client's RST_STREAM NO_ERROR
    // while the answer was still open ('aborted') is Rapid Reset all the same: HEADERS + RST_STREAM(NO_ERROR) pairs were
    // never counted, only nghttp2's looser bound (1,000 at once) stopped them. Streams ended by the connection's end are not.
    if (code === constants.NGHTTP2_NO_ERROR && (!stream.aborted || session.destroyed)) return;
    if (!live.resets.reset(Date.now()) && !live.closing) this.#abuse(session, live);
  }

  /** Rapid Reset or MadeYouReset (reset-guard.ts): GOAWAY ENHANCE_YOUR_CALM, and the connection goes. */
  #abuse(session: ServerHttp2Session, live: Live): void {
    live.closing = true;
    live.calmed = true;
    this.#options.metrics.http2SessionsClosed.inc({ reason: 'reset_flood' });
    this.#options.log.warn({ client: live.connection.peer, resets: live.resets.total }, 'HTTP/2 connection reset too many streams: GOAWAY ENHANCE_YOUR_CALM');
    if (!session.destroyed) session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM);
    setTimeout(() => destroySession(session, live), GOAWAY_LINGER_MS).unref();
  }

  #goAway(session: ServerHttp2Session, live: Live, reason: Http2CloseReason): void {
    live.closing = true;
    this.#options.metrics.http2SessionsClosed.inc({ reason });
    // close(): GOAWAY NO_ERROR with the last stream id, then the socket closes once open streams end (RFC 9113 §6.8).
    session.close();
  }
}
