/**
 * The TCP front of an HTTPS listener: accepts, reads the ClientHello far
 * enough to see the server name (client-hello.ts), then hands the socket, with
 * the bytes read put back, to one of two TLS servers:
 *   - `withSni` holds no certificate of its own: its SNI callback picks one,
 *     so no other certificate can compete with it (see client-hello.ts);
 *   - `withoutSni` holds the default certificate, for clients sending no SNI.
 * An unknown name, when the config says to refuse it, gets the
 * unrecognized_name alert here and the connection is closed. A plain HTTP
 * request (a client that forgot https://) gets a 400 saying so, as nginx
 * answers it, instead of a silent close.
 *
 * One deadline covers the whole handshake, from accept to the TLS servers'
 * 'secureConnection': a client that stalls anywhere in it (in its hello, or
 * after the ServerHello) is closed then, whatever Node's own per-server
 * `handshakeTimeout` (120 s by default, started only at the hand-over) says.
 *
 * Connections over the worker's cap, or over the per-client-address cap, are
 * closed at accept, before any TLS work.
 *
 * Cost: one extra read callback per connection, no copy in the common case
 * of a ClientHello arriving in one segment, and work linear in the hello's
 * size however it is segmented (HelloAssembler).
 */
import net from 'node:net';
import type tls from 'node:tls';
import { HelloAssembler, UNRECOGNIZED_NAME_ALERT } from './client-hello.js';

/** Why a connection was closed at accept (the `reason` label of keyedge_proxy_connections_rejected_total). */
export type RejectReason = 'worker_limit' | 'client_limit';

/**
 * nginx's answer to the same mistake (its 497 code, sent as 400): the client
 * hears why, instead of a reset it would retry. Our own bytes, fixed, so
 * nothing of the request is echoed.
 */
const PLAIN_HTTP_BODY = 'The plain HTTP request was sent to HTTPS port\n';
export const PLAIN_HTTP_ANSWER = Buffer.from(
  'HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n' +
    `content-length: ${PLAIN_HTTP_BODY.length}\r\nx-keyedge-error: KEYEDGE_HTTP_PLAIN_HTTP\r\nconnection: close\r\n\r\n${PLAIN_HTTP_BODY}`,
  'latin1',
);

export interface FrontOptions {
  readonly withSni: tls.Server;
  /** Undefined when there is no default certificate: such clients are refused by withSni's handshake. */
  readonly withoutSni: tls.Server | undefined;
  /** Read per connection: false while there is no default certificate (a reload may add or remove it). */
  readonly hasDefault?: () => boolean;
  /** False for a name no certificate covers and that must be refused. */
  readonly acceptsName: (serverName: string) => boolean;
  /** From accept to the end of the TLS handshake: past it the connection is closed. */
  readonly handshakeTimeoutMs: number;
  readonly onUnknownName: () => void;
  /**
   * Told of each connection closed by the deadline before its ClientHello was
   * complete; one closed later is reported by the TLS server, as any handshake a client leaves.
   */
  readonly onHelloTimeout?: () => void;
  /** Told of each plain HTTP request answered 400 (with the peer's address, for a debug line). */
  readonly onPlainHttp?: (remoteAddress: string | undefined) => void;
  /** The worker's connection cap, shared by its listeners; none when absent. */
  readonly limit?: ConnectionLimit;
  /** The worker's per-client-address cap, shared by its listeners; none when absent. */
  readonly clientLimit?: ClientConnectionLimit;
  /** Told of each connection closed at accept because a cap was reached. */
  readonly onRejected?: (reason: RejectReason) => void;
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
    socket.once('close', () => {
      const left = this.#open.get(key)! - 1;
      if (left === 0) this.#open.delete(key);
      else this.#open.set(key, left);
    });
    return true;
  }
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

export function createTlsFront(options: FrontOptions): net.Server {
  // The inner servers never listen; Node starts their HTTP connection
  // tracking (header/request timeouts, closeIdleConnections) on 'listening'.
  for (const server of [options.withSni, options.withoutSni]) server?.emit('listening');
  const deadlines = new WeakMap<net.Socket, NodeJS.Timeout>();
  const secured = (socket: tls.TLSSocket): void => {
    // Node keeps the accepted TCP socket as `_parent` (stable since Node 0.x, not public API; worker.ts reads it too).
    const raw = (socket as tls.TLSSocket & { _parent?: net.Socket })._parent;
    if (raw !== undefined) clearTimeout(deadlines.get(raw));
  };
  for (const server of [options.withSni, options.withoutSni]) server?.on('secureConnection', secured);
  const reject = (socket: net.Socket, reason: RejectReason): void => {
    options.onRejected?.(reason);
    socket.destroy();
  };
  return net.createServer({ noDelay: true }, (socket) => {
    if (options.clientLimit !== undefined && !options.clientLimit.admit(socket)) return reject(socket, 'client_limit');
    if (options.limit !== undefined && !options.limit.admit(socket)) return reject(socket, 'worker_limit');
    const hello = new HelloAssembler();
    let reading = true;
    const deadline = setTimeout(() => {
      if (reading) options.onHelloTimeout?.();
      socket.destroy();
    }, options.handshakeTimeoutMs);
    deadlines.set(socket, deadline);
    socket.once('close', () => clearTimeout(deadline));
    const handOver = (server: tls.Server): void => {
      reading = false;
      socket.off('data', onData);
      socket.pause();
      socket.unshift(hello.bytes);
      server.emit('connection', socket);
    };
    // Says its last word and reads until the client closes, so the answer is not lost to a reset (RFC 9112 §9.6);
    // the deadline closes a client that never does.
    const answer = (bytes: Buffer): void => {
      reading = false;
      socket.off('data', onData);
      socket.end(bytes);
      socket.resume();
    };
    const onData = (chunk: Buffer): void => {
      const peek = hello.push(chunk);
      if (peek.kind === 'incomplete') return;
      if (peek.kind === 'http') {
        options.onPlainHttp?.(socket.remoteAddress);
        return answer(PLAIN_HTTP_ANSWER);
      }
      if (peek.kind !== 'hello') return handOver(options.withSni);
      if (peek.serverName === undefined) return handOver((options.hasDefault?.() ?? true) ? (options.withoutSni ?? options.withSni) : options.withSni);
      if (options.acceptsName(peek.serverName)) return handOver(options.withSni);
      options.onUnknownName();
      answer(UNRECOGNIZED_NAME_ALERT);
    };
    socket.on('data', onData);
    // A reset, before or after the hand-over, ends in 'close' (which clears the deadline), never in an uncaught 'error'.
    socket.on('error', () => {});
  });
}
