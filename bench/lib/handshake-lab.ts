/**
 * The set-up of bench/handshake.ts, in one temporary directory:
 *   - a key server (bench/lib/keyserver-lab.ts: embedded SoftHSM2 token, unix
 *     socket) with an admin port for its sign counters, and an ECDSA P-256 and
 *     an RSA-2048 key made in the token with `keyedge key generate`;
 *   - a throwaway CA (openssl) issuing, for each token key, a certificate from
 *     a CSR signed inside the token (`keyedge key csr`, as config/setup.sh's
 *     make_demo_certificate), and for the in-memory server the same names on
 *     ordinary key files (`openssl genpkey`);
 *   - the demo origin (`keyedge demo-origin`, 1 KiB page);
 *   - the keyless proxy exactly as deployed (`keyedge proxy --config`), and
 *     the in-memory comparison server (bench/lib/handshake-inmemory.ts), both
 *     with the same worker count, certificates by SNI, one listener each.
 *
 * Every server is its own process group (spawned detached), so a synchronous
 * `cleanup()` (also from an 'exit' handler) can SIGKILL a cluster primary and
 * its workers together. Logs go to files in the temp dir, which `cleanup()`
 * removes.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import type { InMemoryConfig } from './handshake-inmemory.js';
import { childEnv, KEYEDGE_CLI, KeyserverLab, type KeyserverProcess } from './keyserver-lab.js';
import { setAffinity } from './handshake-procs.js';

const execFileAsync = promisify(execFile);

export const INMEMORY_SCRIPT = fileURLToPath(new URL('./handshake-inmemory.js', import.meta.url));

export interface HandshakeKey {
  readonly id: 'ec' | 'rsa';
  readonly title: string;
  /** `keyedge key generate --type` */
  readonly type: 'ec-p256' | 'rsa-2048';
  /** SNI name and Host header; the certificates of both servers cover it. */
  readonly serverName: string;
}

export const HANDSHAKE_KEYS: readonly HandshakeKey[] = [
  { id: 'ec', title: 'ECDSA P-256', type: 'ec-p256', serverName: 'ec.bench.localhost' },
  { id: 'rsa', title: 'RSA-2048', type: 'rsa-2048', serverName: 'rsa.bench.localhost' },
];

export interface HandshakeLabOptions {
  readonly workers: number;
  readonly logLevel: string;
  readonly profile: TlsProfileName;
  /** taskset CPU list for every server process (proxy, key server, in-memory, origin); undefined: no pinning. */
  readonly serverCpus: string | undefined;
  /** taskset CPU list for the key server alone; undefined: as serverCpus. */
  readonly keyserverCpus?: string | undefined;
  /** Extra node options for the proxy and the in-memory server (both pass them on to their workers), e.g. --perf-basic-prof. */
  readonly nodeArgs?: readonly string[];
  readonly keys: readonly HandshakeKey[];
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logFile: string;
  readonly command: readonly string[];
  exited(): boolean;
  /** SIGTERM to the process (graceful: a cluster primary stops its workers), SIGKILL to its group after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL to the whole process group, synchronously. */
  kill(): void;
  tail(lines?: number): string;
}

/** Binds 127.0.0.1:port (0: the kernel picks) and releases it; resolves with the port, or undefined when taken. */
async function tryPort(port: number): Promise<number | undefined> {
  const server = net.createServer();
  const bound = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
  if (!bound) return undefined;
  const chosen = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return chosen;
}

/**
 * A free port below the kernel's ephemeral range: the servers bind it a few seconds later, and a port from the
 * ephemeral range (what listen(0) hands out) can be taken meanwhile by any outgoing connection (ab opens thousands).
 */
export async function freePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: use the default range start
  }
  const from = 20_000;
  if (low - from > 1000) {
    for (let i = 0; i < 50; i++) {
      const port = await tryPort(from + Math.floor(Math.random() * (low - from)));
      if (port !== undefined) return port;
    }
  }
  const port = await tryPort(0);
  if (port === undefined) throw new Error('no free port');
  return port;
}

