/**
 * What a TLS listener knows about one secured connection, kept on its socket
 * so nothing after the handshake resolves the name again: the server name
 * the client asked for, the certificate served, its names, the listener.
 *
 * Why: the request path needs the served certificate's names for every
 * request (a Host the certificate does not cover is refused, RFC 9110
 * §15.5.20; HTTP/2 connection reuse is bounded by them, RFC 9113 §9.1.1).
 * The listener resolves the name once, where the ClientHello is read, and
 * stores the answer here; a reload never changes what a connection was
 * served, and `stillCovers` tells whether what serves now still covers it
 * (a connection that it no longer covers is retired: HTTP/2 with GOAWAY,
 * HTTP/1.1 closed, http/retire.ts).
 *
 * Cost: one small object and one property per connection (a symbol key, so
 * every TLS socket keeps one shape).
 */
import type tls from 'node:tls';
import type { ServedCertificate } from '../certs/certificate.js';
import type { ServingState } from '../serving/state.js';
import { coveredBy, selectByName } from './names.js';

export interface ConnectionInfo {
  /** The listener that accepted the connection (its configured address, e.g. "127.0.0.1:443"). */
  readonly listenerId: string;
  /** The SNI name, normalised (lower case, no trailing dot); undefined when the client sent none. */
  readonly serverName: string | undefined;
  /** The certificate served; undefined for a special context (a protocol's own, such as an ACME challenge). */
  readonly certificate: ServedCertificate | undefined;
  /** The names the served certificate covers (its SANs as configured). */
  readonly certificateNames: readonly string[];
  /** The ALPN protocols the client offered, in its order; undefined when it offered none. */
  readonly offeredProtocols: readonly string[] | undefined;
  /** Who the connection counts as for per-client shares (connection-limits.ts `countedClient`); undefined: no share. */
  readonly client: string | undefined;
}

/**
 * Takes a connection whose handshake completed with the ALPN protocol it
 * was registered for (tls.TLSSocket `alpnProtocol`). It owns the socket from
 * then on, errors included: an 'error' listener must be attached at once.
 */
export type SecureConnectionHandler = (socket: tls.TLSSocket, connection: ConnectionInfo) => void;

const CONNECTION = Symbol('keyedge.connection');

type WithConnection = { [CONNECTION]?: ConnectionInfo };

/** The listener's record of `socket`; undefined for a socket no TLS listener secured. */
export function connectionOf(socket: object): ConnectionInfo | undefined {
  return (socket as WithConnection)[CONNECTION];
}

/** Called by the listener once, when it knows the served certificate. */
export function keepConnection(socket: tls.TLSSocket, connection: ConnectionInfo): void {
  (socket as WithConnection)[CONNECTION] = connection;
}

/**
 * After a reload: whether the certificate that now serves `serverName` (as
 * the listener would choose it, the default certificate included) still
 * covers every name a connection was served. A long-lived connection that
 * fails this is retired, so its client reconnects and sees what serves now.
 */
export function stillCovers(state: ServingState, serverName: string | undefined, served: readonly string[]): boolean {
  const now = (serverName === undefined ? state.noSni : selectByName(state.sni, serverName, state.fallback)?.value)?.names ?? [];
  // The same certificate still serves the name (no reload since, or one that left it alone): checked once per new HTTP/2 connection.
  if (now === served) return true;
  // Covered, not listed: a renewal from `a.example.com, b.example.com` to `*.example.com` drops no name a client can
  // reach (RFC 6125 §6.4.3); one from the wildcard to exact names drops every other name under it (`*.example.com`
  // itself is covered by a wildcard of the same parent only).
  const covers = coverageOf(now);
  return served.every(covers);
}

/** One index per names list that serves (a certificate's), built at the first check after a change: a reload checks every connection. */
const coverage = new WeakMap<readonly string[], (name: string) => boolean>();

function coverageOf(names: readonly string[]): (name: string) => boolean {
  let covers = coverage.get(names);
  if (covers === undefined) {
    covers = coveredBy(names);
    coverage.set(names, covers);
  }
  return covers;
}
