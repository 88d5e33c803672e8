/**
 * A throwaway key server for the benches, run as deployed: a temp dir with an embedded SoftHSM2 token, a config with a
 * unix socket and a mutual-TLS listener (a private CA with server and client certificates), keys made by `keyedge key
 * generate`, and `node dist/keyedge.cjs keyserver` as a child process with the ManagedProcess interface of the servers
 * under test. `cleanup()` is synchronous (also from an 'exit' handler): SIGKILL to a server still running, then the
 * temp dir removed.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { childEnv, jsonLine, type ManagedProcess, spawnManaged, waitFor } from '../harness/spawn.js';
import { LabPki } from './pki.js';

/** The compiled CLI launcher, relative to this module in dist/bench/lab/. */
export const KEYEDGE_CLI = fileURLToPath(new URL('../../keyedge.cjs', import.meta.url));

export interface LabOptions {
  /** pkcs11.sessions; absent: the product default. */
  readonly sessions?: number;
  readonly tokenLabel?: string;
  readonly maxInFlightPerConnection?: number;
  /** Prefix of the temp dir's name. */
  readonly prefix?: string;
}

export interface TlsFiles {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** The server certificate's name (it also covers IP 127.0.0.1). */
  readonly serverName: string;
  /** The client certificate's CN, which the config's `clients` rule matches. */
  readonly clientCommonName: string;
}

export interface KeyserverProcess extends ManagedProcess {
  readonly unixPath: string;
  readonly tcpPort: number;
  /** The last lines the server logged, for error messages. */
  output(): string;
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
      const { sessions, maxInFlightPerConnection } = options;
      this.config = {
        stateDir: this.stateDir,
        pkcs11: { module: 'embedded', token: { label: this.tokenLabel }, ...(sessions === undefined ? {} : { sessions }) },
        listen: {
          unix: { path: 'keyserver.sock', mode: '0600', keys: '*' },
          // Port 0: the kernel picks; the "key server ready" line says which.
          tcp: { host: '127.0.0.1', port: 0, cert: this.tls.serverCert, key: this.tls.serverKey, clientCa: this.tls.ca },
        },
        clients: [{ name: 'bench', match: { commonName: this.tls.clientCommonName }, keys: '*' }],
        limits: { shutdownGraceMs: 2000, ...(maxInFlightPerConnection === undefined ? {} : { maxInFlightPerConnection }) },
        admin: null,
        // info logs the ready line and nothing per request; the key-usage line is pushed out of any run.
        log: { level: 'info', keyUsageIntervalSeconds: 86_400 },
      };
      writeFileSync(this.configPath, `${JSON.stringify(this.config, null, 2)}\n`, { mode: 0o600 });
    } catch (err) {
      rmSync(this.dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** `keyedge key ARGS --config <this lab's config>` (generate, csr); resolves with what it printed. */
  async key(...args: string[]): Promise<string> {
    const argv = [KEYEDGE_CLI, 'key', ...args, '--config', this.configPath];
    return (await promisify(execFile)(process.execPath, argv, { env: childEnv(), timeout: 120_000 })).stdout;
  }

  /** `keyedge key generate --type TYPE --label LABEL`; resolves with the key id. */
  async generateKey(type: string, label: string): Promise<string> {
    const stdout = await this.key('generate', '--type', type, '--label', label);
    const keyId = /key id: ([0-9a-f]{64})/.exec(stdout)?.[1];
    if (keyId === undefined) throw new Error(`keyedge key generate printed no key id:\n${stdout}`);
    return keyId;
  }

  /**
   * Starts `keyedge keyserver` (with `nodeArgs` before the script, e.g.
   * --cpu-prof); resolves on its "key server ready" line. Unlike the servers under test (harness/spawn.ts) it stays in the bench's session and process
   *   group, as it always ran here: detaching it would also move it into an autogroup of its own and change its share of a loaded machine's CPU.
   */
  async startServer(options: { readonly nodeArgs?: readonly string[]; readonly timeoutMs?: number } = {}): Promise<KeyserverProcess> {
    if (this.#server !== undefined) throw new Error('the lab key server is already running');
    const logFile = join(this.dir, 'keyserver.log');
    const command = [process.execPath, ...(options.nodeArgs ?? []), KEYEDGE_CLI, 'keyserver', '--config', this.configPath];
    const proc = spawnManaged('key server', command, logFile, undefined, process.cwd(), {}, false);
    const stop = async (graceMs = 5000) => {
      await proc.stop(graceMs);
      if (this.#server === server) this.#server = undefined;
    };
    const server: KeyserverProcess = { ...proc, stop, unixPath: '', tcpPort: 0, output: () => proc.tail(50) };
    this.#server = server;
    let ready: { unix?: string; tcp?: number } | undefined;
    const readyLine = () => (ready = jsonLine(logFile, 'key server ready')) !== undefined;
    try {
      await waitFor('key server', readyLine, options.timeoutMs ?? 30_000, proc, 50);
    } catch (err) {
      await stop(500);
      throw err;
    }
    Object.assign(server, { unixPath: ready?.unix ?? '', tcpPort: ready?.tcp ?? 0 });
    return server;
  }

  /** Graceful stop of the server (SIGTERM: a --cpu-prof profile gets written). */
  async stop(): Promise<void> {
    await this.#server?.stop();
  }

  /** SIGKILL to a server still running, then the temp dir removed (unless `keepTemp`). Synchronous; safe twice. */
  cleanup(keepTemp = false): void {
    if (this.#cleaned) return;
    this.#cleaned = true;
    this.#server?.kill();
    if (!keepTemp) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A private CA (P-256), a server certificate for localhost and 127.0.0.1, and a client certificate (lab/pki.ts). */
export function makeCertificates(dir: string): TlsFiles {
  const pki = new LabPki(dir, 'keyedge bench CA');
  const files = { serverName: 'localhost', clientCommonName: 'keyedge-bench-client' };
  pki.fileCert('ec-p256', files.serverName, 'server', `DNS:${files.serverName},IP:127.0.0.1`);
  pki.fileCert('ec-p256', files.clientCommonName, 'client', '', 'clientAuth');
  const f = (name: string) => join(dir, name);
  return { ...files, ca: pki.caFile, serverCert: f('server.pem'), serverKey: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key') };
}

/** A connected unix-socket stream to the key server (Nagle off, as the product's client). */
export function connectUnix(path: string): Promise<net.Socket> {
  return connected(net.connect(path), 'connect');
}

/** A mutual-TLS 1.3 connection to the key server with the lab's client certificate. */
export async function connectTls(port: number, files: TlsFiles, host = '127.0.0.1'): Promise<tls.TLSSocket> {
  const [ca, cert, key] = [files.ca, files.clientCert, files.clientKey].map((file) => readFileSync(file));
  const socket = await connected(tls.connect({ host, port, servername: files.serverName, ca, cert, key, minVersion: 'TLSv1.3' }), 'secureConnect');
  if (socket.getProtocol() === 'TLSv1.3') return socket;
  socket.destroy();
  throw new Error(`expected TLSv1.3, negotiated ${socket.getProtocol() ?? 'nothing'}`);
}

function connected<S extends net.Socket>(socket: S, event: string): Promise<S> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.once(event, () => {
      socket.off('error', reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}
