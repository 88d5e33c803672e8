/**
 * A worker's graceful stop: stop accepting everywhere, close idle keep-alive
 * connections at once and busy ones once their answers are sent (http-front.ts
 * `stop`, before this), wait for the connections of the TLS listeners and of
 * the plain-HTTP port to end within the grace period, then cut what is left
 * on every port and release the rest (staple loops, metrics, origin pools, keys).
 *
 * Cost: one check every 20 ms while waiting.
 */
import type http from 'node:http';

/** What the stop needs of a TLS listener (tls/listener.ts) or of the plain-HTTP port (http/server.ts `RedirectPort`). */
export interface Drainable {
  stopAccepting(): void;
  readonly connections: number;
  destroyConnections(): void;
}

export interface ShutdownParts {
  /** The TLS listeners and the plain-HTTP port, if any. */
  readonly listeners: readonly Drainable[];
  /** The HTTP servers behind the listeners, and the plain-HTTP redirect server if any. */
  readonly servers: readonly http.Server[];
  /** How long open requests may take to finish. */
  readonly graceMs: number;
  /** Called last, once every connection is closed. */
  readonly release: () => Promise<void>;
}

export async function shutDown({ listeners, servers, graceMs, release }: ShutdownParts): Promise<void> {
  // Every HTTP/1.1 connection, the plain-HTTP port's included, is ended by http-front.ts `stop`, before this, after
  // the answers to what it took. Node's server.close() is left till the end: it would destroy each connection whose
  // answer in progress is ended but not yet flushed to a client reading slowly (it takes a finished answer for a sent
  // one), cutting that answer and every one queued behind it, and stop the header and request deadlines of the rest.
  // The plain-HTTP port's busy connections were left open by it, their clients' next requests served until the grace
  // ended, and the stop did not wait for them: an ACME answer on its way was cut as soon as the TLS side was done.
  for (const listener of listeners) listener.stopAccepting();
  const open = (): number => listeners.reduce((sum, l) => sum + l.connections, 0);
  const allClosed = new Promise<void>((resolve) => {
    const check = (): void => (open() === 0 ? resolve() : void setTimeout(check, 20));
    check();
  });
  const grace = new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref());
  await Promise.race([allClosed, grace]);
  for (const listener of listeners) listener.destroyConnections();
  // Whatever else Node's servers still hold (a request still arriving held the worker to Node's deadlines, past its
  // grace period); then their deadline checks stop (Node's close(), on servers no longer listening).
  for (const server of servers) server.closeAllConnections();
  for (const server of servers) server.close(() => undefined);
  await release();
}
