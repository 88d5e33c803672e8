/**
 * A worker's graceful stop: stop accepting everywhere, close idle keep-alive
 * connections at once and busy ones once their answers are sent, wait for the
 * TLS listeners' connections to end within the grace period, then cut what
 * is left on every port and release the rest (staple loops, metrics, origin pools, keys).
 *
 * Cost: one check every 20 ms while waiting.
 */
import type http from 'node:http';

/** What the stop needs of a TLS listener (tls/listener.ts). */
export interface Drainable {
  stopAccepting(): void;
  readonly connections: number;
  destroyConnections(): void;
}

export interface ShutdownParts {
  readonly listeners: readonly Drainable[];
  /** The HTTP servers behind the listeners, and the plain-HTTP redirect server if any. */
  readonly servers: readonly http.Server[];
  /** How long open requests may take to finish. */
  readonly graceMs: number;
  /** Called last, once every connection is closed. */
  readonly release: () => Promise<void>;
}

export async function shutDown({ listeners, servers, graceMs, release }: ShutdownParts): Promise<void> {
  for (const listener of listeners) listener.stopAccepting();
  // The plain-HTTP port's idle keep-alive connections close now; its busy ones go on until the grace ends. Not the TLS
  // listeners' HTTP/1.1 servers (never listening): their connections are ended by http-front.ts `stop`, before this,
  // after the answers to what they forwarded. Node's close() would destroy each whose answer in progress is ended but
  // not yet flushed to a client reading slowly (it takes a finished answer for a sent one), cutting that answer and
  // every one queued behind it; their header and request deadlines keep running meanwhile.
  for (const server of servers) if (server.listening) server.close(() => undefined);
  const open = (): number => listeners.reduce((sum, l) => sum + l.connections, 0);
  const allClosed = new Promise<void>((resolve) => {
    const check = (): void => (open() === 0 ? resolve() : void setTimeout(check, 20));
    check();
  });
  const grace = new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref());
  await Promise.race([allClosed, grace]);
  for (const listener of listeners) listener.destroyConnections();
  // The plain-HTTP port's connections have no TLS listener to cut them: left to Node's deadlines, a request still
  // arriving held the worker past its grace period.
  for (const server of servers) server.closeAllConnections();
  // The TLS listeners' servers: their deadline checks stop now (Node's close() on a server that never listened).
  for (const server of servers) if (!server.listening) server.close(() => undefined);
  await release();
}
