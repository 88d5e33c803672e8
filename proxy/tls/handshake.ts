/**
 * The TLS handshake of one accepted connection on the context the listener
 * chose (listener.ts), then its hand-over by negotiated ALPN protocol.
 *
 * The socket is Node's own server-side TLS socket (`new tls.TLSSocket(raw,
 * { isServer: true, secureContext })`), set up as Node's TLS server sets up
 * its sockets (lib/_tls_wrap.js, tlsConnectionListener, Node 20 to 24) minus
 * what the listener already did: no SNI callback when the name was read
 * (the context is the certificate's), no client certificate request
 * (requestCert false: nothing is verified), no handshake timer of Node's
 * (the listener's deadline runs from accept). Session tickets: the context's
 * ticket-key callback (tickets.ts), as OpenSSL asks the context a connection
 * started with. A failure is counted once: a TLS error, or a close (the
 * client's, or the deadline's) before 'secure'.
 *
 * After 'secure': the deadline is cleared, TLS errors go to the socket's own
 * 'error' listeners (node-internals.ts), the connection's record is kept on
 * the socket (connection.ts), records without application data are watched
 * (record-flood.ts), and its handler takes it, synchronously.
 */
import tls from 'node:tls';
import type net from 'node:net';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ServedCertificate } from '../certs/certificate.js';
import type { ProxyMetrics } from '../metrics.js';
import { type ConnectionInfo, keepConnection, type SecureConnectionHandler } from './connection.js';
import { countedClient } from './connection-limits.js';
import { normaliseName } from './names.js';
import { onNamelessHello, releaseControl, stapleOnSocket } from './node-internals.js';
import { HTTP1, type ProtocolTable } from './protocols.js';
import type { RecordFloodGuard } from './record-flood.js';

/** The listener's choice of context for one connection. */
export type ContextChoice =
  /** A certificate's context, for the name read (or the default certificate). */
  | {
      readonly kind: 'certificate';
      readonly certificate: ServedCertificate;
      readonly context: tls.SecureContext;
      /** The OCSP response to staple, when the client asked for one and one is current. */
      readonly staple: Buffer | undefined;
      readonly serverName: string | undefined;
      readonly offered: readonly string[] | undefined;
    }
  /** A protocol's own context (protocols.ts), offering that protocol alone. */
  | {
      readonly kind: 'own';
      readonly context: tls.SecureContext;
      readonly protocols: Buffer;
      readonly serverName: string | undefined;
      readonly offered: readonly string[] | undefined;
    }
  /** No certificate to show (no SNI, no default certificate): the handshake fails. */
  | { readonly kind: 'none'; readonly context: tls.SecureContext; readonly offered: readonly string[] | undefined }
  /** A ClientHello only OpenSSL could read: the certificate callback picks, through `pick` (no name: the default certificate). */
  | {
      readonly kind: 'by-callback';
      readonly context: tls.SecureContext;
      readonly pick: (serverName: string | undefined) => { certificate: ServedCertificate; context: tls.SecureContext; staple: Buffer | undefined } | undefined;
    };

export interface HandshakeSetting {
  readonly listenerId: string;
  /** The listener's deadline from accept; cleared once the handshake completes. */
  readonly deadline: NodeJS.Timeout;
  /** process.hrtime.bigint() at accept, for the handshake duration. */
  readonly accepted: bigint;
  readonly protocols: ProtocolTable;
  readonly http1: SecureConnectionHandler;
  readonly metrics: ProxyMetrics;
  readonly log: Logger;
  /** Watches the secured connection for records without application data (record-flood.ts). */
  readonly records?: RecordFloodGuard;
}

/** Starts the handshake on `raw` (its ClientHello put back unread) and returns the TLS socket. */
export function secureConnection(raw: net.Socket, choice: ContextChoice, setting: HandshakeSetting): tls.TLSSocket {
  const { metrics, log } = setting;
  let certificate = choice.kind === 'certificate' ? choice.certificate : undefined;
  let serverName = choice.kind === 'by-callback' || choice.kind === 'none' ? undefined : choice.serverName;
  /** The SNI callback found no certificate for the name: counted as the listener counts its own refusals. */
  let unknownName = false;
  const options: tls.TLSSocketOptions = {
    isServer: true,
    secureContext: choice.context,
    ALPNProtocols: choice.kind === 'own' ? choice.protocols : setting.protocols.wire,
  };
  if (choice.kind === 'by-callback') {
    options.SNICallback = (name, done) => {
      try {
        const picked = choice.pick(name);
        // Node cannot send unrecognized_name from here: the handshake is closed before any certificate is shown.
        if (picked === undefined) {
          unknownName = true;
          return done(new Error('no certificate for this server name'));
        }
        certificate = picked.certificate;
        serverName = normaliseName(name);
        if (picked.staple !== undefined) stapleOnSocket(socket, picked.staple);
        done(null, picked.context);
      } catch (err) {
        done(err as Error);
      }
    };
  }
  const socket = new tls.TLSSocket(raw, options);
  if (choice.kind === 'by-callback') {
    // Node asks the SNI callback only for a named server: a hello without SNI would stay on the context without a
    // certificate and fail, where the same hello in one record gets the default certificate (listener.ts).
    onNamelessHello(socket, () => {
      try {
        const picked = choice.pick(undefined);
        if (picked === undefined) return undefined;
        certificate = picked.certificate;
        if (picked.staple !== undefined) stapleOnSocket(socket, picked.staple);
        return picked.context;
      } catch {
        // Logged where it failed (listener.ts); called from OpenSSL, it must not throw: no certificate, the handshake fails.
        return undefined;
      }
    });
  }
  if (choice.kind === 'certificate' && choice.staple !== undefined) stapleOnSocket(socket, choice.staple);
  let settled = false;
  const fail = (code: string | undefined, reason: string): void => {
    if (settled) return;
    settled = true;
    metrics.handshakes.inc({ result: unknownName ? 'unknown_name' : 'failed', tls_version: 'none', resumed: 'false' });
    log.debug({ code, reason }, 'TLS handshake failed');
  };
  socket.on('_tlsError', (err: NodeJS.ErrnoException) => fail(err.code, err.message));
  socket.once('close', () => fail('ECONNRESET', 'socket hang up'));
  socket.once('secure', () => {
    if (settled || socket.destroyed) return;
    settled = true;
    clearTimeout(setting.deadline);
    releaseControl(socket);
    const resumed = String(socket.isSessionReused());
    metrics.handshakes.inc({ result: 'ok', tls_version: socket.getProtocol() ?? 'unknown', resumed });
    metrics.handshakeDuration.observe({ resumed }, Number(process.hrtime.bigint() - setting.accepted) / 1e9);
    const connection: ConnectionInfo = {
      listenerId: setting.listenerId,
      serverName,
      certificate,
      certificateNames: certificate?.names ?? [],
      offeredProtocols: choice.kind === 'by-callback' ? undefined : choice.offered,
      client: countedClient(raw),
    };
    keepConnection(socket, connection);
    setting.records?.watch(raw, socket);
    const protocol = socket.alpnProtocol;
    const handler = protocol === false || protocol === null || protocol === HTTP1 ? setting.http1 : setting.protocols.handlerOf(protocol);
    if (handler === undefined) socket.destroy();
    else handler(socket, connection);
  });
  return socket;
}
