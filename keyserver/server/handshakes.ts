/**
 * Mutual-TLS handshakes in progress, at most `cap` at once: a TCP connection
 * arriving with `cap` handshakes pending closes the oldest of them.
 *
 * Why: a handshake has no client identity yet, so admission (admission.ts)
 * cannot see it, and anyone who can reach the TCP port can start one. With
 * only the listener's ceiling on sockets, 2 × maxConnections TCP connections
 * that never send a ClientHello (reopened every `tlsHandshakeTimeoutMs`) made
 * the listener drop every newcomer, the proxy's bridge included: no client
 * could connect over mutual TLS for as long as the sockets were held. As for
 * stalled connections (admission.ts, after nginx), the newcomer is let in and
 * the longest-waiting handshake makes room: a real client finishes its
 * handshake in milliseconds (one round trip, TLS 1.3, RFC 8446 §2), so only a
 * flood of `cap` new connections within that time could push it out.
 *
 * A handshake is keyed by its peer's address and port, which name one TCP
 * connection and are readable both on the raw socket Node accepts
 * ('connection') and on the TLS socket it becomes ('secureConnection'). An
 * evicted socket is destroyed with an error that `isEvictedHandshake` tells
 * apart, since Node reports it again as a `tlsClientError` of that socket.
 */
import type net from 'node:net';
import { KeyedgeError } from '../shared/errors.js';

const EVICTED = Symbol('evicted handshake');

/** The error an evicted handshake's socket is destroyed with. */
function evictedError(): Error {
  return Object.assign(new KeyedgeError('KEYEDGE_ERR_CLOSED', 'TLS handshake closed to make room for a newer one'), { [EVICTED]: true });
}

/** Whether `err` is the one an eviction destroyed the socket with (counted there, not as a client failure). */
export function isEvictedHandshake(err: unknown): boolean {
  return typeof err === 'object' && err !== null && EVICTED in err;
}

function peerKey(socket: net.Socket): string | undefined {
  const { remoteAddress, remotePort } = socket;
  return remoteAddress === undefined || remotePort === undefined ? undefined : `${remoteAddress} ${remotePort}`;
}

export class PendingHandshakes {
  readonly #cap: number;
  readonly #onEvict: () => void;
  /** Insertion order is arrival order: the first entry is the oldest handshake. */
  readonly #pending = new Map<string, net.Socket>();

  constructor(cap: number, onEvict: () => void) {
    this.#cap = cap;
    this.#onEvict = onEvict;
  }

  get size(): number {
    return this.#pending.size;
  }

  /** A TCP connection was accepted and its handshake begins; at the cap, the oldest pending one is closed. */
  started(raw: net.Socket): void {
    const key = peerKey(raw);
    // Already gone (reset before we saw it): nothing to wait for.
    if (key === undefined) return;
    if (this.#pending.size >= this.#cap) {
      for (const [oldestKey, oldest] of this.#pending) {
        this.#pending.delete(oldestKey);
        oldest.destroy(evictedError());
        this.#onEvict();
        break;
      }
    }
    this.#pending.set(key, raw);
    // The raw socket closes with its connection: the handshake failed, timed out, or the connection ended later.
    raw.once('close', () => {
      if (this.#pending.get(key) === raw) this.#pending.delete(key);
    });
  }

  /** The handshake of this connection is over (the TLS socket is secure). */
  finished(socket: net.Socket): void {
    const key = peerKey(socket);
    if (key !== undefined) this.#pending.delete(key);
  }
}
