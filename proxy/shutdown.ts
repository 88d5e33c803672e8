/**
 * A worker's graceful stop: stop accepting everywhere, close idle keep-alive
 * connections at once and busy ones once their answer is sent, wait for the
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
  // Idle keep-alive connections close now. Busy ones: the TLS listeners' after the answers to what they forwarded
  // (http-front.ts `stop`, before this); the plain-HTTP port's go on until the grace ends.
  for (const server of servers) server.close(() => undefined);
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
  await release();
}
