/**
 * The handshake bench's set-ups in one temp dir (bench/README.md, "Set-ups"):
 * the key server with an ECDSA and an RSA key in its token, certificates from a
 * throwaway CA for the token keys and for the same names on key files, the demo
 * origin, the keyless proxies, the in-memory proxy, the node:https floor and the
 * nginx variants (lab/nginx.ts). Every server is its own process group, so
 * `cleanup()` can kill a cluster at once, also from an 'exit' handler.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import type { InMemoryConfig } from './inmemory.js';
import { embeddedTokenPaths, findSoftHsmModule } from '../../keyserver/token/embedded.js';
import { ensureNginxTools, NginxLab, type NginxTools, type NginxVariant, variantSkipReason } from '../lab/nginx.js';
import { setAffinity } from '../harness/procs.js';
import { freePort, httpGet, jsonLine, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { LabBase, probe } from '../lab/base.js';
import { LabPki } from '../lab/pki.js';
import { KEYEDGE_CLI, KeyserverLab } from '../lab/keyserver.js';
import { OWN_MAJOR } from '../harness/node-versions.js';
import type { FloorConfig } from './floor.js';

export const INMEMORY_SCRIPT = fileURLToPath(new URL('./inmemory.js', import.meta.url));
export const FLOOR_SCRIPT = fileURLToPath(new URL('./floor.js', import.meta.url));

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

/**
 * The servers a scenario can measure:
 *   keyless-unix   `keyedge proxy` + key server over its unix socket
 *   keyless-tcp    `keyedge proxy` + key server over mutual TLS on 127.0.0.1
 *   inmemory       the real proxy cluster with PEM key files behind its KeySource (inmemory.ts)
 *   node-floor     a bare node:https server answering a fixed 1 KiB page (floor.ts): Node's own cost
 *   nginx-file     nginx, PEM key files
 *   nginx-engine   nginx, libp11 engine on the SoftHSM2 token
 *   nginx-p11kit   nginx, libp11 engine on p11-kit-client.so → `p11-kit server` → the token
 * The Node set-ups also run under other Node majors (--node): `keyless-unix-node22` is the keyless proxy
 * under Node 22 (its key server stays on this node), and so on.
 */
export type BaseSetup = 'keyless-unix' | 'keyless-tcp' | 'inmemory' | 'node-floor' | 'nginx-file' | 'nginx-engine' | 'nginx-p11kit';
export type NodeSetup = 'keyless-unix' | 'inmemory' | 'node-floor';
export type SetupId = BaseSetup | `${NodeSetup}-node${number}`;

export const SETUP_IDS: readonly BaseSetup[] = ['keyless-unix', 'keyless-tcp', 'inmemory', 'node-floor', 'nginx-file', 'nginx-engine', 'nginx-p11kit'];
export const NODE_SETUPS: readonly NodeSetup[] = ['keyless-unix', 'inmemory', 'node-floor'];

export const NGINX_SETUP: Readonly<Partial<Record<SetupId, NginxVariant>>> = { 'nginx-file': 'file', 'nginx-engine': 'engine', 'nginx-p11kit': 'p11kit' };

export const baseSetup = (setup: SetupId): BaseSetup => setup.replace(/-node\d+$/, '') as BaseSetup;
/** The Node major a set-up runs under; undefined: this process's node (or not Node). */
export const nodeMajorOf = (setup: SetupId): number | undefined => (/-node(\d+)$/.exec(setup) === null ? undefined : Number(/-node(\d+)$/.exec(setup)![1]));
export const isNginx = (setup: SetupId): boolean => NGINX_SETUP[setup] !== undefined;
export const isKeyless = (setup: SetupId): boolean => baseSetup(setup) === 'keyless-unix' || setup === 'keyless-tcp';
/** `setup` under Node `major` (the plain id for this process's major). */
export const onNode = (setup: NodeSetup, major: number): SetupId => (major === OWN_MAJOR ? setup : `${setup}-node${major}`);

export interface HandshakeLabOptions {
  /** Servers to start; nginx ones that cannot run (packages missing) are left out and reported by `skipped`. */
  readonly setups: readonly SetupId[];
  /** Install nginx, libp11's engine and p11-kit with apt-get when missing (root only). */
  readonly installNginx: boolean;
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
  /** Node binary by major, for the versioned set-ups. */
  readonly nodeBinaries: ReadonlyMap<number, string>;
}

/** Admin/metrics port and TLS port of one server. */
export interface Endpoint {
  readonly port: number;
  /** Admin port (proxy, in-memory: /metrics) or stub_status port (nginx). */
  readonly admin: number;
}

