/**
 * One HTTPS listener, all of it: accept and the connection caps, one
 * deadline from accept to the end of the handshake, the ClientHello read
 * (client-hello.ts), the choice of the connection's one secure context, the
 * TLS handshake on a TLS socket of our own, the handshake metrics, and the
 * hand-over by negotiated ALPN protocol: http/1.1 (or none) to the HTTP
 * server, any other to the handler registered for it (`handle`).
 *
 * Why a TLS socket of our own rather than a tls.Server: the server name is
 * known once the ClientHello is read, so the certificate's context is
 * chosen there, once, and the socket starts on it. OpenSSL does not call
 * back into JavaScript for the name (no SNI callback, no certificate
 * callback: Node's 'OCSPRequest' event paused every handshake for one), no
 * certificate competes with the chosen one (Node's SNI contexts lend their
 * certificate next to the server's own), and the name is resolved once per
 * connection and kept on it (connection.ts) for the request path.
 *
 * Kept from Node's own TLS server (lib/_tls_wrap.js): session tickets come
 * from the context's ticket-key callback (tickets.ts; every context holds
 * the worker's ring), the ALPN choice is OpenSSL's (server order), a
 * handshake failure is an error or a close before 'secure'. OCSP staples are
 * set on the socket before the handshake starts (node-internals.ts).
 *
 * Refusals before any TLS work: over the worker's or the client's cap
 * (closed), plain HTTP (a 400, plain-http.ts), an unknown name when the
 * config refuses them (the unrecognized_name alert, RFC 6066 §3). A client
 * without SNI gets the default certificate; without one its handshake fails.
 * A ClientHello we cannot read (split over records, say) goes to OpenSSL
 * with an SNI callback: the rare path keeps working, at the old cost, and a hello
 * without SNI gets the default certificate there too; no session resumes
 * there (contexts.ts, withoutCertificate).
 *
 * Once secured, a connection that sends records without application data
 * (TLS 1.3 KeyUpdate) past a budget is cut (record-flood.ts).
 *
 * Cost per connection: one read callback, one context lookup, one TLS
 * socket, one small record (ConnectionInfo), one timer, one entry in the
 * record watch (checked on one timer per listener).
 */
import net from 'node:net';
import type tls from 'node:tls';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ServedCertificate } from '../certs/certificate.js';
import type { ProxyMetrics } from '../metrics.js';
import type { ServingState } from '../serving/state.js';
import { listen } from '../../keyserver/shared/listen.js';
import { HelloAssembler, type HelloPeek, UNRECOGNIZED_NAME_ALERT } from './client-hello.js';
import { type ClientConnectionLimit, type ConnectionLimit, type RejectReason, refusalOf } from './connection-limits.js';
import type { ConnectionInfo, SecureConnectionHandler } from './connection.js';
import type { SecureContextCache } from './contexts.js';
import { secureConnection, type ContextChoice } from './handshake.js';
import { normaliseName, selectByName } from './names.js';
import { checkTlsInternals } from './node-internals.js';
import type { OcspStapler } from './ocsp.js';
import { PLAIN_HTTP_ANSWER } from './plain-http.js';
import { ProtocolTable, type ProtocolOptions } from './protocols.js';
import { RecordFloodGuard } from './record-flood.js';

export interface TlsListenerOptions {
  /** Names the listener in ConnectionInfo and logs: its configured address (a port 0 becomes the bound port once listening). */
  readonly id: string;
  readonly profile: TlsProfileName;
  /** What serves now: read once per connection, so a reload applies to the next one. */
  readonly serving: () => ServingState;
  /** Secure contexts by certificate, each holding the worker's ticket keys. */
  readonly contexts: SecureContextCache;
  /** Staples by certificate; none when stapling is off. */
  readonly stapler?: OcspStapler;
  /** Takes connections that negotiated http/1.1 or no ALPN protocol. */
  readonly http1: SecureConnectionHandler;
  /** From accept to the end of the TLS handshake: past it the connection is closed. */
  readonly handshakeTimeoutMs: number;
  /**
   * Told of each SNI host name (normalised; not any other bytes) no
   * certificate covers by itself (before any fallback), with the peer's address (its per-client bound):
   * on-demand issuance may want it (acme/on-demand.ts). Must not block; the handshake goes on with what serves now.
   */
  readonly onUncoveredName?: (serverName: string, address: string | undefined) => void;
  /** The worker's caps, shared by its listeners; none when absent. */
  readonly limit?: ConnectionLimit;
  readonly clientLimit?: ClientConnectionLimit;
  readonly metrics: ProxyMetrics;
  readonly log: Logger;
}

