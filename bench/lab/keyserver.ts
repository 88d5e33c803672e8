/**
 * What every bench lab stands on. `KeyserverLab`: a throwaway key server run as deployed (temp dir, embedded SoftHSM2
 * token, unix socket and mutual-TLS listener, keys by `keyedge key generate`). `LabPki`: the labs' openssl-made
 * certificates. `LabBase`: a temp dir under a KeyserverLab's with the registry of what was started in it. `cleanup()`
 * is synchronous (also from an 'exit' handler) and safe twice: SIGKILL to what still runs, then the temp dir removed.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { childEnv, jsonLine, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';

/** The compiled CLI launcher, relative to this module in dist/bench/lab/. */
export const KEYEDGE_CLI = fileURLToPath(new URL('../../keyedge.cjs', import.meta.url));

export type KeyType = 'ec-p256' | 'rsa-2048';

const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });

/** A throwaway CA in `dir` (0700) issuing `<name>.pem` and `<name>-chain.pem` (leaf + CA) for token keys and key files. */
export class LabPki {
  readonly caFile: string;
  readonly dir: string;

  constructor(dir: string, commonName: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.dir = dir;
    this.caFile = join(dir, 'ca.pem');
    const ca = `-x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout ${join(dir, 'ca.key')} -out ${this.caFile}`;
    const extensions = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'];
    openssl('req', ...ca.split(' '), ...extensions, '-subj', `/CN=${commonName}`);
  }

  /** `<name>.pem` and `<name>-chain.pem` from `<name>.csr`, the CSR's subjectAltName copied; `usage`: its extendedKeyUsage. */
  #issue(name: string, usage = 'serverAuth'): void {
    const f = (x: string) => join(this.dir, x);
    writeFileSync(f(`${usage}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${usage}\n`);
    const args = `x509 -req -CAcreateserial -days 2 -copy_extensions copy -in ${f(`${name}.csr`)} -CA ${this.caFile} -CAkey ${f('ca.key')}`;
    openssl(...args.split(' '), '-extfile', f(`${usage}.ext`), '-out', f(`${name}.pem`));
    writeFileSync(f(`${name}-chain.pem`), readFileSync(f(`${name}.pem`), 'utf8') + readFileSync(this.caFile, 'utf8'));
  }

  /** From a CSR signed inside the token (`keyedge key csr`, as config/setup.sh). */
  async tokenCert(keyserverLab: KeyserverLab, label: string, serverName: string, name: string): Promise<void> {
    await keyserverLab.key('csr', '--key', label, '--domain', serverName, '--out', join(this.dir, `${name}.csr`));
    this.#issue(name);
  }

  /** A key file `<name>.key` and its certificate for CN `subject`, subjectAltName `san` ('' for none). */
  fileCert(type: KeyType, subject: string, name: string, san = `DNS:${subject}`, usage = 'serverAuth'): void {
    const key = join(this.dir, `${name}.key`);
    const algorithm = type === 'ec-p256' ? '-algorithm EC -pkeyopt ec_paramgen_curve:P-256' : '-algorithm RSA -pkeyopt rsa_keygen_bits:2048';
    openssl('genpkey', ...algorithm.split(' '), '-out', key);
    const sanArgs = san === '' ? [] : ['-addext', `subjectAltName=${san}`];
    openssl('req', '-new', '-key', key, '-subj', `/CN=${subject}`, ...sanArgs, '-out', join(this.dir, `${name}.csr`));
    this.#issue(name, usage);
  }
}

/** The key server's mutual-TLS files: its server certificate covers `serverName` and IP 127.0.0.1; the config's `clients` rule matches `clientCommonName`. */
type TlsFiles = Record<'ca' | 'serverCert' | 'serverKey' | 'clientCert' | 'clientKey' | 'serverName' | 'clientCommonName', string>;
export type KeyserverProcess = ManagedProcess & { readonly unixPath: string; readonly tcpPort: number };

export class KeyserverLab {
  readonly dir: string;
  readonly stateDir: string;
  readonly configPath: string;
  readonly tls: TlsFiles;
  readonly tokenLabel: string;
  readonly config: Record<string, unknown>;
  #server: ManagedProcess | undefined;
  #cleaned = false;