/** Starts `command` detached (its own process group) with output to `logFile`, in `cwd` (files a runtime drops, e.g. V8 logs, land there). */
export function spawnManaged(name: string, command: readonly string[], logFile: string, cpus: string | undefined, cwd: string): ManagedProcess {
  const full = cpus === undefined ? [...command] : ['taskset', '-c', cpus, ...command];
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    // detached: its own process group, so the group can be killed at once (cluster workers included).
    child = spawn(full[0]!, full.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: childEnv(), cwd });
  } finally {
    closeSync(fd);
  }
  const pid = child.pid ?? -1;
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));
  child.once('error', () => undefined);
  const kill = () => {
    if (pid <= 0) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone already
    }
  };
  return {
    name,
    pid,
    child,
    logFile,
    command: full,
    exited: () => exited,
    async stop(graceMs = 5000) {
      if (exited) return kill(); // the primary is gone; workers may linger
      child.kill('SIGTERM');
      const timer = setTimeout(kill, graceMs);
      await exit;
      clearTimeout(timer);
      kill();
    },
    kill,
    tail(lines = 20) {
      try {
        return readFileSync(logFile, 'utf8').split('\n').slice(-lines - 1).join('\n');
      } catch {
        return '';
      }
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, process?: ManagedProcess): Promise<void> {
  const started = Date.now();
  for (;;) {
    if (await check()) return;
    if (process?.exited()) throw new Error(`${what}: the process exited\n--- ${process.logFile} ---\n${process.tail()}`);
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not ready within ${timeoutMs} ms${process ? `\n--- ${process.logFile} ---\n${process.tail()}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function httpGet(url: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: response.status, body: await response.text() };
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

/** One HTTPS GET through a server, checking the certificate against the lab CA and the answer (200, 1 KiB). */
export function probe(port: number, serverName: string, caPem: string): Promise<{ status: number; bytes: number; protocol: string | null }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path: '/', servername: serverName, headers: { host: serverName }, ca: caPem, agent: false, minVersion: 'TLSv1.3', timeout: 5000 },
      (res) => {
        // Read while the socket is open (node must not touch a closed TLS socket's state).
        const protocol = (res.socket as import('node:tls').TLSSocket).getProtocol();
        let bytes = 0;
        res.on('data', (chunk: Buffer) => (bytes += chunk.length));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, protocol }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', reject);
    req.end();
  });
}

export class HandshakeLab {
  readonly keyserverLab: KeyserverLab;
  readonly dir: string;
  readonly options: HandshakeLabOptions;
  readonly keyIds = new Map<string, string>();
  readonly caFile: string;
  readonly ports: { origin: number; proxy: number; proxyAdmin: number; inMemory: number; inMemoryAdmin: number; keyserverAdmin: number };
  readonly proxyConfigPath: string;
  readonly inMemoryConfigPath: string;
  readonly proxyConfig: Record<string, unknown>;
  readonly inMemoryConfig: InMemoryConfig;
  keyserver: KeyserverProcess | undefined;
  origin: ManagedProcess | undefined;
  proxy: ManagedProcess | undefined;
  inMemory: ManagedProcess | undefined;
  #cleaned = false;

  private constructor(keyserverLab: KeyserverLab, options: HandshakeLabOptions, ports: HandshakeLab['ports'], configs: { proxy: Record<string, unknown>; inMemory: InMemoryConfig }) {
    this.keyserverLab = keyserverLab;
    this.options = options;
    this.dir = join(keyserverLab.dir, 'handshake');
    this.caFile = join(this.dir, 'ca.pem');
    this.ports = ports;
    this.proxyConfig = configs.proxy;
    this.inMemoryConfig = configs.inMemory;
    this.proxyConfigPath = join(this.dir, 'proxy.json');
    this.inMemoryConfigPath = join(this.dir, 'inmemory.json');
  }

  /** Makes the temp dir, keys, certificates and configs (nothing is started yet). */
  static async create(options: HandshakeLabOptions, log: (line: string) => void): Promise<HandshakeLab> {
    const keyserverLab = new KeyserverLab({ prefix: 'keyedge-handshake-', tokenLabel: 'keyedge-handshake' });
    try {
      const dir = join(keyserverLab.dir, 'handshake');
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const ports = {
        origin: await freePort(),
        proxy: await freePort(),
        proxyAdmin: await freePort(),
        inMemory: await freePort(),
        inMemoryAdmin: await freePort(),
        keyserverAdmin: await freePort(),
      };
      // The key server's sign counter is read from its admin port.
      writeFileSync(keyserverLab.configPath, `${JSON.stringify({ ...keyserverLab.config, admin: { host: '127.0.0.1', port: ports.keyserverAdmin } }, null, 2)}\n`, { mode: 0o600 });

      const f = (name: string) => join(dir, name);
      const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
      openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=keyedge handshake bench CA',
        '-keyout', f('ca.key'), '-out', f('ca.pem'), '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
      writeFileSync(f('leaf.ext'), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
      const issue = (csr: string, out: string) => {
        openssl('x509', '-req', '-in', csr, '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-copy_extensions', 'copy', '-extfile', f('leaf.ext'), '-out', out);
        writeFileSync(`${out.replace(/\.pem$/, '')}-chain.pem`, readFileSync(out, 'utf8') + readFileSync(f('ca.pem'), 'utf8'));
      };

      const keyIds = new Map<string, string>();
      for (const key of options.keys) {
        // Keyless: the key is made in the token, the CSR signed there.
        const label = `bench-${key.type}`;
        keyIds.set(key.id, await keyserverLab.generateKey(key.type, label));
        await execFileAsync(process.execPath, [KEYEDGE_CLI, 'key', 'csr', '--config', keyserverLab.configPath, '--key', label, '--domain', key.serverName, '--out', f(`keyless-${key.id}.csr`)], {
          env: childEnv(),
          timeout: 60_000,
        });
        issue(f(`keyless-${key.id}.csr`), f(`keyless-${key.id}.pem`));
        // In memory: an ordinary key file, the same names, the same CA.
        const genpkey = key.id === 'ec' ? ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'] : ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'];
        openssl('genpkey', ...genpkey, '-out', f(`inmemory-${key.id}.key`));
        openssl('req', '-new', '-key', f(`inmemory-${key.id}.key`), '-subj', `/CN=${key.serverName}`, '-addext', `subjectAltName=DNS:${key.serverName}`, '-out', f(`inmemory-${key.id}.csr`));
        issue(f(`inmemory-${key.id}.csr`), f(`inmemory-${key.id}.pem`));
        log(`${key.title}: token key ${keyIds.get(key.id)!.slice(0, 16)}… (keyedge key generate + key csr), in-memory key file (openssl genpkey); certificates for ${key.serverName}`);
      }

      const origin = `http://127.0.0.1:${ports.origin}`;
      const domains = [{ name: '*.bench.localhost', origin }];
      const proxy = {
        stateDir: keyserverLab.stateDir,
        workers: options.workers,
        keyserver: { socket: join(keyserverLab.stateDir, 'keyserver.sock') },
        listen: [{ host: '127.0.0.1', port: ports.proxy, profile: options.profile }],
        certificates: options.keys.map((k) => ({ name: k.id, chain: f(`keyless-${k.id}-chain.pem`) })),
        sni: { default: null, onUnknown: 'reject' },
        domains,
        admin: { host: '127.0.0.1', port: ports.proxyAdmin },
        log: { level: options.logLevel },
      };
      const inMemory: InMemoryConfig = {
        host: '127.0.0.1',
        port: ports.inMemory,
        workers: options.workers,
        profile: options.profile,
        certificates: options.keys.map((k) => ({ name: k.id, chain: f(`inmemory-${k.id}-chain.pem`), key: f(`inmemory-${k.id}.key`) })),
        domains,
        admin: { host: '127.0.0.1', port: ports.inMemoryAdmin },
        logLevel: options.logLevel,
        // The product's defaults (config/proxy-schema.ts PROXY_DEFAULTS).
        hstsMaxAgeSeconds: 63_072_000,
        ocspStapling: true,
        shutdownGraceMs: 10_000,
      };
      const lab = new HandshakeLab(keyserverLab, options, ports, { proxy, inMemory });
      for (const [k, v] of keyIds) lab.keyIds.set(k, v);
      writeFileSync(lab.proxyConfigPath, `${JSON.stringify(proxy, null, 2)}\n`);
      writeFileSync(lab.inMemoryConfigPath, `${JSON.stringify(inMemory, null, 2)}\n`);
      return lab;
    } catch (err) {
      keyserverLab.cleanup();
      throw err;
    }
  }

  /** Starts the origin, the key server, the keyless proxy and the in-memory server; checks one request through each server and key. */
  async start(log: (line: string) => void): Promise<void> {
    const cpus = this.options.serverCpus;
    const node = process.execPath;
    this.origin = spawnManaged('origin', [node, KEYEDGE_CLI, 'demo-origin', '--port', String(this.ports.origin)], join(this.dir, 'origin.log'), cpus, this.dir);
    await waitFor('demo origin', () => tcpOpen(this.ports.origin), 15_000, this.origin);

    // The key server runs without nodeArgs: KeyserverLab starts it in this process's working directory, where
    // --perf-basic-prof would leave V8 log files.
    this.keyserver = await this.keyserverLab.startServer();
    const keyserverCpus = this.options.keyserverCpus ?? cpus;
    if (keyserverCpus !== undefined) setAffinity(this.keyserver.pid, keyserverCpus);
    await waitFor('key server admin', async () => (await httpGet(`http://127.0.0.1:${this.ports.keyserverAdmin}/metrics`).catch(() => ({ status: 0 }))).status === 200, 15_000);

    const nodeArgs = this.options.nodeArgs ?? [];
    this.proxy = spawnManaged('proxy', [node, ...nodeArgs, KEYEDGE_CLI, 'proxy', '--config', this.proxyConfigPath], join(this.dir, 'proxy.log'), cpus, this.dir);
    await waitFor(
      'keyless proxy (/readyz)',
      async () => (await httpGet(`http://127.0.0.1:${this.ports.proxyAdmin}/readyz`).catch(() => ({ status: 0 }))).status === 200,
      30_000,
      this.proxy,
    );

    this.inMemory = spawnManaged('inmemory', [node, ...nodeArgs, INMEMORY_SCRIPT, '--config', this.inMemoryConfigPath], join(this.dir, 'inmemory.log'), cpus, this.dir);
    const inMemoryLog = this.inMemory.logFile;
    await waitFor('in-memory server', () => existsSync(inMemoryLog) && readFileSync(inMemoryLog, 'utf8').includes('"in-memory ready"'), 30_000, this.inMemory);

    const ca = readFileSync(this.caFile, 'utf8');
    for (const key of this.options.keys) {
      for (const [name, port] of [['keyless proxy', this.ports.proxy], ['in-memory server', this.ports.inMemory]] as const) {
        const r = await probe(port, key.serverName, ca);
        if (r.status !== 200 || r.bytes !== 1024 || r.protocol !== 'TLSv1.3') {
          throw new Error(`${name} ${key.serverName}: expected 200 with 1024 bytes over TLSv1.3, got ${r.status}, ${r.bytes} bytes, ${r.protocol}`);
        }
      }
    }
    log(
      `origin pid ${this.origin.pid} :${this.ports.origin}; key server pid ${this.keyserver.pid}; keyless proxy pid ${this.proxy.pid} :${this.ports.proxy}; ` +
        `in-memory pid ${this.inMemory.pid} :${this.ports.inMemory}; ${this.options.workers} workers each${cpus === undefined ? '' : `; servers on CPU ${cpus}`}` +
        `${this.options.keyserverCpus === undefined ? '' : `, key server on CPU ${this.options.keyserverCpus}`}`,
    );
  }

  /** Graceful stop of everything started (reverse order). */
  async stop(): Promise<void> {
    await Promise.all([this.inMemory?.stop(15_000), this.proxy?.stop(15_000)]);
    await this.keyserver?.stop();
    await this.origin?.stop();
  }

  /** SIGKILL to everything still running, remove the temp dir. Synchronous; safe twice. */
  cleanup(keepTemp = false): void {
    if (this.#cleaned) return;
    this.#cleaned = true;
    for (const p of [this.inMemory, this.proxy, this.origin]) p?.kill();
    if (keepTemp) {
      try {
        this.keyserver?.child.kill('SIGKILL');
      } catch {
        // gone
      }
      return;
    }
    this.keyserverLab.cleanup();
  }
}
