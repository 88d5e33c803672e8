/**
 * The Node internals a server-side TLS socket made by hand needs, in one
 * place, checked once at start so a Node upgrade that drops one fails then,
 * not at the first handshake.
 *
 * - `_releaseControl()`: Node's own TLS server calls it when a handshake
 *   completes (lib/_tls_wrap.js, onServerSocketSecure, Node 20 to 24): until
 *   then TLS errors are kept from the socket's 'error' event (the server
 *   reports them as 'tlsClientError'); after it, they reach whoever owns the
 *   connection (the HTTP server's error handler). Without it an error after
 *   the handshake would leave the socket open and unnoticed.
 * - the TLS handle's `setOCSPResponse(der)`: what Node's 'OCSPRequest' event
 *   does with the server's answer (requestOCSP). Set before the handshake
 *   starts, OpenSSL's status callback (TLSExtStatusCallback, Node's
 *   src/crypto/crypto_tls.cc) staples it when the client asked (RFC 6066 §8).
 *   A bare TLSSocket has no server to emit 'OCSPRequest' on, and going
 *   through that event would cost a pause of the handshake and a trip
 *   through JavaScript for every connection.
 * - the TLS handle's `oncertcb` (lib/_tls_wrap.js, loadSNI, Node 20 to 24):
 *   OpenSSL's certificate callback, which asks the SNI callback only when
 *   the ClientHello names a server. Wrapped for a hello only OpenSSL could
 *   read (listener.ts), so one without SNI gets the default certificate too.
 *
 * test/proxy-ocsp.test.ts and test/proxy-tls.test.ts pin both on the Node in use.
 */
import type net from 'node:net';
import tls from 'node:tls';

interface CertificateRequest {
  readonly servername?: string;
}

interface Internals {
  readonly _handle?: {
    setOCSPResponse?: (der: Buffer) => void;
    oncertcb?: (this: unknown, info: CertificateRequest) => void;
    sni_context?: unknown;
  } | null;
  _releaseControl?: () => boolean;
  secureConnecting?: boolean;
}

/** Throws when this Node lacks one of them. */
export function checkTlsInternals(): void {
  const probe = new tls.TLSSocket(null as unknown as net.Socket, { isServer: true, secureContext: tls.createSecureContext({}) }) as tls.TLSSocket & Internals;
  const staples = typeof probe._handle?.setOCSPResponse === 'function';
  const releases = typeof probe._releaseControl === 'function';
  const certificateCallback = typeof probe._handle?.oncertcb === 'function';
  probe.destroy();
  const missing = !staples ? 'setOCSPResponse' : !releases ? '_releaseControl' : !certificateCallback ? 'oncertcb' : undefined;
  if (missing !== undefined) throw new Error(`Node ${process.version} lacks ${missing} on its TLS sockets: the TLS listener cannot run on it`);
}

/** Hands TLS errors to the socket's own 'error' listeners from now on, as Node's TLS server does once a handshake completes. */
export function releaseControl(socket: tls.TLSSocket): void {
  const internal = socket as tls.TLSSocket & Internals;
  internal._releaseControl?.();
  internal.secureConnecting = false;
}

/** Staples `der` (a DER OCSPResponse) to the handshake about to start on `socket`. */
export function stapleOnSocket(socket: tls.TLSSocket, der: Buffer): void {
  (socket as tls.TLSSocket & Internals)._handle?.setOCSPResponse?.(der);
}

/**
 * Gives a handshake whose ClientHello names no server the context `choose`
 * returns (none: it stays on the one it started with), where Node's
 * certificate callback would skip the SNI callback. Needs the certificate
 * callback enabled, as an SNICallback option does.
 */
export function onNamelessHello(socket: tls.TLSSocket, choose: () => tls.SecureContext | undefined): void {
  const handle = (socket as tls.TLSSocket & Internals)._handle;
  const loadSNI = handle?.oncertcb;
  if (handle === null || handle === undefined || loadSNI === undefined) return;
  handle.oncertcb = function (this: unknown, info: CertificateRequest): void {
    if (!info.servername) {
      const context = choose();
      // As loadSNI sets a context: the native one inside tls.SecureContext.
      if (context !== undefined) handle.sni_context = (context as tls.SecureContext & { context?: unknown }).context ?? context;
    }
    loadSNI.call(this, info);
  };
}

interface TcpUnderTls {
  readonly _handle?: { readonly _parent?: { getpeername?: (out: object) => number } } | null;
}

/**
 * Whether the TCP connection under `socket` is gone from the kernel (reset,
 * or closed both ways): getpeername(2) on it fails (ENOTCONN). The TCP handle
 * is the TLS handle's `_parent` (lib/_tls_wrap.js, _wrapHandle, Node 20 to
 * 24). For a socket Node would otherwise not hear from: an HTTP/2 session
 * stops reading its socket while one of its writes is pending
 * (http2/sessions.ts). False when this Node has no such handle: nothing is
 * known then, and nothing is cut.
 */
export function tcpConnectionGone(socket: tls.TLSSocket): boolean {
  const tcp = (socket as tls.TLSSocket & TcpUnderTls)._handle?._parent;
  if (typeof tcp?.getpeername !== 'function') return false;
  return tcp.getpeername({}) !== 0;
}
