/**
 * For tests of the keyless bridge (proxy/native): a real key server in a
 * child process, certificates for its keys, TLS clients (node:tls and
 * `openssl s_client`) and fake key servers that misbehave.
 *
 * The key server must be another process: the bridge signs synchronously on
 * the main thread, so a key server on the same event loop could never answer.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type net from 'node:net';
import tls from 'node:tls';
import { KeyserverClient } from '../../keyserver/client/client.js';
import * as x509 from '../../keyserver/shared/x509.js';
import { CLI, REPO } from './basics.js';
import type { TestCa } from './pki.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export interface KeyserverProcess {
  readonly child: ChildProcess;
  readonly unixPath: string | undefined;
  readonly tcpPort: number | undefined;
  readonly adminPort: number;
  /** stdout + stderr so far (pino JSON lines). */
  output(): string;
  /** SIGTERM, and wait for the exit. */
  stop(): Promise<void>;
}

/** `keyedge keyserver --config FILE` in a child process, resolved once it logs "key server ready". */
export function startKeyserverProcess(configFile: string, timeoutMs = 20_000): Promise<KeyserverProcess> {
  const child = spawn(process.execPath, [CLI, 'keyserver', '--config', configFile], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the key server did not start within ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = (chunk: Buffer): void => {
      out += chunk.toString('utf8');
      for (const line of out.split('\n')) {
        if (!line.includes('"key server ready"')) continue;
        const ready = JSON.parse(line) as { unix?: string; tcp?: number; admin?: { port: number } };
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        child.stdout?.on('data', (more: Buffer) => void (out += more.toString('utf8')));
        resolve({
          child,
          unixPath: ready.unix,
          tcpPort: ready.tcp,
          adminPort: ready.admin!.port,
          output: () => out,
          stop: async () => {
            if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
            await exited;
          },
        });
        return;
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => void (out += chunk.toString('utf8')));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the key server exited (${code ?? signal}) during start-up:\n${out}`));
    });
  });
}

/** The public key (SPKI DER) the key server holds under `keyId`. */
export async function fetchSpki(unixPath: string, keyId: string): Promise<Buffer> {
  const client = await KeyserverClient.connect({ unixPath, timeoutMs: 5000 });
  try {
    return await client.getPublicKey(keyId);
  } finally {
    client.close();
  }
}

/**
 * Sum of `keyedge_keyserver_requests_total{op="sign",result="ok"}` on the
 * admin port, optionally for one algorithm (protocol name, e.g. RSA_PSS_SHA256).
 */
export async function signCount(adminPort: number, algorithm?: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
  const text = await res.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^keyedge_keyserver_requests_total\{(.*)\} (\S+)$/.exec(line);
    if (m === null) continue;
    const labels = m[1]!;
    if (!labels.includes('op="sign"') || !labels.includes('result="ok"')) continue;
    if (algorithm !== undefined && !labels.includes(`algorithm="${algorithm}"`)) continue;
    sum += Number(m[2]);
  }
  return sum;
}

/** A TLS server certificate (CN and SAN localhost, IP 127.0.0.1) for a public key given as SPKI DER, signed by `ca`. */
export async function issueForSpki(ca: TestCa, spki: Buffer, kind: 'ec' | 'rsa'): Promise<string> {
  const algorithm = kind === 'ec' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  const publicKey = await webcrypto.subtle.importKey('spki', spki, algorithm, true, ['verify']);
  const serial = Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)));
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject: 'CN=localhost',
    issuer: ca.cert.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    publicKey: publicKey as unknown as CryptoKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
      ]),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    ],
  });
  return cert.toString('pem');
}

export interface SClientResult {
  readonly code: number | null;
  readonly output: string;
  /** "TLSv1.3" / "TLSv1.2" when the handshake completed. */
  readonly protocol: string | undefined;
  /** s_client's "Peer signature type" (ECDSA, RSA-PSS, RSA) and "Peer signing digest" (SHA256, ...). */
  readonly signatureType: string | undefined;
  readonly signingDigest: string | undefined;
  /** e.g. "internal error", "handshake failure", when the server sent an alert. */
  readonly alert: string | undefined;
}

/** One full handshake with `openssl s_client`, verifying against `caFile`. */
export function sClient(port: number, caFile: string, args: readonly string[]): Promise<SClientResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'openssl',
      ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-CAfile', caFile, '-verify_return_error', ...args],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let output = '';
    child.stdout.on('data', (d: Buffer) => void (output += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => void (output += d.toString('utf8')));
    child.on('error', reject);
    child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const pick = (re: RegExp): string | undefined => re.exec(output)?.[1];
      const completed = /^New, (TLSv1\.[23]), Cipher is (?!\(NONE\))/m.exec(output);
      resolve({
        code,
        output,
        protocol: completed?.[1],
        signatureType: pick(/^Peer signature type: (\S+)/m),
        signingDigest: pick(/^Peer signing digest: (\S+)/m),
        alert: pick(/alert ([a-z ]+?)(?::|\n|$)/m),
      });
    });
  });
}

export interface HandshakeResult {
  readonly ok: boolean;
  readonly protocol?: string;
  readonly error?: NodeJS.ErrnoException;
}

/** One full handshake with node:tls (no session reuse). */
export function tlsHandshake(port: number, ca: string, options: tls.ConnectionOptions = {}): Promise<HandshakeResult> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca, ...options }, () => {
      const protocol = socket.getProtocol() ?? undefined;
      socket.end();
      resolve({ ok: true, protocol });
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve({ ok: false, error }));
  });
}

/**
 * A TLS server on 127.0.0.1 that completes handshakes and waits for the client
 * to close (so TLS 1.3 session tickets reach it); rejected handshakes are recorded.
 */
export async function startTlsServer(options: tls.TlsOptions): Promise<{ server: tls.Server; port: number; clientErrors: Error[]; close(): Promise<void> }> {
  const clientErrors: Error[] = [];
  const server = tls.createServer(options, (socket) => {
    socket.on('error', () => undefined);
    socket.resume();
  });
  server.on('tlsClientError', (err) => clientErrors.push(err));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as net.AddressInfo;
  return {
    server,
    port: address.port,
    clientErrors,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** How a fake key server answers each SIGN request (in turn, cycling). */
export type FakeAnswer =
  | 'never' // accepts, reads, never answers
  | 'wrong-id' // a SIGNATURE for another request id
  | 'critical-item' // a SIGNATURE plus an unknown critical item
  | 'not-der' // a SIGNATURE that is no DER ECDSA-Sig-Value
  | 'overrun' // an item longer than the body
  | 'error-optional' // ERROR OVERLOADED ("busy") with an unknown optional item first
  | 'sign-failed' // ERROR SIGN_FAILED (the token failed this key's sign)
  // With `upstream` (a real key server's socket), the request is relayed there and its answer is:
  | 'relay' // passed on as it is
  | 'twice' // passed on twice
  | 'then-close' // passed on, then the connection closed (as a key server at its connection cap closes an idle one)
  | 'late' // passed on 1.5 s later
  | 'slow' // passed on 600 ms later (a slow HSM or network, answering within a generous deadline)
  | 'trickle' // passed on a byte at a time, 2 ms apart
  | 'cut' // cut after 20 bytes, then the connection closed
  | 'huge' // replaced by a header declaring a 4 GiB body, then the first bytes of one, connection kept open
  | 'split-late'; // its header at once, its body 1.5 s later

// Runs in a child process: the bridge blocks this process while it waits for
// an answer, so a fake key server here could never send one.
const FAKE_SERVER = `
const net = require('node:net');
const fs = require('node:fs');
const [path, upstream, ...answers] = process.argv.slice(1);
const item = (tag, value, declared = value.length) => Buffer.concat([Buffer.from([tag, declared >> 8, declared & 255]), value]);
const frame = (opcode, id, body) => {
  const h = Buffer.alloc(12);
  h[0] = 1; h[1] = opcode; h.writeUInt32BE(id >>> 0, 4); h.writeUInt32BE(body.length, 8);
  return Buffer.concat([h, body]);
};
const replies = {
  'never': () => undefined,
  'wrong-id': (id) => frame(0x83, id + 1, item(5, Buffer.alloc(70, 1))),
  'critical-item': (id) => frame(0x83, id, Buffer.concat([item(5, Buffer.alloc(70, 1)), item(0x7f, Buffer.alloc(1))])),
  'not-der': (id) => frame(0x83, id, item(5, Buffer.alloc(70, 1))),
  'overrun': (id) => frame(0x83, id, item(5, Buffer.alloc(10, 1), 20)),
  'error-optional': (id) => frame(0xff, id, Buffer.concat([item(0xf0, Buffer.from('later')), item(7, Buffer.from([0, 11])), item(0x80, Buffer.from('busy'))])),
  'sign-failed': (id) => frame(0xff, id, item(7, Buffer.from([0, 10]))),
};
const frames = (onFrame) => {
  let buf = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 12 && buf.length >= 12 + buf.readUInt32BE(8)) {
      const f = buf.subarray(0, 12 + buf.readUInt32BE(8));
      buf = buf.subarray(f.length);
      onFrame(f);
    }
  };
};
const relayed = {
  'relay': (socket, a) => socket.write(a),
  'twice': (socket, a) => { socket.write(a); socket.write(a); },
  'then-close': (socket, a) => socket.write(a, () => socket.destroy()),
  'late': (socket, a) => setTimeout(() => socket.write(a), 1500),
  'slow': (socket, a) => setTimeout(() => { if (!socket.destroyed) socket.write(a); }, 600),
  'trickle': (socket, a) => { let i = 0; const t = setInterval(() => { if (i < a.length && !socket.destroyed) socket.write(a.subarray(i, ++i)); else clearInterval(t); }, 2); },
  'cut': (socket, a) => { socket.write(a.subarray(0, 20)); setTimeout(() => socket.destroy(), 20); },
  'huge': (socket, a) => { const h = Buffer.from(a.subarray(0, 12)); h.writeUInt32BE(0xffffffff, 8); socket.write(Buffer.concat([h, a.subarray(12)])); },
  'split-late': (socket, a) => { socket.write(a.subarray(0, 12)); setTimeout(() => socket.write(a.subarray(12)), 1500); },
};
let n = 0;
try { fs.rmSync(path, { force: true }); } catch {}
net.createServer((socket) => {
  process.stdout.write('connection\\n');
  socket.on('error', () => {});
  const queue = [];
  let up;
  if (upstream !== '-') {
    up = net.connect(upstream);
    up.on('error', () => socket.destroy());
    up.on('data', frames((a) => { const how = queue.shift(); if (!socket.destroyed) relayed[how](socket, a); }));
    socket.on('close', () => up.destroy());
  }
  socket.on('data', frames((req) => {
    const how = answers[n++ % answers.length];
    if (how in relayed) {
      queue.push(how);
      up.write(req);
      return;
    }
    const reply = replies[how](req.readUInt32BE(4));
    if (reply) socket.write(reply);
  }));
}).listen(path, () => process.stdout.write('ready\\n'));
`;

export interface FakeKeyserver {
  /** Connections accepted so far. */
  readonly connections: number;
  stop(): Promise<void>;
}

/** A misbehaving key server on a unix socket, in a child process; `upstream`: the real key server it relays to. */
export function startFakeKeyserver(path: string, answers: readonly FakeAnswer[], upstream = '-'): Promise<FakeKeyserver> {
  const child = spawn(process.execPath, ['-e', FAKE_SERVER, path, upstream, ...answers], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let out = '';
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      if (out.startsWith('ready\n')) {
        resolve({
          get connections() {
            return out.split('\n').filter((line) => line === 'connection').length;
          },
          stop: async () => {
            child.kill('SIGKILL');
            await exited;
            rmSync(path, { force: true });
          },
        });
      }
    });
    child.once('exit', (code) => reject(new Error(`the fake key server exited (${code})`)));
  });
}

// A TCP peer that answers whatever it is sent with an HTTP error and keeps the connection open: what a
// key server's TLS endpoint looks like when it points at a web server, or anything else that is not TLS.
const NOT_TLS_SERVER = `
const net = require('node:net');
net.createServer((socket) => {
  socket.on('error', () => {});
  socket.once('data', () => socket.write('HTTP/1.1 400 Bad Request\\r\\nContent-Length: 0\\r\\n\\r\\n'));
}).listen(0, '127.0.0.1', function () { process.stdout.write(this.address().port + '\\n'); });
`;

/** A TCP server that does not speak TLS, in a child process (the bridge blocks this one while it connects). */
export function startNotTlsServer(): Promise<{ port: number; stop(): Promise<void> }> {
  const child = spawn(process.execPath, ['-e', NOT_TLS_SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    child.stdout.once('data', (chunk: Buffer) =>
      resolve({
        port: Number(chunk.toString('utf8').trim()),
        stop: async () => {
          child.kill('SIGKILL');
          await exited;
        },
      }),
    );
    child.once('exit', (code) => reject(new Error(`the TCP server exited (${code})`)));
  });
}

// getaddrinfo() answering ::1 then 127.0.0.1 for the name in DUAL_STACK_NAME, as a dual-stack /etc/hosts
// ("::1 localhost" listed with "127.0.0.1 localhost") does, for a child process run with it in LD_PRELOAD:
// /etc/hosts is not ours to edit. Both lists come from the real getaddrinfo (glibc's freeaddrinfo frees node by
// node, so the chained list is freed whole).
const DUAL_STACK_RESOLVER = `
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) = dlsym(RTLD_NEXT, "getaddrinfo");
    const char *name = getenv("DUAL_STACK_NAME");
    struct addrinfo *v6 = NULL, *v4 = NULL, *p;
    int rc;

    if (node == NULL || name == NULL || strcmp(node, name) != 0)
        return real(node, service, hints, res);
    if ((rc = real("::1", service, hints, &v6)) != 0)
        return rc;
    if ((rc = real("127.0.0.1", service, hints, &v4)) != 0) {
        freeaddrinfo(v6);
        return rc;
    }
    for (p = v6; p->ai_next != NULL; p = p->ai_next)
        ;
    p->ai_next = v4;
    *res = v6;
    return 0;
}
`;

/** Builds the dual-stack resolver shim in `dir` with the system C compiler: its path, or undefined without one. */
export function buildDualStackResolver(dir: string): string | undefined {
  const source = join(dir, 'dual-stack-resolver.c');
  const out = join(dir, 'dual-stack-resolver.so');
  writeFileSync(source, DUAL_STACK_RESOLVER);
  const cc = spawnSync('cc', ['-shared', '-fPIC', '-o', out, source, '-ldl'], { encoding: 'utf8', timeout: 30_000 });
  return cc.status === 0 ? out : undefined;
}