let internalsChecked = false;

/** How long a connection that has sent no byte when the stop begins has to begin its handshake (`stopAccepting`). */
const SILENT_AT_STOP_MS = 1_000;

/**
 * What may be told as an uncovered name: letters, digits, hyphens, dots, up to 253 characters (RFC 1035 §2.3.4;
 * RFC 6066 §3 names a host by its DNS name). The SNI is the client's bytes, up to 16 KB: anything else is no name
 * a certificate could be issued for, and would cost the reporter's memory and the primary's messages.
 */
const HOST_NAME = /^[a-z0-9.-]{1,253}$/;

export class TlsListener {
  #id: string;
  readonly #options: TlsListenerOptions;
  readonly #server: net.Server;
  readonly #protocols = new ProtocolTable();
  /** Accepted TCP sockets still open, for shutdown. */
  readonly #sockets = new Set<net.Socket>();
  readonly #records: RecordFloodGuard;

  constructor(options: TlsListenerOptions) {
    if (!internalsChecked) {
      checkTlsInternals();
      internalsChecked = true;
    }
    this.#id = options.id;
    this.#options = options;
    this.#server = net.createServer({ noDelay: true }, (socket) => this.#accept(socket));
    this.#records = new RecordFloodGuard(
      options.log,
      () => this.#id,
      () => options.metrics.recordFloods.inc(),
    );
  }

  /**
   * Registers the handler of an ALPN protocol other than http/1.1 (h2,
   * acme-tls/1): the listener offers it from the next connection on.
   * `options.selectContext` gives the protocol a context of its own, chosen
   * before any certificate when a ClientHello offers it (RFC 8737 §3).
   */
  handle(protocol: string, handler: SecureConnectionHandler, options: ProtocolOptions = {}): void {
    this.#protocols.register(protocol, handler, options);
  }

  /** The ALPN protocols offered on a certificate's context, in the server's order of preference. */
  get protocols(): readonly string[] {
    return this.#protocols.offered;
  }

  /** Its configured address, with the bound port once listening. */
  get id(): string {
    return this.#id;
  }

  async listen(host: string, port: number): Promise<number> {
    await listen(this.#server, { host, port, exclusive: false });
    const bound = (this.#server.address() as net.AddressInfo).port;
    if (port === 0) this.#id = this.#id.replace(/:0$/, `:${bound}`);
    return bound;
  }

  /** Open client connections, handshaking or secured. */
  get connections(): number {
    return this.#sockets.size;
  }

  /**
   * Stops accepting; open connections go on (a handshake under way may end, and the HTTP side closes what it brings
   * when no request comes: http/retire.ts), except one that has sent nothing yet: it gets SILENT_AT_STOP_MS to begin,
   * time for a ClientHello already on its way, and is closed then. It held the worker's exit until the handshake deadline.
   */
  stopAccepting(): void {
    this.#server.close();
    const silent = [...this.#sockets].filter((socket) => socket.bytesRead === 0);
    if (silent.length === 0) return;
    setTimeout(() => {
      for (const socket of silent) if (socket.bytesRead === 0) socket.destroy();
    }, SILENT_AT_STOP_MS).unref();
  }

  /** Closes every connection still open. */
  destroyConnections(): void {
    for (const socket of this.#sockets) socket.destroy();
  }

  #accept(socket: net.Socket): void {
    const { metrics } = this.#options;
    const refusal = refusalOf(this.#options, socket);
    if (refusal !== undefined) return this.#reject(socket, refusal);
    const accepted = process.hrtime.bigint();
    this.#sockets.add(socket);
    metrics.openConnections.inc();
    const hello = new HelloAssembler();
    let secured: tls.TLSSocket | undefined;
    let reading = true;
    const deadline = setTimeout(() => {
      if (reading) metrics.handshakes.inc({ result: 'timeout', tls_version: 'none', resumed: 'false' });
      (secured ?? socket).destroy();
    }, this.#options.handshakeTimeoutMs);
    socket.once('close', () => {
      clearTimeout(deadline);
      this.#sockets.delete(socket);
      metrics.openConnections.dec();
    });
    const onData = (chunk: Buffer): void => {
      const peek = hello.push(chunk);
      if (peek.kind === 'incomplete') return;
      reading = false;
      socket.off('data', onData);
      if (peek.kind === 'http') {
        metrics.handshakes.inc({ result: 'plain_http', tls_version: 'none', resumed: 'false' });
        this.#options.log.debug({ client: socket.remoteAddress }, 'plain HTTP request on a TLS port: answered 400');
        return lastWord(socket, PLAIN_HTTP_ANSWER);
      }
      let choice: ContextChoice | undefined;
      try {
        choice = this.#choose(peek, socket.remoteAddress);
      } catch {
        // Logged where it failed; the client sees the connection closed.
        metrics.handshakes.inc({ result: 'failed', tls_version: 'none', resumed: 'false' });
        return void socket.destroy();
      }
      if (choice === undefined) {
        metrics.handshakes.inc({ result: 'unknown_name', tls_version: 'none', resumed: 'false' });
        return lastWord(socket, UNRECOGNIZED_NAME_ALERT);
      }
      socket.pause();
      socket.unshift(hello.bytes);
      secured = secureConnection(socket, choice, {
        listenerId: this.#id,
        deadline,
        accepted,
        protocols: this.#protocols,
        http1: this.#options.http1,
        metrics,
        log: this.#options.log,
        records: this.#records,
      });
    };
    socket.on('data', onData);
    // A reset, before or after the hand-over, ends in 'close' (which clears the deadline), never in an uncaught 'error'.
    socket.on('error', () => {});
  }

  #reject(socket: net.Socket, reason: RejectReason): void {
    this.#options.metrics.rejectedConnections.inc({ reason });
    socket.destroy();
  }

  /** The connection's context from its ClientHello; undefined for a name to refuse with unrecognized_name. */
  #choose(peek: HelloPeek, address: string | undefined): ContextChoice | undefined {
    const { contexts, profile } = this.#options;
    if (peek.kind !== 'hello') return { kind: 'by-callback', context: contexts.withoutCertificate(profile), pick: (name) => this.#pick(name, address) };
    const serverName = normaliseName(peek.serverName);
    const own = this.#protocols.ownContext(serverName, peek.alpn);
    if (own !== undefined) return { kind: 'own', ...own, serverName, offered: peek.alpn };
    const state = this.#options.serving();
    // One lookup per connection: a name no certificate covers by itself is told, then served the fallback, if any.
    const covering = peek.serverName === undefined ? undefined : selectByName(state.sni, peek.serverName, undefined)?.value;
    if (covering === undefined && serverName !== undefined && HOST_NAME.test(serverName)) this.#options.onUncoveredName?.(serverName, address);
    const selected = peek.serverName === undefined ? state.noSni : (covering ?? state.fallback);
    // No default certificate for a client without SNI: a context without one, whose handshake fails as Node's did.
    if (selected === undefined)
      return peek.serverName === undefined ? { kind: 'none', context: contexts.withoutCertificate(profile), offered: peek.alpn } : undefined;
    return {
      kind: 'certificate',
      certificate: selected,
      context: this.#contextOf(selected),
      staple: peek.statusRequest ? this.#options.stapler?.stapleOf(selected) : undefined,
      serverName,
      offered: peek.alpn,
    };
  }

  /** For a ClientHello only OpenSSL could read: its certificate callback's choice, as #choose's (no name: the default certificate). */
  #pick(
    serverName: string | undefined,
    address: string | undefined,
  ): { certificate: ServedCertificate; context: tls.SecureContext; staple: Buffer | undefined } | undefined {
    const state = this.#options.serving();
    if (serverName === undefined) return this.#picked(state.noSni);
    // As #choose: a name no certificate covers by itself is told, then served the fallback, if any.
    const covering = selectByName(state.sni, serverName, undefined)?.value;
    const name = normaliseName(serverName);
    if (covering === undefined && name !== undefined && HOST_NAME.test(name)) this.#options.onUncoveredName?.(name, address);
    return this.#picked(covering ?? state.fallback);
  }

  #picked(selected: ServedCertificate | undefined): { certificate: ServedCertificate; context: tls.SecureContext; staple: Buffer | undefined } | undefined {
    if (selected === undefined) return undefined;
    return { certificate: selected, context: this.#contextOf(selected), staple: this.#options.stapler?.stapleOf(selected) };
  }

  /** Built on first use when the cache had no room for it (contexts.ts); a failure is logged here, with the certificate's name. */
  #contextOf(certificate: ServedCertificate): tls.SecureContext {
    try {
      return this.#options.contexts.get(this.#options.profile, certificate);
    } catch (err) {
      this.#options.log.error({ certificate: certificate.name, err }, 'secure context could not be built');
      throw err;
    }
  }
}

/** Says its last word and reads until the client closes, so the answer is not lost to a reset (RFC 9112 §9.6); the deadline closes a client that never does. */
function lastWord(socket: net.Socket, bytes: Buffer): void {
  socket.end(bytes);
  socket.resume();
}

export type { ConnectionInfo, SecureConnectionHandler };
