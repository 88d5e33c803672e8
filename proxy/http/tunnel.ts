/**
 * An open tunnel (upgrade-switch.ts, after the origin's 101): the client's socket and
 * the origin's relayed both ways, bytes untouched, until either side ends or
 * fails, which closes the other (neither allows half-open connections, as
 * nginx). Two bounds keep a tunnel from holding its client connection, its
 * origin connection and its place at the origin (origin-gate.ts) for ever:
 * - idle: a tunnel that carried no byte either way for
 *   `limits.tunnelIdleTimeoutMs` is closed, both sockets destroyed (a
 *   WebSocket Close frame is the application's business). A byte carried is
 *   one read from either side, or one delivered to either side: a write the
 *   kernel took, which it does as that peer reads (its ACKs free the send
 *   buffer). So an origin pushing to a silent client, a client sending to a
 *   silent origin, and a client slowly reading a long message while the
 *   origin waits (nothing is read from it meanwhile: the relay holds it) are
 *   all live; a side that stops reading stops the bytes, as nothing more is
 *   delivered to it nor read from the other side: that is idle. HAProxy's
 *   `timeout tunnel` counts activity on either side so; nginx arms
 *   `proxy_read_timeout` only while it waits to read the origin, and while a
 *   write to the client is pending `send_timeout`, reset on each write's
 *   progress. The origin socket's own timer alone would not do: it sees no
 *   delivery to the client, and a client on a poor link reading a large
 *   message would be cut although bytes reached it every second.
 *   Delivery is seen when a write completes, and a TLS socket's write
 *   completes when the kernel took all of it: so each direction writes at
 *   most PIECE_BYTES at a time, the next once the last completed (not
 *   pipe(), which writes each chunk read whole, up to 64 KiB, and batches
 *   what waits into one write), and progress shows every 16 KiB whatever
 *   the chunks the other side sent. Finer than the kernel tells, nothing
 *   sees: Linux wakes a writer once a third of its send buffer is free, and
 *   that buffer autotunes with the congestion window (from some 90 KiB on a
 *   1500-byte MTU; MiBs on loopback), so a peer reading less than a third of
 *   it within the bound looks idle, to nginx and HAProxy too. One
 *   timer per tunnel reads the time of the last byte carried, which each
 *   chunk read and each write completed sets.
 * - keepalive: once idle for TUNNEL_KEEPALIVE_MS, both connections are probed
 *   with TCP keepalive (RFC 9293 §3.8.4), so a peer that vanished without a
 *   FIN or a reset (a client whose network went away, a NAT that forgot the
 *   mapping) is found even when the idle bound is off (null) or longer: with
 *   nothing sent, TCP would never find it gone (Linux defaults, on Node 20's
 *   libuv: 9 probes 75 s apart; libuv 1.49 and later, Node 22 on: 10 probes
 *   1 s apart), and its close closes the other side.
 * A side whose peer closed is closed at once when the peer failed or was cut
 * (a reset, the idle bound, the stop). When the peer ended cleanly, this
 * side is first handed what the peer sent before its end: the peer's
 * connection closes as soon as its end is read (neither allows half-open),
 * which may be while the relay still writes the last bytes read to a side
 * that takes them slowly, and cutting this side then lost them (on a loaded
 * machine, a client taking a WebSocket's last 8 MiB missed its last 5 KiB).
 * Meanwhile what this side sends is read and dropped (its peer is gone, and
 * a client blocked on its own writes would take nothing), and the idle bound
 * still holds; with none (null), a side that takes nothing of those bytes
 * for `limits.sendTimeoutMs` is cut, as a client taking nothing of an answer
 * is. Once the relay ended it after that last byte, this side lingers
 * (linger.ts `lingerAfterEnd`, RFC 9112 §9.6, as nginx's lingering close):
 * what it still sends is read and dropped until it ends too or LINGER_MS
 * pass. Destroyed at once, a side that was still sending (a client
 * pinging, an origin pushing) had bytes unread, and a close with bytes
 * unread is a reset, which threw away what the kernel still held for that
 * side: the peer's last message (megabytes to a client still taking it),
 * cut short.
 * No access line and no metric of its own: the tunnel's access line and its
 * count (status class 1xx) were written at the 101; an idle close is a debug
 * line.
 */
import type net from 'node:net';
import type tls from 'node:tls';
import type { Logger } from '../../keyserver/shared/log.js';
import { lingerAfterEnd } from './linger.js';

/** Idle time after which an open tunnel's connections are probed with TCP keepalive (above). */
const TUNNEL_KEEPALIVE_MS = 60_000;
/** The most handed to a socket per write (above): one TLS record's plaintext (RFC 8446 §5.1). */
const PIECE_BYTES = 16_384;

export interface TunnelEnds {
  readonly client: tls.TLSSocket;
  readonly upstream: net.Socket;
  /** `limits.tunnelIdleTimeoutMs`: null, never. */
  readonly idleMs: number | null;
  /** `limits.sendTimeoutMs`: with no idle bound, the bound of a side handed its closed peer's last bytes (above). */
  readonly sendTimeoutMs: number;
  readonly log: Logger;
  /** For the idle line: the tunnel's domain and origin. */
  readonly domain: string | undefined;
  readonly origin: string | undefined;
}

