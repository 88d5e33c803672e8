/**
 * A throwaway key server set-up for benchmarks: a temporary directory with an
 * embedded SoftHSM2 token, a config with a unix socket and a mutual-TLS
 * listener, a private CA with server and client certificates, keys generated
 * through the `keyedge` CLI, and the key server itself as a child process
 * (`node dist/keyedge.cjs keyserver --config ...`), the way it
 * runs in production: its own process, its launcher sizing libuv's pool.
 *
 * Everything lives under one temp directory; `cleanup()` (synchronous, so it
 * also works from an 'exit' handler) kills a server still running and removes
 * the directory.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import tls from 'node:tls';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** The compiled CLI launcher, relative to this module in dist/bench/lab/. */
export const KEYEDGE_CLI = fileURLToPath(new URL('../../keyedge.cjs', import.meta.url));

export interface LabOptions {
  /** pkcs11.sessions of the key server; undefined leaves the product default (max(2, cores)). */
  readonly sessions?: number;
  /** Token label of the embedded SoftHSM2 token. */
  readonly tokenLabel?: string;
  /** limits.maxInFlightPerConnection; undefined leaves the default (256). */
  readonly maxInFlightPerConnection?: number;
  /** Prefix of the temp directory name. */
  readonly prefix?: string;
}

export interface TlsFiles {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** The name in the server certificate (also has IP 127.0.0.1). */
  readonly serverName: string;
  /** The client certificate's CN, which the config's `clients` rule matches. */
  readonly clientCommonName: string;
}

export interface ServerStartOptions {
  /** Extra node options before the script, e.g. ['--cpu-prof', '--cpu-prof-dir', dir]. */
  readonly nodeArgs?: readonly string[];
  readonly timeoutMs?: number;
}

export interface KeyserverProcess {
  readonly pid: number;
  readonly unixPath: string;
  readonly tcpPort: number;
  readonly child: ChildProcess;
  /** Last lines the server wrote (stdout and stderr), for error messages. */
  output(): string;
  /** SIGTERM (graceful: a --cpu-prof profile gets written), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

export class KeyserverLab {
  readonly dir: string;
  readonly stateDir: string;
  readonly configPath: string;
  readonly tls: TlsFiles;
  readonly tokenLabel: string;
  readonly config: Record<string, unknown>;
  #server: KeyserverProcess | undefined;
  #cleaned = false;

  constructor(options: LabOptions = {}) {
    this.dir = mkdtempSync(join(tmpdir(), options.prefix ?? 'keyedge-bench-'));
    try {
      this.stateDir = join(this.dir, 'state');
      this.tokenLabel = options.tokenLabel ?? 'keyedge-bench';
      this.tls = makeCertificates(join(this.dir, 'pki'));
      this.configPath = join(this.dir, 'keyserver.json');
      this.config = {
        stateDir: this.stateDir,
        pkcs11: {
          module: 'embedded',
          token: { label: this.tokenLabel },
          ...(options.sessions !== undefined ? { sessions: options.sessions } : {}),
        },
        listen: {
          unix: { path: 'keyserver.sock', mode: '0600', keys: '*' },
          // Port 0: the kernel picks; the server's "ready" log line says which.
          tcp: { host: '127.0.0.1', port: 0, cert: this.tls.serverCert, key: this.tls.serverKey, clientCa: this.tls.ca },
        },
        clients: [{ name: 'bench', match: { commonName: this.tls.clientCommonName }, keys: '*' }],
        limits: {
          shutdownGraceMs: 2000,
          ...(options.maxInFlightPerConnection !== undefined ? { maxInFlightPerConnection: options.maxInFlightPerConnection } : {}),
        },
        admin: null,
        // info: the "key server ready" line carries the TCP port. No per-request
        // line is logged at info; the usage line is pushed out of the run.
        log: { level: 'info', keyUsageIntervalSeconds: 86_400 },
      };
      writeFileSync(this.configPath, `${JSON.stringify(this.config, null, 2)}\n`, { mode: 0o600 });
    } catch (err) {
      rmSync(this.dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** `keyedge key generate --type TYPE --label LABEL --config ...` in a child process; returns the key id. */
  async generateKey(type: string, label: string): Promise<string> {
    const { stdout } = await execFileAsync(process.execPath, [KEYEDGE_CLI, 'key', 'generate', '--config', this.configPath, '--type', type, '--label', label], {
      env: childEnv(),
      timeout: 120_000,
    });
    const keyId = /key id: ([0-9a-f]{64})/.exec(stdout)?.[1];
    if (keyId === undefined) throw new Error(`keyedge key generate printed no key id:\n${stdout}`);
    return keyId;
  }

