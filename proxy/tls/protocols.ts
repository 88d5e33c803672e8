/**
 * A listener's ALPN protocols (RFC 7301): which it offers, in its order of
 * preference, and who takes a connection that negotiated each. http/1.1 is
 * always offered, last, and taken by the HTTP server; a protocol is offered
 * only once a handler is registered for it (h2 when HTTP/2 is wired), so a
 * listener with none behaves as Node's HTTPS server (ALPN "http/1.1" only).
 *
 * A protocol may bring a secure context of its own (`selectContext`): ACME
 * TLS-ALPN-01 (RFC 8737 §3) answers a ClientHello that offers "acme-tls/1"
 * with a challenge certificate for a name that may have no certificate yet.
 * Such a protocol is negotiated on its own context only, never offered on a
 * certificate's.
 *
 * Cost: the wire form of the offer is built at registration, not per connection.
 */
import type tls from 'node:tls';
import type { SecureConnectionHandler } from './connection.js';

export const HTTP1 = 'http/1.1';

/** What a protocol's context choice sees of the ClientHello. */
export interface ClientHelloInfo {
  /** Normalised SNI name; undefined when the client sent none. */
  readonly serverName: string | undefined;
  /** Every protocol the client offered, in its order. */
  readonly offeredProtocols: readonly string[];
}

export interface ProtocolOptions {
  /**
   * A context of the protocol's own for a ClientHello that offers it,
   * chosen before any certificate (and before an unknown name is refused);
   * undefined to refuse it (the usual choice then applies, without it).
   */
  readonly selectContext?: (hello: ClientHelloInfo) => tls.SecureContext | undefined;
}

interface Registration extends ProtocolOptions {
  readonly handler: SecureConnectionHandler;
  /** The wire form of an offer of this protocol alone (for its own context). */
  readonly alone: Buffer;
}

export class ProtocolTable {
  readonly #registered = new Map<string, Registration>();
  #offered: readonly string[] = [HTTP1];
  #wire: Buffer = wireForm([HTTP1]);

  register(protocol: string, handler: SecureConnectionHandler, options: ProtocolOptions): void {
    const length = Buffer.byteLength(protocol);
    if (protocol === HTTP1 || length === 0 || length > 255) throw new RangeError(`'${protocol}' cannot be registered as an ALPN protocol`);
    if (this.#registered.has(protocol)) throw new RangeError(`ALPN protocol '${protocol}' already has a handler`);
    this.#registered.set(protocol, { ...options, handler, alone: wireForm([protocol]) });
    const onCertificates = [...this.#registered].filter(([, r]) => r.selectContext === undefined).map(([name]) => name);
    this.#offered = [...onCertificates, HTTP1];
    this.#wire = wireForm(this.#offered);
  }

  /** Offered on a certificate's context, server's preference first. */
  get offered(): readonly string[] {
    return this.#offered;
  }

  /** `offered` in the form OpenSSL takes (length-prefixed names). */
  get wire(): Buffer {
    return this.#wire;
  }

  handlerOf(protocol: string): SecureConnectionHandler | undefined {
    return this.#registered.get(protocol)?.handler;
  }

  /** The first offered protocol with a context of its own that accepts this hello, with that context. */
  ownContext(
    serverName: string | undefined,
    offered: readonly string[] | undefined,
  ): { readonly context: tls.SecureContext; readonly protocols: Buffer } | undefined {
    if (offered === undefined || this.#registered.size === 0) return undefined;
    for (const protocol of offered) {
      const registration = this.#registered.get(protocol);
      if (registration?.selectContext === undefined) continue;
      const context = registration.selectContext({ serverName, offeredProtocols: offered });
      if (context !== undefined) return { context, protocols: registration.alone };
    }
    return undefined;
  }
}

/** RFC 7301 §3.1: each name preceded by its length in one byte. */
function wireForm(protocols: readonly string[]): Buffer {
  return Buffer.concat(protocols.map((p) => Buffer.concat([Buffer.from([Buffer.byteLength(p)]), Buffer.from(p)])));
}
