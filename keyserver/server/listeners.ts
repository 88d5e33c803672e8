/**
 * The two transports, both carrying the same frames (SPEC.md, "Transports").
 *
 * Unix socket: created with the configured mode (0600 by default) so only the
 * key server's own user, the proxy's deployment user, can connect; bound with
 * that mode, not chmodded after, so it is never open to others meanwhile. A stale
 * socket file left by a crash is removed; one with a live key server behind it
 * is an error, never silently stolen.
 *
 * TCP: TLS 1.3 only, no session resumption (each connection's certificate is
 * verified), client certificate requested (RFC 8446 §4.3.2) and
 * verified against the configured client CA; the daemon closes a connection
 * whose certificate is missing or from another CA before reading a frame. A
 * handshake not finished within `handshakeTimeoutMs` is dropped (Node's
 * default of 120 s would let stalled handshakes hold sockets for minutes).
 */
import { constants } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { readSettingFile } from '../../config/setting-file.js';
import { ConfigError, KeyedgeError } from '../shared/errors.js';

export async function listenUnix(path: string, mode: number, onConnection: (socket: net.Socket) => void): Promise<net.Server> {
  await removeStaleSocket(path);
  const server = net.createServer({ noDelay: true }, onConnection);
  // Bound with its mode already (bind is synchronous for a path, and the umask is restored right after): bound with the
  // process's umask and chmodded once listening, it was 0777 meanwhile under umask 0, and a connection made then, by any
  // user the directory lets through, stayed open after the chmod. The chmod stays for a mode the umask cannot express.
  const umask = process.umask(0o777 & ~mode);
  let listening: Promise<void>;
  try {
    listening = listen(server, () => server.listen(path), `unix socket ${path}`);
  } finally {
    process.umask(umask);
  }
  await listening;
  chmodSync(path, mode);
  return server;
}

export interface TlsListenOptions {
  readonly host: string;
  readonly port: number;
  readonly cert: string;
  readonly key: string;
  readonly clientCa: string;
  readonly handshakeTimeoutMs: number;
  readonly source: string;
}

export async function listenTls(
  options: TlsListenOptions,
  onConnection: (socket: tls.TLSSocket) => void,
  onClientError: (err: Error, socket: tls.TLSSocket) => void,
): Promise<tls.Server> {
  const server = tls.createServer(
    {
      cert: readPem(options.cert, 'listen.tcp.cert', options.source),
      key: readPem(options.key, 'listen.tcp.key', options.source),
      ca: readPem(options.clientCa, 'listen.tcp.clientCa', options.source),
      requestCert: true,
      // The daemon checks `authorized` on each connection and logs the reason:
      // with rejectUnauthorized the client is dropped with no word of why.
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      // No resumption: each proxy worker keeps one long-lived connection, so it would save nothing, tickets would be one
      // more secret to manage, and a resumed handshake authenticates by the ticket's key alone, with no Certificate
      // (RFC 8446 §2.2): the client certificate is not verified again, so one that expired kept signing by ticket.
      // SSL_OP_NO_TICKET, and Node keeps no session cache to resume from instead. Not `sessionTimeout: 0`, as this had:
      // OpenSSL reads 0 as its default, 7200 s.
      secureOptions: constants.SSL_OP_NO_TICKET,
      noDelay: true,
      handshakeTimeout: options.handshakeTimeoutMs,
    },
    onConnection,
  );
  server.on('tlsClientError', onClientError);
  await listen(server, () => server.listen(options.port, options.host), `tcp ${options.host}:${options.port}`);
  return server;
}

/** Far past a certificate, a key or a CA bundle. */
const MAX_PEM_BYTES = 1024 * 1024;

function readPem(path: string, key: string, source: string): Buffer {
  try {
    // At start: still not a FIFO's open(2) waiting for a writer (config/setting-file.ts).
    return readSettingFile(path, MAX_PEM_BYTES);
  } catch (err) {
    throw new ConfigError(source, key, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

function listen(server: net.Server, start: () => void, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void =>
      reject(new KeyedgeError('KEYEDGE_ERR_SETUP', `cannot listen on ${what}: ${err.code ?? err.message}`, { cause: err }));
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
    start();
  });
}

async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) {
    throw new KeyedgeError('KEYEDGE_ERR_SETUP', `${path} exists and is not a socket; refusing to replace it`);
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new KeyedgeError('KEYEDGE_ERR_SETUP', `another process is already listening on ${path}`);
  unlinkSync(path);
}
