/**
 * The caps a worker applies at accept, before any TLS or HTTP work: the
 * worker's connection cap and the per-client-address cap, both shared by a
 * worker's TLS listeners (listener.ts) and its plain-HTTP port
 * (http/server.ts). A connection over either is closed at once; the client
 * sees the close and may retry.
 *
 * Cost: one counter update and one 'close' listener per connection; the
 * per-client map holds one entry per client with an open connection.
 */
import net from 'node:net';
import type { ProxyConfig } from '../../config/proxy-schema.js';

/** Why a connection was closed at accept (the `reason` label of keyedge_proxy_connections_rejected_total). */
export type RejectReason = 'worker_limit' | 'client_limit';

/** A worker's caps, shared by all its listeners; an absent one caps nothing. */
export interface WorkerConnectionCaps {
  readonly limit?: ConnectionLimit;
  readonly clientLimit?: ClientConnectionLimit;
}

/** Counts `socket` against both caps until it closes; or, counting nothing, why it must be closed. Per-client first, so one address at its cap takes no worker slot. */
export function refusalOf(caps: WorkerConnectionCaps, socket: net.Socket): RejectReason | undefined {
  if (caps.clientLimit !== undefined && !caps.clientLimit.admit(socket)) return 'client_limit';
  if (caps.limit !== undefined && !caps.limit.admit(socket)) return 'worker_limit';
  return undefined;
}

/**
 * A worker's caps from its config's `limits`, for all its listeners. `trusted`:
 * a trusted proxy's connections carry many clients, so its address is not
 * capped as one.
 */
export function workerConnectionLimits(
  limits: ProxyConfig['limits'],
  trusted: (address: string) => boolean,
): WorkerConnectionCaps & { readonly limit: ConnectionLimit } {
  const limit = new ConnectionLimit(limits.maxConnectionsPerWorker);
  if (limits.maxConnectionsPerClient === null) return { limit };
  return { limit, clientLimit: new ClientConnectionLimit(limits.maxConnectionsPerClient, trusted) };
}

/**
 * At most `max` client connections open in one worker, across its
 * listeners. A connection over the cap is closed at accept, before any TLS
 * work, which protects the worker's memory from a connection flood; the
 * client sees the connection closed and may retry. Single-threaded: one
 * instance per worker.
 */
export class ConnectionLimit {
  readonly max: number;
  #open = 0;

  constructor(max: number) {
    this.max = max;
  }

  get open(): number {
    return this.#open;
  }

  /** Counts `socket` until it closes; false, counting nothing, when the cap is reached. */
  admit(socket: net.Socket): boolean {
    if (this.#open >= this.max) return false;
    this.#open++;
    socket.once('close', () => this.#open--);
    return true;
  }
}

/**
 * At most `max` open connections per client in one worker, across its
 * listeners, so one address cannot take the whole worker cap. A client is
 * its IPv4 address, or the /64 of its IPv6 address (clientKey). Memory is
 * bounded by the open connections: a client's entry goes when its count
 * drops to 0. Single-threaded: one instance per worker.
 */
export class ClientConnectionLimit {
  readonly max: number;
  readonly #exempt: (address: string) => boolean;
  readonly #open = new Map<string, number>();

  /** `exempt`: peers never capped (trusted proxies, whose connections carry many clients). */
  constructor(max: number, exempt: (address: string) => boolean = () => false) {
    this.max = max;
    this.#exempt = exempt;
  }

  /** Client keys with at least one open connection. */
  get clients(): number {
    return this.#open.size;
  }

  /** Counts `socket` against its client until it closes; false, counting nothing, when that client is at the cap. */
  admit(socket: net.Socket): boolean {
    const address = socket.remoteAddress;
    // No address: the peer is already gone and the socket closes on its own.
    if (address === undefined || this.#exempt(address)) return true;
    const key = clientKey(address);
    const open = this.#open.get(key) ?? 0;
    if (open >= this.max) return false;
    this.#open.set(key, open + 1);
    (socket as Counted)[COUNTED_AS] = key;
    socket.once('close', () => {
      const left = this.#open.get(key)! - 1;
      if (left === 0) this.#open.delete(key);
      else this.#open.set(key, left);
    });
    return true;
  }
}

const COUNTED_AS = Symbol('keyedge.countedAs');

type Counted = { [COUNTED_AS]?: string };

/**
 * The client `socket` was counted as at accept (clientKey), for the shares
 * kept per client after it (an origin's places, http/origin-gate.ts);
 * undefined when it was not counted: a trusted proxy's connection, which
 * carries many clients, or no per-client cap configured.
 */
export function countedClient(socket: object): string | undefined {
  return (socket as Counted)[COUNTED_AS];
}

const MAPPED_V4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i;

/**
 * Who a peer address counts as: an IPv4 address (also when a dual-stack
 * listener reports it as ::ffff:a.b.c.d, RFC 4291 §2.5.5.2), or an IPv6
 * address's /64. A /64 is one link (RFC 4291 §2.5.1): an ISP gives each
 * subscriber at least one (RFC 6177), so one host can pick any of 2^64
 * addresses in it, and keying by address would let it dodge the cap.
 */
export function clientKey(address: string): string {
  const mapped = MAPPED_V4.exec(address)?.[1];
  if (mapped !== undefined) return mapped;
  if (net.isIPv6(address)) return `${ipv6Groups(address).slice(0, 4).join(':')}::/64`;
  return address;
}

/** The eight 16-bit groups of an IPv6 address, as numbers printed in hex ('::' expanded, zone dropped). */
function ipv6Groups(address: string): string[] {
  const [head = '', tail] = address.split('%')[0]!.split('::');
  const split = (part: string): string[] => (part === '' ? [] : part.split(':'));
  const left = split(head);
  const right = split(tail ?? '');
  // A trailing dotted quad (::a.b.c.d) takes two groups; it is never in the first four.
  const rightGroups = right.length + (right.at(-1)?.includes('.') === true ? 1 : 0);
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - rightGroups).fill('0'), ...right];
  return groups.map((g) => (g.includes('.') ? g : parseInt(g, 16).toString(16)));
}
