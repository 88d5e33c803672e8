/**
 * The handshake bench's set-ups in one temp dir (bench/README.md, "Set-ups"): the key server with an ECDSA and an RSA
 * key in its token, certificates from a throwaway CA for them and for key files with the same names, the demo origin,
 * the keyless and in-memory proxies, the node:https floor and the nginx variants (lab/nginx.ts).
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import { keylessKeyPem } from '../../proxy/native/index.js';
import { embeddedTokenPaths, findSoftHsmModule } from '../../keyserver/token/embedded.js';
import { nodeBinary, nodeVersionOf, OWN_MAJOR } from '../harness/install.js';
import { setAffinity } from '../harness/proc-cpu.js';
import { plural } from '../harness/report.js';
import { freePort, httpGet, jsonLine, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI, KeyserverLab, LabBase, LabPki, probe } from '../lab/keyserver.js';
import { ensureNginxTools, NginxLab, type NginxTools, type NginxVariant, variantSkipReason } from '../lab/nginx.js';
import type { FloorConfig } from './floor.js';
import type { InMemoryConfig } from './inmemory.js';
import type { Limits } from './limits.js';
import type { Options } from './main.js';

/** `type`: `keyedge key generate --type`; `serverName`: SNI and Host header, covered by every server's certificate. */
export const HANDSHAKE_KEYS = [
  { id: 'ec', title: 'ECDSA P-256', type: 'ec-p256', serverName: 'ec.bench.localhost' },
  { id: 'rsa', title: 'RSA-2048', type: 'rsa-2048', serverName: 'rsa.bench.localhost' },
] as const;
export type HandshakeKey = (typeof HANDSHAKE_KEYS)[number];

/** Per set-up: title, what runs in it, the process group holding the key apart from the front, nginx variant, whether under --node's majors. */
type SetupSpec = { title: string; runs: (w: string, node: string) => string; key?: 'keyserver' | 'p11kit'; nginx?: NginxVariant; node?: true };
const SETUPS = {
  'keyless-unix': { title: 'keyless (unix)', runs: (w, node) => `proxy ${w} + key server (unix)${node}`, key: 'keyserver', node: true },
  'keyless-tcp': { title: 'keyless (mTLS)', runs: (w) => `proxy ${w} + key server (mTLS)`, key: 'keyserver' },
  inmemory: { title: 'in memory', runs: (w, node) => `${w}${node}`, node: true },
  'node-floor': { title: 'bare node:https (floor)', runs: (_, node) => `node:https 1 process${node}`, node: true },
  'node-forward': { title: 'bare node:https + undici forwarder (floor)', runs: (_, node) => `node:https 1 process${node}`, node: true },
  // The keyless hop's floor (bench/results/2026-12-06-keyless-hop-floor.md): the floor, each sign through the bridge.
  'node-floor-keyless': {
    title: 'bare node:https, keyless key (floor)',
    runs: (_, node) => `node:https 1 process + key server (unix)${node}`,
    key: 'keyserver',
    node: true,
  },
  'nginx-file': { title: 'nginx key file', runs: () => 'nginx 1 process', nginx: 'file' },
  'nginx-engine': { title: 'nginx + pkcs11 engine', runs: () => 'nginx 1 process (SoftHSM2 in it)', nginx: 'engine' },
  'nginx-p11kit': { title: 'nginx + p11-kit', runs: () => 'nginx 1 process + p11-kit server', key: 'p11kit', nginx: 'p11kit' },
} satisfies Record<string, SetupSpec>;

type BaseSetup = keyof typeof SETUPS;
type NodeSetup = 'keyless-unix' | 'inmemory' | 'node-floor' | 'node-forward' | 'node-floor-keyless';
export type SetupId = BaseSetup | `${NodeSetup}-node${number}`;

