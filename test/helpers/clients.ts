/**
 * Real TLS clients for proxy tests: curl, openssl s_client and node:tls, each
 * run asynchronously (the proxy under test may share this process's event
 * loop, so nothing here may block it).
 */
import { execFile } from 'node:child_process';
import tls from 'node:tls';

export interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function run(command: string, args: readonly string[], input = '', timeoutMs = 15_000): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1;
      resolve({ code, stdout, stderr });
    });
    // A command that exits without reading its input (openssl with a file argument) closes the pipe: EPIPE on this
    // write is not the command's result, which the callback above reports, and an unheard 'error' would be uncaught.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input);
  });
}

/**
 * curl over HTTP/1.1 unless `extra` asks for `--http2` (a later flag wins):
 * the tests using it pin HTTP/1.1 behaviour (Expect, framing, status lines),
 * and the proxy offers h2 first in ALPN.
 */
export function curl(port: number, host: string, caFile: string, extra: readonly string[] = [], path = '/'): Promise<Run> {
  return run('curl', [
    '-sS',
    '--http1.1',
    '--max-time',
    '10',
    '-D',
    '-',
    '--cacert',
    caFile,
    '--resolve',
    `${host}:${port}:127.0.0.1`,
    ...extra,
    `https://${host}:${port}${path}`,
  ]);
}

/** openssl s_client sending one GET; `args` adds version, sigalgs, cipher flags. */
export function sClient(
  port: number,
  servername: string | undefined,
  caFile: string,
  args: readonly string[] = [],
  host = servername ?? 'lab.test',
): Promise<Run> {
  const request = `GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
  return run(
    'openssl',
    [
      's_client',
      '-connect',
      `127.0.0.1:${port}`,
      ...(servername === undefined ? ['-noservername'] : ['-servername', servername]),
      '-CAfile',
      caFile,
      '-verify_return_error',
      '-ign_eof',
      ...args,
    ],
    request,
  );
}

export interface NodeHandshake {
  readonly ok: boolean;
  readonly error?: string;
  readonly protocol?: string | null;
  readonly resumed?: boolean;
  readonly session?: Buffer;
  readonly subjectAltName?: string;
  /** The served leaf's serial, upper-case hex as node:tls reports it. */
  readonly serial?: string;
  readonly body?: string;
}

/** A node:tls client doing one GET; resolves with what happened, never rejects. */
export function nodeGet(port: number, servername: string | undefined, ca: string, options: tls.ConnectionOptions = {}): Promise<NodeHandshake> {
  return new Promise((resolve) => {
    let session: Buffer | undefined;
    let body = '';
    let protocol: string | null = null;
    let subjectAltName: string | undefined;
    let serial: string | undefined;
    // Read while the connection is up: node crashes on isSessionReused() after close.
    let resumed = false;
    const socket = tls.connect({ host: '127.0.0.1', port, ca, ...(servername === undefined ? {} : { servername }), ...options });
    socket.setTimeout(10_000, () => socket.destroy(new Error('timeout')));
    socket.on('session', (s: Buffer) => (session = s));
    socket.once('secureConnect', () => {
      protocol = socket.getProtocol();
      resumed = socket.isSessionReused();
      const peer = socket.getPeerCertificate();
      subjectAltName = peer.subjectaltname;
      serial = peer.serialNumber;
      socket.write(`GET / HTTP/1.1\r\nHost: ${servername ?? 'lab.test'}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (chunk: Buffer) => (body += chunk.toString()));
    socket.once('error', (err) => resolve({ ok: false, error: err.message }));
    socket.once('close', () => {
      if (!socket.authorized && socket.authorizationError !== null) return;
      resolve({
        ok: body.startsWith('HTTP/1.1'),
        protocol,
        resumed,
        ...(session === undefined ? {} : { session }),
        subjectAltName,
        ...(serial === undefined ? {} : { serial }),
        body,
      });
    });
  });
}