export class HandshakeLab extends LabBase<SetupId> {
  readonly options: HandshakeLabOptions;
  readonly keyIds = new Map<string, string>();
  readonly caFile: string;
  readonly ports: { readonly origin: number; readonly keyserverAdmin: number; readonly endpoints: Readonly<Record<string, Endpoint>> };
  /** The config each Node server was started with, by set-up (for the result file). */
  readonly configs = new Map<SetupId, unknown>();
  /** nginx and friends, found or installed by create(); undefined: nginx missing. */
  readonly nginxTools: NginxTools | undefined;
  /** Setups asked for that cannot run, with the reason (start() adds Node servers that fail to start on another major). */
  readonly skipped: Map<SetupId, string>;
  nginx: NginxLab | undefined;

  private constructor(
    keyserverLab: KeyserverLab,
    options: HandshakeLabOptions,
    ports: HandshakeLab['ports'],
    nginxTools: NginxTools | undefined,
    skipped: Map<SetupId, string>,
  ) {
    super(keyserverLab, 'handshake');
    this.options = options;
    this.caFile = join(this.dir, 'ca.pem');
    this.ports = ports;
    this.nginxTools = nginxTools;
    this.skipped = skipped;
  }

  /** The setups that will run: asked for and not skipped. */
  get setups(): SetupId[] {
    return this.options.setups.filter((s) => !this.skipped.has(s));
  }

  has(setup: SetupId): boolean {
    return this.setups.includes(setup);
  }

  /** Makes the temp dir, keys, certificates and configs; finds (or installs) nginx when an nginx setup is asked for. Nothing is started yet. */
  static async create(options: HandshakeLabOptions, log: (line: string) => void): Promise<HandshakeLab> {
    const skipped = new Map<SetupId, string>();
    let nginxTools: NginxTools | undefined;
    const nginxSetups = options.setups.filter(isNginx);
    if (nginxSetups.length > 0) {
      nginxTools = ensureNginxTools(options.installNginx, log);
      for (const setup of nginxSetups) {
        const reason = variantSkipReason(nginxTools, NGINX_SETUP[setup]!);
        if (reason !== undefined) {
          skipped.set(setup, reason);
          log(`${setup}: skipped, ${reason}`);
        }
      }
    }
    const keyserverLab = new KeyserverLab({ prefix: 'keyedge-handshake-', tokenLabel: 'keyedge-handshake' });
    try {
      const dir = join(keyserverLab.dir, 'handshake');
      const endpoint = async (): Promise<Endpoint> => ({ port: await freePort(), admin: await freePort() });
      const endpoints: Record<string, Endpoint> = {};
      for (const setup of [...SETUP_IDS, ...options.setups]) endpoints[setup] ??= await endpoint();
      const ports = { origin: await freePort(), keyserverAdmin: await freePort(), endpoints };
      // The key server's sign counter is read from its admin port.
      writeFileSync(
        keyserverLab.configPath,
        `${JSON.stringify({ ...keyserverLab.config, admin: { host: '127.0.0.1', port: ports.keyserverAdmin } }, null, 2)}\n`,
        { mode: 0o600 },
      );

      const pki = new LabPki(dir, 'keyedge handshake bench CA');
      const keyIds = new Map<string, string>();
      for (const key of options.keys) {
        // Keyless (and nginx on the token): the key is made in the token, the CSR signed there. In memory, the floor
        // and nginx with a key file: an ordinary key file, the same names, the same CA.
        keyIds.set(key.id, await keyserverLab.generateKey(key.type, tokenKeyLabel(key)));
        await pki.tokenCert(keyserverLab, tokenKeyLabel(key), key.serverName, `keyless-${key.id}`);
        pki.fileCert(key.type, key.serverName, `inmemory-${key.id}`);
        log(`${key.title}: token key ${keyIds.get(key.id)!.slice(0, 16)}… (keyedge key generate + key csr), key file; certificates for ${key.serverName}`);
      }
      const lab = new HandshakeLab(keyserverLab, options, ports, nginxTools, skipped);
      for (const [k, v] of keyIds) lab.keyIds.set(k, v);
      return lab;
    } catch (err) {
      keyserverLab.cleanup();
      throw err;
    }
  }