export const SETUP_IDS = Object.keys(SETUPS) as BaseSetup[];
const baseSetup = (setup: SetupId): BaseSetup => setup.replace(/-node\d+$/, '') as BaseSetup;
const spec = (setup: SetupId): SetupSpec => SETUPS[baseSetup(setup)];
export const NODE_SETUPS = SETUP_IDS.filter((s) => spec(s).node) as NodeSetup[];
/** The Node major a set-up runs under; undefined: this process's node (or not Node). */
const nodeMajorOf = (setup: SetupId): number | undefined => (/-node\d+$/.test(setup) ? Number(setup.slice(setup.lastIndexOf('-node') + 5)) : undefined);
export const isNginx = (setup: SetupId): boolean => spec(setup).nginx !== undefined;
export const isKeyless = (setup: SetupId): boolean => spec(setup).key === 'keyserver';
/** `setup` under Node `major`; unchanged for this process's major and for set-ups that are not Node servers. */
export const onNode = (setup: SetupId, major: number): SetupId => (major === OWN_MAJOR || !spec(setup).node ? setup : (`${setup}-node${major}` as SetupId));
const onMajor = (setup: SetupId): string => (nodeMajorOf(setup) === undefined ? '' : `, Node ${nodeMajorOf(setup)}`);
export const setupTitle = (setup: SetupId): string => `${spec(setup).title}${onMajor(setup)}`;
export const setupProcesses = (setup: SetupId, workers: number): string => spec(setup).runs(plural(workers, 'worker'), onMajor(setup));
/** The process group holding a set-up's key apart from its TLS front (the front's group is named as the set-up). */
export const keyHolder = (setup: SetupId): string | undefined => spec(setup).key;
/** nginx's access log is off at these levels, as the proxy's. */
export const quietLog = (level: string): boolean => level === 'warn' || level === 'error' || level === 'silent';
/** CKA_LABEL of a bench key in the token (`keyedge key generate --label`). */
const tokenKeyLabel = (key: HandshakeKey): string => `bench-${key.type}`;

export class HandshakeLab extends LabBase<SetupId> {
  readonly keyIds = new Map<string, string>();
  /** Set-ups (nginx packages missing, a Node server failing under another major) and scenarios that cannot run, with the reason. */
  readonly skipped = new Map<string, string>();
  readonly nodeVersions = new Map([[OWN_MAJOR, `${process.version} (OpenSSL ${process.versions.openssl})`]]);
  limits?: Limits;
  /** The lab CA (PEM), which the clients trust. */
  ca = '';
  /** The config each Node server was started with, for the result file. */
  readonly configs = new Map<SetupId, unknown>();
  nginx: NginxLab | undefined;

  private constructor(
    keyserverLab: KeyserverLab,
    readonly options: Options,
    readonly nodeBinaries: ReadonlyMap<number, string>,
    readonly ports: { readonly origin: number; readonly keyserverAdmin: number; readonly endpoints: Readonly<Record<string, { port: number; admin: number }>> },
    readonly nginxTools: NginxTools | undefined,
  ) {
    super(keyserverLab, 'handshake');
  }

  get setups(): SetupId[] {
    return [...new Set(this.options.scenarios.map((s) => s.setup))].filter((s) => !this.skipped.has(s));
  }

  #file = (name: string): string => join(this.dir, name);

  skip(id: string, reason: string, log: (line: string) => void): void {
    this.skipped.set(id, reason);
    log(`${id}: skipped, ${reason}`);
  }