/**
 * Relays `client` and `upstream` both ways until either closes (above), which closes the other (the caller leaves
 * that to it); the origin's timeouts of the handshake must be off.
 */
export function openTunnel({ client, upstream, idleMs, sendTimeoutMs, log, domain, origin }: TunnelEnds): void {
  client.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
  upstream.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
  let carried = performance.now();
  const touch = (): void => {
    carried = performance.now();
  };
  const fromClient = relay(client, upstream, touch);
  const toClient = relay(upstream, client, touch);
  let timer: NodeJS.Timeout | undefined;
  const unbound = (): void => clearTimeout(timer);
  /** Closes both sides once nothing was carried for `ms`. */
  const bound = (ms: number, why: string): void => {
    const check = (): void => {
      const idle = performance.now() - carried;
      if (idle < ms) {
        timer = setTimeout(check, ms - idle).unref();
        return;
      }
      log.debug({ domain, origin, boundMs: ms }, why);
      upstream.destroy();
      client.destroy();
    };
    timer = setTimeout(check, ms).unref();
  };
  const handover: Handover = {
    begin: () => {
      if (idleMs !== null) return;
      touch();
      bound(sendTimeoutMs, "tunnel side took nothing of its peer's last bytes, closed");
    },
    done: unbound,
  };
  // A peer that failed (a reset, an error) has this side cut at once, even one the relay had ended after a half-close.
  upstream.once('close', (hadError) => (hadError ? client.destroy() : closeAfterPeer(client, toClient, fromClient, handover)));
  client.once('close', (hadError) => (hadError ? upstream.destroy() : closeAfterPeer(upstream, fromClient, toClient, handover)));
  // Both closed: no bound left to keep (a side still handed its peer's last bytes keeps it until then).
  let open = 2;
  const closed = (): void => void (--open === 0 && unbound());
  client.once('close', closed);
  upstream.once('close', closed);
  if (idleMs !== null) bound(idleMs, 'tunnel idle, closed');
}

/** A side handed its closed peer's last bytes (closeAfterPeer): bounded from `begin`, no longer once `done`. */
interface Handover {
  begin(): void;
  done(): void;
}

/**
 * `socket`, whose peer in the tunnel closed without an error: cut at once unless the peer ended (`into`, the relay to
 * `socket`, read its end); then handed the rest of what the peer sent (`handover`), what it sends read and dropped
 * (`out`), and once `into` ended it after the last byte, it lingers until it ends or LINGER_MS pass (above).
 */
function closeAfterPeer(socket: net.Socket, into: Relay, out: Relay, handover: Handover): void {
  if (socket.destroyed) return;
  if (!into.peerEnded()) return void socket.destroy();
  out.drop();
  handover.begin();
  into.afterEnd(() => {
    handover.done();
    lingerAfterEnd(socket);
  });
}

/** One direction of the tunnel (relay). */
interface Relay {
  /** Whether `from` ended cleanly (its end read). */
  peerEnded(): boolean;
  /** Calls `then` once `to` is ended after `from`'s last byte: at once if it is; never if `to` closes first. */
  afterEnd(then: () => void): void;
  /** Reads `from` and drops what it sends from now on (`to` is gone). */
  drop(): void;
}

/**
 * Writes what `from` sends to `to`, at most PIECE_BYTES per write and one
 * write at a time, `from` paused meanwhile (its backpressure); ends `to` after
 * the last. `touch` on each chunk read and each write completed.
 */
function relay(from: net.Socket, to: net.Socket, touch: () => void): Relay {
  /** What `from` sent that is not handed to `to` yet. */
  let rest: Buffer | undefined;
  let writing = false;
  let ended = false;
  let dropping = false;
  let afterEnd: (() => void) | undefined;
  const next = (): void => {
    // Ended or gone (its close closes the tunnel): nothing more is written, as pipe() stops at the destination's end.
    if (!to.writable) return;
    if (rest === undefined) {
      if (!ended) return void from.resume();
      to.end();
      afterEnd?.();
      return;
    }
    let piece = rest;
    if (rest.length > PIECE_BYTES) {
      piece = rest.subarray(0, PIECE_BYTES);
      rest = rest.subarray(PIECE_BYTES);
    } else rest = undefined;
    writing = true;
    to.write(piece, written);
  };
  const written = (err?: Error | null): void => {
    writing = false;
    if (err) return;
    touch();
    next();
  };
  from.on('data', (chunk: Buffer) => {
    if (dropping) return;
    touch();
    // One chunk at a time: `from` is paused until the last is written (a chunk Node had already read joins it).
    from.pause();
    rest = rest === undefined ? chunk : Buffer.concat([rest, chunk]);
    if (!writing) next();
  });
  from.once('end', () => {
    ended = true;
    if (!writing) next();
  });
  // The client was paused until the switch (upgrade.ts): a 'data' listener alone does not resume it.
  from.resume();
  return {
    peerEnded: () => ended,
    afterEnd: (then) => {
      if (to.writableEnded) then();
      else afterEnd = then;
    },
    drop: () => {
      dropping = true;
      rest = undefined;
      from.resume();
    },
  };
}