  /** Starts `keyedge keyserver --config ...` and resolves once it logged "key server ready". */
  startServer(options: ServerStartOptions = {}): Promise<KeyserverProcess> {
    if (this.#server !== undefined) return Promise.reject(new Error('the lab key server is already running'));
    const child = spawn(process.execPath, [...(options.nodeArgs ?? []), KEYEDGE_CLI, 'keyserver', '--config', this.configPath], {
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    const keep = (line: string) => {
      lines.push(line);
      if (lines.length > 50) lines.shift();
    };
    let exited = false;
    const exitPromise = new Promise<void>((resolve) =>
      child.once('exit', () => {
        exited = true;
        resolve();
      }),
    );
    const server: KeyserverProcess = {
      pid: child.pid ?? -1,
      unixPath: '',
      tcpPort: 0,
      child,
      output: () => lines.join('\n'),
      stop: async (graceMs = 5000) => {
        if (!exited) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
          await exitPromise;
          clearTimeout(timer);
        }
        if (this.#server === server) this.#server = undefined;
      },
    };
    this.#server = server;
    return new Promise<KeyserverProcess>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`the key server was not ready within ${options.timeoutMs ?? 30_000} ms`)), options.timeoutMs ?? 30_000);
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        void server.stop(500).then(() => reject(new Error(`${err.message}\n--- key server output ---\n${server.output()}`)));
      };
      let pending = '';
      child.stdout!.setEncoding('utf8').on('data', (text: string) => {
        pending += text;
        let nl: number;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          keep(line);
          let entry: { msg?: string; unix?: string; tcp?: number };
          try {
            entry = JSON.parse(line) as typeof entry;
          } catch {
            continue;
          }
          if (entry.msg === 'key server ready' && !settled) {
            settled = true;
            clearTimeout(timer);
            resolve({ ...server, unixPath: entry.unix ?? '', tcpPort: entry.tcp ?? 0 });
          }
        }
      });
      child.stderr!.setEncoding('utf8').on('data', (text: string) => text.split('\n').filter(Boolean).forEach(keep));
      child.once('error', fail);
      child.once('exit', (code, signal) => fail(new Error(`the key server exited during start-up (${signal ?? `status ${code}`})`)));
    });
  }

  /** Kills a server still running (SIGKILL) and removes the temp directory. Synchronous; safe to call twice. */
  cleanup(): void {
    if (this.#cleaned) return;
    this.#cleaned = true;
    const server = this.#server;
    if (server !== undefined && server.child.exitCode === null && server.child.signalCode === null) {
      try {
        server.child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * The environment for keyedge children: the embedded token sets SOFTHSM2_CONF
 * itself and the bench's own Node options must not reach the servers it measures.
 */
export function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.SOFTHSM2_CONF;
  delete env.NODE_OPTIONS;
  return env;
}

/** A private CA (P-256), a server certificate for localhost/127.0.0.1 and a client certificate, via the openssl CLI. */
export function makeCertificates(dir: string): TlsFiles {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const f = (name: string) => join(dir, name);
  const openssl = (args: string, ...more: string[]) =>
    execFileSync('openssl', [...args.split(' '), ...more], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
  const ecKey = '-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes';
  const leaf = 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=';
  openssl(
    `req -x509 ${ecKey} -keyout ${f('ca.key')} -out ${f('ca.pem')} -days 2 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign`,
    '-subj',
    '/CN=keyedge bench CA',
  );
  const serverName = 'localhost';
  const clientCommonName = 'keyedge-bench-client';
  const issue = (name: string, subject: string, ext: string) => {
    writeFileSync(f(`${name}.ext`), ext);
    openssl(`req ${ecKey} -keyout ${f(`${name}.key`)} -out ${f(`${name}.csr`)} -subj ${subject}`);
    openssl(
      `x509 -req -in ${f(`${name}.csr`)} -CA ${f('ca.pem')} -CAkey ${f('ca.key')} -CAcreateserial -out ${f(`${name}.pem`)} -days 2 -extfile ${f(`${name}.ext`)}`,
    );
  };
  issue('server', `/CN=${serverName}`, `${leaf}serverAuth\nsubjectAltName=DNS:${serverName},IP:127.0.0.1\n`);
  issue('client', `/CN=${clientCommonName}`, `${leaf}clientAuth\n`);
  return {
    ca: f('ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
    serverName,
    clientCommonName,
  };
}

/** A connected unix-socket stream to the key server (Nagle off, as the product's client does). */
export function connectUnix(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

/** A mutual-TLS 1.3 connection to the key server with the lab's client certificate. */
export function connectTls(port: number, files: TlsFiles, host = '127.0.0.1'): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      servername: files.serverName,
      ca: readFileSync(files.ca),
      cert: readFileSync(files.clientCert),
      key: readFileSync(files.clientKey),
      minVersion: 'TLSv1.3',
    });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      socket.setNoDelay(true);
      if (socket.getProtocol() !== 'TLSv1.3') {
        socket.destroy();
        reject(new Error(`expected TLSv1.3, negotiated ${socket.getProtocol() ?? 'nothing'}`));
        return;
      }
      resolve(socket);
    });
  });
}