  /** Makes the temp dir, keys, certificates; finds (or installs, --install) nginx when an nginx set-up is asked for. Starts nothing. */
  static async create(options: Options, log: (line: string) => void): Promise<HandshakeLab> {
    const nodeBinaries = new Map(options.majors.filter((m) => m !== OWN_MAJOR).map((m) => [m, nodeBinary(m, log)] as const));
    const setups = [...new Set(options.scenarios.map((s) => s.setup))];
    const nginxTools = setups.some(isNginx) ? ensureNginxTools(options.install, log) : undefined;
    const keyserverLab = new KeyserverLab({ prefix: 'keyedge-handshake-', tokenLabel: 'keyedge-handshake' });
    try {
      const endpoints: Record<string, { port: number; admin: number }> = {};
      for (const setup of [...SETUP_IDS, ...setups]) endpoints[setup] ??= { port: await freePort(), admin: await freePort() };
      const ports = { origin: await freePort(), keyserverAdmin: await freePort(), endpoints };
      const config = { ...keyserverLab.config, admin: { host: '127.0.0.1', port: ports.keyserverAdmin } };
      writeFileSync(keyserverLab.configPath, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
      const lab = new HandshakeLab(keyserverLab, options, nodeBinaries, ports, nginxTools);
      for (const [m, bin] of nodeBinaries) lab.nodeVersions.set(m, nodeVersionOf(bin));
      for (const setup of setups.filter(isNginx)) {
        const reason = variantSkipReason(nginxTools!, spec(setup).nginx!);
        if (reason !== undefined) lab.skip(setup, reason, log);
      }
      const pki = new LabPki(lab.dir, 'keyedge handshake bench CA');
      lab.ca = readFileSync(pki.caFile, 'utf8');
      for (const key of options.keys) {
        // Token-backed set-ups: the key made in the token, its CSR signed there. The others: a key file, same names and CA.
        lab.keyIds.set(key.id, await keyserverLab.generateKey(key.type, tokenKeyLabel(key)));
        await pki.tokenCert(keyserverLab, tokenKeyLabel(key), key.serverName, `keyless-${key.id}`);
        pki.fileCert(key.type, key.serverName, `inmemory-${key.id}`);
        log(`${key.title}: token key ${lab.keyIds.get(key.id)!.slice(0, 16)}… (keyedge key generate + key csr), key file; certificates for ${key.serverName}`);
      }
      return lab;
    } catch (err) {
      keyserverLab.cleanup();
      throw err;
    }
  }

  async #startNode(setup: SetupId): Promise<void> {
    const { options } = this;
    const f = this.#file;
    const endpoint = this.ports.endpoints[setup]!;
    const [origin, base, major] = [`http://127.0.0.1:${this.ports.origin}`, baseSetup(setup), nodeMajorOf(setup)];
    const node = major === undefined ? process.execPath : this.nodeBinaries.get(major)!;
    if (base === 'inmemory' || base === 'node-floor' || base === 'node-forward' || base === 'node-floor-keyless') {
      const certs = options.keys.map((k) => ({ name: k.id, serverName: k.serverName, chain: f(`inmemory-${k.id}-chain.pem`), key: f(`inmemory-${k.id}.key`) }));
      const o = { ...options, ...endpoint, origin, domain: '*.bench.localhost', dir: this.dir, command: [node], cpus: options.serverCpus, timeoutMs: 60_000 };
      // The floors renew tickets as the proxy does, so that their resumed connections all resume (floor.ts).
      const floor =
        base === 'node-forward'
          ? { renewTickets: true, forward: { origin, client: 'undici' as const } }
          : base === 'node-floor-keyless'
            ? { renewTickets: true, keylessSocket: join(this.keyserverLab.stateDir, 'keyserver.sock') }
            : { renewTickets: true };
      if (base === 'node-floor-keyless') certs.splice(0, certs.length, ...this.#keylessKeyFiles());
      const server = base === 'inmemory' ? startFileKeyed(setup, base, certs, o) : startFileKeyed(setup, 'node-floor', certs, o, floor);
      this.servers.set(setup, server.proc);
      this.configs.set(setup, server.config);
      return void (await server.serving);
    }
    // The mTLS proxy's key server port is known once it runs; it presents the lab's client certificate.
    const { tls, stateDir } = this.keyserverLab;
    const tcp = { host: '127.0.0.1', port: this.keyserver?.tcpPort, ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: tls.serverName };
    const config = {
      stateDir,
      workers: options.workers,
      keyserver: setup === 'keyless-tcp' ? { socket: null, tcp } : { socket: join(stateDir, 'keyserver.sock') },
      listen: [{ host: '127.0.0.1', port: endpoint.port, profile: options.profile }],
      certificates: options.keys.map((k) => ({ name: k.id, chain: f(`keyless-${k.id}-chain.pem`) })),
      sni: { default: null, onUnknown: 'reject' },
      domains: [{ name: '*.bench.localhost', origin }],
      admin: { host: '127.0.0.1', port: endpoint.admin },
      log: { level: options.logLevel },
    };
    writeFileSync(f(`${setup}.json`), `${JSON.stringify(config, null, 2)}\n`);
    this.configs.set(setup, config);
    const proc = spawnManaged(setup, [node, KEYEDGE_CLI, 'proxy', '--config', f(`${setup}.json`)], f(`${setup}.log`), options.serverCpus, this.dir);
    this.servers.set(setup, proc);
    const ready = async () => (await httpGet(`http://127.0.0.1:${endpoint.admin}/readyz`).catch(() => ({ status: 0 }))).status === 200;
    await waitFor(`${setup} (${node === process.execPath ? process.version : node})`, ready, 60_000, proc);
  }

  /** The token's keys as the proxy hands them to node:tls (KEYEDGE KEYLESS KEY files), with their certificates. */
  #keylessKeyFiles() {
    return this.options.keys.map((k) => {
      const chain = this.#file(`keyless-${k.id}-chain.pem`);
      const spki = new X509Certificate(readFileSync(chain)).publicKey.export({ type: 'spki', format: 'der' });
      const key = this.#file(`floor-keyless-${k.id}.key`);
      writeFileSync(key, keylessKeyPem(this.keyIds.get(k.id)!, spki));
      return { name: k.id, serverName: k.serverName, chain, key };
    });
  }

