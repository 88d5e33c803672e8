/**
 * The TCP front of an HTTPS listener: accepts, reads the ClientHello far
 * enough to see the server name (client-hello.ts), then hands the socket, with
 * the bytes read put back, to one of two TLS servers:
 *   - `withSni` holds no certificate of its own: its SNI callback picks one,
 *     so no other certificate can compete with it (see client-hello.ts);
 *   - `withoutSni` holds the default certificate, for clients sending no SNI.
 * An unknown name, when the config says to refuse it, gets the
 * unrecognized_name alert here and the connection is closed.
 *
 * Cost: one extra read callback per connection, no copy in the common case
 * of a ClientHello arriving in one segment.
 */
import net from 'node:net';
import type tls from 'node:tls';
import { MAX_HELLO_BYTES, peekServerName, UNRECOGNIZED_NAME_ALERT } from './client-hello.js';

export interface FrontOptions {
  readonly withSni: tls.Server;
  /** Undefined when there is no default certificate: such clients are refused by withSni's handshake. */
  readonly withoutSni: tls.Server | undefined;
  /** Read per connection: false while there is no default certificate (a reload may add or remove it). */
  readonly hasDefault?: () => boolean;
  /** False for a name no certificate covers and that must be refused. */
  readonly acceptsName: (serverName: string) => boolean;
  /** How long a client may take to send its ClientHello. */
  readonly helloTimeoutMs: number;
  readonly onUnknownName: () => void;
  /** The worker's connection cap, shared by its listeners; none when absent. */
  readonly limit?: ConnectionLimit;
  /** Told of each connection closed at accept because the cap was reached. */
  readonly onRejected?: () => void;
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

export function createTlsFront(options: FrontOptions): net.Server {
  // The inner servers never listen; Node starts their HTTP connection
  // tracking (header/request timeouts, closeIdleConnections) on 'listening'.
  for (const server of [options.withSni, options.withoutSni]) server?.emit('listening');
  return net.createServer({ noDelay: true }, (socket) => {
    if (options.limit !== undefined && !options.limit.admit(socket)) {
      options.onRejected?.();
      socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    let length = 0;
    const timer = setTimeout(() => socket.destroy(), options.helloTimeoutMs);
    const handOver = (server: tls.Server): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.pause();
      socket.unshift(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length));
      server.emit('connection', socket);
    };
    const onError = (): void => clearTimeout(timer);
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      length += chunk.length;
      const peek = peekServerName(chunks.length === 1 ? chunk : Buffer.concat(chunks, length));
      if (peek.kind === 'incomplete' && length < MAX_HELLO_BYTES) return;
      if (peek.kind !== 'hello') return handOver(options.withSni);
      if (peek.serverName === undefined) return handOver((options.hasDefault?.() ?? true) ? (options.withoutSni ?? options.withSni) : options.withSni);
      if (options.acceptsName(peek.serverName)) return handOver(options.withSni);
      clearTimeout(timer);
      options.onUnknownName();
      socket.end(UNRECOGNIZED_NAME_ALERT);
    };
    socket.on('data', onData);
    socket.on('error', onError);
  });
}