  /** The config of a Node server set-up (keyless proxies, in-memory, floor), written beside the others. */
  #config(setup: SetupId): { file: string; config: unknown } {
    const { options, dir } = this;
    const f = (name: string) => join(dir, name);
    const endpoint = this.ports.endpoints[setup]!;
    const domains = [{ name: '*.bench.localhost', origin: `http://127.0.0.1:${this.ports.origin}` }];
    let config: unknown;
    const base = baseSetup(setup);
    if (base === 'inmemory' || base === 'node-floor') {
      const certs = options.keys.map((k) => ({ name: k.id, serverName: k.serverName, chain: f(`inmemory-${k.id}-chain.pem`), key: f(`inmemory-${k.id}.key`) }));
      const o = { ...options, port: endpoint.port, admin: endpoint.admin, origin: `http://127.0.0.1:${this.ports.origin}`, domain: '*.bench.localhost' };
      config = fileKeyConfig(base, certs, o);
    } else {
      // The TCP proxy's key server port is known once it runs; it presents the lab's client certificate.
      const { tls } = this.keyserverLab;
      const tcp = { host: '127.0.0.1', port: this.keyserver?.tcpPort, ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: tls.serverName };
      config = {
        stateDir: this.keyserverLab.stateDir,
        workers: options.workers,
        keyserver: setup === 'keyless-tcp' ? { socket: null, tcp } : { socket: join(this.keyserverLab.stateDir, 'keyserver.sock') },
        listen: [{ host: '127.0.0.1', port: endpoint.port, profile: options.profile }],
        certificates: options.keys.map((k) => ({ name: k.id, chain: f(`keyless-${k.id}-chain.pem`) })),
        sni: { default: null, onUnknown: 'reject' },
        domains,
        admin: { host: '127.0.0.1', port: endpoint.admin },
        log: { level: options.logLevel },
      };
    }
    const file = f(`${setup}.json`);
    writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
    this.configs.set(setup, config);
    return { file, config };
  }

  /** Starts one Node server set-up and waits until it serves. */
  async #startNode(setup: SetupId): Promise<void> {
    const major = nodeMajorOf(setup);
    const node = major === undefined ? process.execPath : this.options.nodeBinaries.get(major)!;
    const { file } = this.#config(setup);
    const base = baseSetup(setup);
    const script =
      base === 'inmemory'
        ? [INMEMORY_SCRIPT, '--config', file]
        : base === 'node-floor'
          ? [FLOOR_SCRIPT, '--config', file]
          : [KEYEDGE_CLI, 'proxy', '--config', file];
    const proc = spawnManaged(setup, [node, ...(this.options.nodeArgs ?? []), ...script], join(this.dir, `${setup}.log`), this.options.serverCpus, this.dir);
    this.servers.set(setup, proc);
    const admin = this.ports.endpoints[setup]!.admin;
    const ready =
      base === 'inmemory'
        ? () => jsonLine(proc.logFile, 'in-memory ready') !== undefined
        : base === 'node-floor'
          ? () => tcpOpen(admin)
          : async () => (await httpGet(`http://127.0.0.1:${admin}/readyz`).catch(() => ({ status: 0 }))).status === 200;
    await waitFor(`${setup} (${node === process.execPath ? process.version : node})`, ready, 60_000, proc);
  }

  /** Starts the origin, the key server and the servers of the setups that run; checks one request through each server and key. */
  async start(log: (line: string) => void): Promise<void> {
    const cpus = this.options.serverCpus;
    // Independent servers start concurrently (start-up is most of a quick run); the proxies need the key server.
    const originReady = this.startDemoOrigin(this.ports.origin, cpus);
    const origin = this.origin!;
    const startKeyserver = async () => {
      // Without nodeArgs: KeyserverLab starts it in this process's working directory, where --perf-basic-prof would
      // leave V8 log files. Always on this node: pkcs11js is built for its ABI.
      this.keyserver = await this.keyserverLab.startServer();
      const keyserverCpus = this.options.keyserverCpus ?? cpus;
      if (keyserverCpus !== undefined) setAffinity(this.keyserver.pid, keyserverCpus);
      await waitFor(
        'key server admin',
        async () => (await httpGet(`http://127.0.0.1:${this.ports.keyserverAdmin}/metrics`).catch(() => ({ status: 0 }))).status === 200,
        15_000,
      );
    };
    const keyserverReady = this.setups.some(isKeyless) ? startKeyserver() : Promise.resolve();
    const starts: Promise<unknown>[] = [originReady, keyserverReady];
    for (const setup of this.setups.filter((s) => !isNginx(s))) {
      const started = (isKeyless(setup) ? keyserverReady : Promise.resolve()).then(() => this.#startNode(setup));
      // Under another Node major, a server that does not start is skipped with its log, not a failed run.
      starts.push(
        nodeMajorOf(setup) === undefined
          ? started
          : started.catch((err: unknown) => {
              this.servers.get(setup)?.kill();
              this.servers.delete(setup);
              const reason = `did not start under Node ${nodeMajorOf(setup)}: ${(err as Error).message.split('\n').slice(0, 3).join(' ')}`;
              this.skipped.set(setup, reason);
              log(`${setup}: skipped, ${reason}`);
            }),
      );
    }
    const variants = this.setups.flatMap((s) => (NGINX_SETUP[s] === undefined ? [] : [NGINX_SETUP[s]!]));
    if (variants.length > 0) {
      const tokenPaths = embeddedTokenPaths(this.keyserverLab.stateDir);
      const ports = {} as Record<NginxVariant, { port: number; statusPort: number }>;
      for (const [setup, variant] of Object.entries(NGINX_SETUP) as [SetupId, NginxVariant][]) {
        ports[variant] = { port: this.ports.endpoints[setup]!.port, statusPort: this.ports.endpoints[setup]!.admin };
      }
      this.nginx = new NginxLab({
        dir: this.dir,
        tools: this.nginxTools!,
        variants,
        keys: this.options.keys.map((key) => ({
          key,
          tokenChain: join(this.dir, `keyless-${key.id}-chain.pem`),
          tokenLabel: tokenKeyLabel(key),
          fileChain: join(this.dir, `inmemory-${key.id}-chain.pem`),
          fileKey: join(this.dir, `inmemory-${key.id}.key`),
        })),
        token: { softhsmConf: tokenPaths.confFile, softhsmModule: findSoftHsmModule(), tokenLabel: this.keyserverLab.tokenLabel, pinFile: tokenPaths.pinFile },
        originPort: this.ports.origin,
        ports,
        cpus,
        accessLog: this.options.logLevel !== 'warn' && this.options.logLevel !== 'error' && this.options.logLevel !== 'silent',
      });
      starts.push(this.nginx.start(log));
    }
    // Every start settles before an error is thrown, so stop() sees every process that was spawned.
    const settled = await Promise.allSettled(starts);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;

    const ca = readFileSync(this.caFile, 'utf8');
    for (const key of this.options.keys) {
      for (const setup of this.setups) {
        const r = await probe(this.ports.endpoints[setup]!.port, key.serverName, ca);
        if (r.status !== 200 || r.bytes !== 1024 || r.protocol !== 'TLSv1.3') {
          throw new Error(`${setup} ${key.serverName}: expected 200 with 1024 bytes over TLSv1.3, got ${r.status}, ${r.bytes} bytes, ${r.protocol}`);
        }
      }
    }
    const servers = [...this.servers].map(([setup, p]) => `${setup} pid ${p.pid} :${this.ports.endpoints[setup]!.port}`);
    log(
      `origin pid ${origin.pid} :${this.ports.origin}` +
        (this.keyserver ? `; key server pid ${this.keyserver.pid} (tcp :${this.keyserver.tcpPort})` : '') +
        (servers.length > 0 ? `; ${servers.join('; ')}` : '') +
        `; ${this.options.workers} workers per proxy${cpus === undefined ? '' : `; servers on CPU ${cpus}`}` +
        `${this.options.keyserverCpus === undefined ? '' : `, key server on CPU ${this.options.keyserverCpus}`}`,
    );
  }

  protected override async stopOthers(): Promise<void> {
    await this.nginx?.stop();
  }

  protected override killOthers(): void {
    this.nginx?.kill();
  }
}

/**
 * The config of a server holding its keys in PEM files: the in-memory proxy (the product's defaults for everything the
 * keyless proxy does not set either) or the node:https floor. Also bench/handshake/layers.ts's.
 */
export function fileKeyConfig(
  kind: 'inmemory' | 'node-floor',
  certs: readonly { name: string; serverName: string; chain: string; key: string }[],
  o: { port: number; admin: number; workers: number; profile: TlsProfileName; logLevel: string; origin: string; domain: string },
): InMemoryConfig | FloorConfig {
  if (kind === 'node-floor') return { port: o.port, admin: o.admin, certificates: certs.map(({ serverName, chain, key }) => ({ serverName, chain, key })) };
  return {
    host: '127.0.0.1',
    port: o.port,
    workers: o.workers,
    profile: o.profile,
    certificates: certs.map(({ name, chain, key }) => ({ name, chain, key })),
    domains: [{ name: o.domain, origin: o.origin }],
    admin: { host: '127.0.0.1', port: o.admin },
    logLevel: o.logLevel,
  };
}

/** CKA_LABEL of a bench key in the token (`keyedge key generate --label`). */
export function tokenKeyLabel(key: HandshakeKey): string {
  return `bench-${key.type}`;
}