  /** `sessions`: pkcs11.sessions (absent: the product default); `prefix`: of the temp dir's name. */
  constructor(options: { readonly sessions?: number; readonly tokenLabel?: string; readonly prefix?: string } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), options.prefix ?? 'keyedge-bench-'));
    try {
      this.stateDir = join(this.dir, 'state');
      this.tokenLabel = options.tokenLabel ?? 'keyedge-bench';
      const pki = new LabPki(join(this.dir, 'pki'), 'keyedge bench CA');
      const [serverName, clientCommonName] = ['localhost', 'keyedge-bench-client'];
      pki.fileCert('ec-p256', serverName, 'server', `DNS:${serverName},IP:127.0.0.1`);
      pki.fileCert('ec-p256', clientCommonName, 'client', '', 'clientAuth');
      const f = (name: string) => join(pki.dir, name);
      const files = { serverCert: f('server.pem'), serverKey: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key') };
      this.tls = { serverName, clientCommonName, ca: pki.caFile, ...files };
      this.configPath = join(this.dir, 'keyserver.json');
      this.config = {
        stateDir: this.stateDir,
        pkcs11: { module: 'embedded', token: { label: this.tokenLabel }, ...(options.sessions === undefined ? {} : { sessions: options.sessions }) },
        listen: {
          unix: { path: 'keyserver.sock', mode: '0600', keys: '*' },
          // Port 0: the kernel picks; the "key server ready" line says which.
          tcp: { host: '127.0.0.1', port: 0, cert: this.tls.serverCert, key: this.tls.serverKey, clientCa: this.tls.ca },
        },
        clients: [{ name: 'bench', match: { commonName: clientCommonName }, keys: '*' }],
        limits: { shutdownGraceMs: 2000 },
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

  async generateKey(type: string, label: string): Promise<string> {
    const stdout = await this.key('generate', '--type', type, '--label', label);
    const keyId = /key id: ([0-9a-f]{64})/.exec(stdout)?.[1];
    if (keyId === undefined) throw new Error(`keyedge key generate printed no key id:\n${stdout}`);
    return keyId;
  }

  /** `keyedge keyserver`, ready; not detached: an autogroup of its own would get another share of the CPU. */
  async startServer(options: { readonly nodeArgs?: readonly string[] } = {}): Promise<KeyserverProcess> {
    const logFile = join(this.dir, 'keyserver.log');
    const command = [process.execPath, ...(options.nodeArgs ?? []), KEYEDGE_CLI, 'keyserver', '--config', this.configPath];
    const proc = spawnManaged('key server', command, logFile, undefined, process.cwd(), {}, false);
    this.#server = proc;
    let ready: { unix?: string; tcp?: number } | undefined;
    try {
      await waitFor('key server', () => (ready = jsonLine(logFile, 'key server ready')) !== undefined, 30_000, proc, 50);
    } catch (err) {
      await proc.stop(500);
      throw err;
    }
    return { ...proc, unixPath: ready?.unix ?? '', tcpPort: ready?.tcp ?? 0 };
  }

  /** SIGTERM: a --cpu-prof profile gets written. */
  async stop(): Promise<void> {
    await this.#server?.stop();
  }

  cleanup(keepTemp = false): void {
    if (this.#cleaned) return;
    this.#cleaned = true;
    this.#server?.kill();
    if (!keepTemp) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A connected socket (Nagle off, as the product's client) once `event` fired. */
function connected<S extends net.Socket>(socket: S, event: string): Promise<S> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.once(event, () => {
      socket.off('error', reject);
      resolve(socket.setNoDelay(true));
    });
  });
}

export const connectUnix = (path: string): Promise<net.Socket> => connected(net.connect(path), 'connect');

/** A mutual-TLS 1.3 connection to the key server with the lab's client certificate. */
export async function connectTls(port: number, files: TlsFiles): Promise<tls.TLSSocket> {
  const [ca, cert, key] = [files.ca, files.clientCert, files.clientKey].map((file) => readFileSync(file));
  const socket = await connected(tls.connect({ host: '127.0.0.1', port, servername: files.serverName, ca, cert, key, minVersion: 'TLSv1.3' }), 'secureConnect');
  if (socket.getProtocol() === 'TLSv1.3') return socket;
  socket.destroy();
  throw new Error(`expected TLSv1.3, negotiated ${socket.getProtocol() ?? 'nothing'}`);
}

export abstract class LabBase<Id extends string = string> {
  readonly dir: string;
  keyserver: KeyserverProcess | undefined;
  origin: ManagedProcess | undefined;
  readonly servers = new Map<Id, ManagedProcess>();

  /** `graceMs`: the servers' SIGTERM to SIGKILL. */
  protected constructor(
    readonly keyserverLab: KeyserverLab,
    subdir: string,
    readonly graceMs = 15_000,
  ) {
    this.dir = join(keyserverLab.dir, subdir);
  }

  /** `keyedge demo-origin` (1 KiB page) on `port`, in this lab's dir; resolves once it accepts connections. */
  protected async startDemoOrigin(port: number, cpus: string | undefined): Promise<ManagedProcess> {
    this.origin = spawnManaged('origin', [process.execPath, KEYEDGE_CLI, 'demo-origin', '--port', String(port)], join(this.dir, 'origin.log'), cpus, this.dir);
    await waitFor('demo origin', () => tcpOpen(port), 15_000, this.origin);
    return this.origin;
  }

  /** What a lab starts besides the registry (nginx). */
  protected async stopOthers(): Promise<void> {}
  protected killOthers(): void {}

  /** Graceful stop of everything started: servers, then the key server, then the origin. */
  async stop(): Promise<void> {
    await Promise.all([...[...this.servers.values()].map((p) => p.stop(this.graceMs)), this.stopOthers()]);
    await this.keyserver?.stop();
    await this.origin?.stop();
  }

  /** The end of a bench's run: graceful stop, then cleanup (the temp dir kept, and said so, with `keepTemp`). */
  async close(keepTemp: boolean, log: (line: string) => void): Promise<void> {
    await this.stop().catch(() => undefined);
    if (keepTemp) log(`kept ${this.dir}`);
    this.cleanup(keepTemp);
  }

  /** Kills are idempotent and the key server lab's cleanup runs once: safe twice. */
  cleanup(keepTemp = false): void {
    for (const p of [...this.servers.values(), this.origin]) p?.kill();
    this.killOthers();
    this.keyserverLab.cleanup(keepTemp);
  }
}

/** One HTTPS GET through a server, checking the certificate against the lab CA and the answer (200, 1 KiB). */
export function probe(port: number, serverName: string, caPem: string): Promise<{ status: number; bytes: number; protocol: string | null }> {
  return new Promise((resolve, reject) => {
    const options = { host: '127.0.0.1', port, path: '/', servername: serverName, headers: { host: serverName }, ca: caPem, agent: false, timeout: 5000 };
    const req = https.request({ ...options, minVersion: 'TLSv1.3' }, (res) => {
      // Read while the socket is open (node must not touch a closed TLS socket's state).
      const protocol = (res.socket as tls.TLSSocket).getProtocol();
      let bytes = 0;
      res.on('data', (chunk: Buffer) => (bytes += chunk.length));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, protocol }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', reject);
    req.end();
  });
}