  /** Starts the origin, the key server and the set-ups that run; checks one request through each server and key. */
  async start(log: (line: string) => void): Promise<void> {
    const { options, ports } = this;
    const cpus = options.serverCpus;
    // Independent servers start concurrently (start-up is most of a quick run); the proxies need the key server.
    const startKeyserver = async () => {
      // Always on this node: pkcs11js is built for its ABI.
      this.keyserver = await this.keyserverLab.startServer();
      if (cpus !== undefined) setAffinity(this.keyserver.pid, cpus);
      const metrics = async () => (await httpGet(`http://127.0.0.1:${ports.keyserverAdmin}/metrics`).catch(() => ({ status: 0 }))).status === 200;
      await waitFor('key server admin', metrics, 15_000);
    };
    const keyserverReady = this.setups.some(isKeyless) ? startKeyserver() : Promise.resolve();
    const starts: Promise<unknown>[] = [this.startDemoOrigin(ports.origin, cpus), keyserverReady];
    for (const setup of this.setups.filter((s) => !isNginx(s))) {
      const started = (isKeyless(setup) ? keyserverReady : Promise.resolve()).then(() => this.#startNode(setup));
      // Under another Node major, a server that does not start is skipped with its log, not a failed run.
      const skip = (err: unknown) => {
        this.servers.get(setup)?.kill();
        this.servers.delete(setup);
        this.skip(setup, `did not start under Node ${nodeMajorOf(setup)}: ${(err as Error).message.split('\n').slice(0, 3).join(' ')}`, log);
      };
      starts.push(nodeMajorOf(setup) === undefined ? started : started.catch(skip));
    }
    const variants = this.setups.flatMap((s) => spec(s).nginx ?? []);
    if (variants.length > 0) starts.push(this.#startNginx(variants, log));
    // Every start settles before an error is thrown, so stop() sees every process that was spawned.
    const failed = (await Promise.allSettled(starts)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    for (const [key, setup] of options.keys.flatMap((k) => this.setups.map((s) => [k, s] as const))) {
      const r = await probe(ports.endpoints[setup]!.port, key.serverName, this.ca);
      const got = `${r.status}, ${r.bytes} bytes, ${r.protocol}`;
      if (got !== '200, 1024 bytes, TLSv1.3') throw new Error(`${setup} ${key.serverName}: expected 200 with 1024 bytes over TLSv1.3, got ${got}`);
    }
    const servers = [...this.servers].map(([setup, p]) => `; ${setup} pid ${p.pid} :${ports.endpoints[setup]!.port}`).join('');
    const keyserver = `key server pid ${this.keyserver?.pid ?? '-'}`;
    log(`origin pid ${this.origin!.pid}, ${keyserver}${servers}; ${options.workers} workers per proxy; servers on CPU ${cpus ?? 'any'}`);
  }

  #startNginx(variants: NginxVariant[], log: (line: string) => void): Promise<void> {
    const f = this.#file;
    const token = embeddedTokenPaths(this.keyserverLab.stateDir);
    const endpoint = (v: NginxVariant) => this.ports.endpoints[`nginx-${v}`]!;
    const ports = Object.fromEntries(variants.map((v) => [v, { port: endpoint(v).port, statusPort: endpoint(v).admin }]));
    const keys = this.options.keys.map((key) => {
      const [tokenChain, fileChain, fileKey] = [f(`keyless-${key.id}-chain.pem`), f(`inmemory-${key.id}-chain.pem`), f(`inmemory-${key.id}.key`)];
      return { key, tokenChain, tokenLabel: tokenKeyLabel(key), fileChain, fileKey };
    });
    const tokenFiles = { softhsmConf: token.confFile, softhsmModule: findSoftHsmModule(), tokenLabel: this.keyserverLab.tokenLabel, pinFile: token.pinFile };
    const [tools, originPort, cpus, accessLog] = [this.nginxTools!, this.ports.origin, this.options.serverCpus, !quietLog(this.options.logLevel)];
    const options = { dir: this.dir, tools, variants, keys, token: tokenFiles, originPort, cpus, accessLog };
    this.nginx = new NginxLab({ ...options, ports: ports as Record<NginxVariant, { port: number; statusPort: number }> });
    return this.nginx.start(log);
  }

  protected override async stopOthers(): Promise<void> {
    await this.nginx?.stop();
  }

  protected override killOthers(): void {
    this.nginx?.kill();
  }
}

type ServerOptions = { port: number; admin: number; workers: number; profile: TlsProfileName; logLevel: string; origin: string; domain: string };

/**
 * Starts a server holding PEM key files, configured in `<dir>/<name>.json`: the in-memory proxy (inmemory.ts, product
 * defaults elsewhere) or the floor (floor.ts; `floor` adds h2 or forwarding). Also rig.ts's. `serving` resolves once it
 * serves, with the pid that serves: the in-memory cluster's first worker (its `in-memory ready` line), else the floor.
 */
export function startFileKeyed(
  name: string,
  kind: 'inmemory' | 'node-floor',
  certs: readonly { name: string; serverName: string; chain: string; key: string }[],
  o: ServerOptions & { dir: string; command: readonly string[]; cpus: string | undefined; timeoutMs: number },
  floor?: Pick<FloorConfig, 'h2' | 'forward' | 'renewTickets' | 'keylessSocket'>,
) {
  const { port, workers, profile, logLevel } = o;
  const [domains, admin] = [[{ name: o.domain, origin: o.origin }], { host: '127.0.0.1', port: o.admin }];
  const config: InMemoryConfig | FloorConfig =
    kind === 'inmemory'
      ? { host: '127.0.0.1', port, workers, profile, logLevel, certificates: certs.map(({ name, chain, key }) => ({ name, chain, key })), domains, admin }
      : { port, admin: o.admin, certificates: certs.map(({ serverName, chain, key }) => ({ serverName, chain, key })), ...floor };
  const file = join(o.dir, `${name}.json`);
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
  const script = fileURLToPath(new URL(`./${kind === 'inmemory' ? 'inmemory' : 'floor'}.js`, import.meta.url));
  const proc = spawnManaged(name, [...o.command, script, '--config', file], join(o.dir, `${name}.log`), o.cpus, o.dir);
  let pid = proc.pid;
  const worker = () => jsonLine<{ workers: number[] }>(proc.logFile, 'in-memory ready')?.workers[0] ?? 0;
  const ready = kind === 'inmemory' ? () => (pid = worker()) > 0 : () => tcpOpen(o.admin);
  return { proc, config, serving: waitFor(name, ready, o.timeoutMs, proc).then(() => pid) };
}
