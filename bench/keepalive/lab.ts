/**
 * The keep-alive bench's set-up in one temp dir (bench/README.md, "keepalive"): one name on a token key (the keyless
 * proxy and its key server) and on a key file (nginx, caddy, each from its own config, never the system service), and
 * the counting origin (origin.ts). Each proxy keeps up to ORIGIN_POOL keep-alive connections to the origin, logs one
 * access line per request unless `accessLog` is off, and sets X-Forwarded-For/-Proto and HSTS as the product does, so
 * they do comparable work per request. A comparison server that does not come up is left out with the reason.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setAffinity } from '../harness/proc-cpu.js';
import { freePort, httpGet, spawnManaged, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI, KeyserverLab, LabBase, LabPki, probe } from '../lab/keyserver.js';
import type { Options } from './main.js';
import { COUNT_PATH, READY_LINE } from './origin.js';

export const SERVER_NAME = 'ka.bench.localhost';
/** Keep-alive connections each proxy may keep to the origin: the product's per-worker undici Pool size. */
export const ORIGIN_POOL = 64;

export type ServerId = 'keyedge' | 'nginx' | 'caddy';

/** nginx and caddy: their binaries (absent: not run); the keyless proxy: its node and node options (--cpu-prof). */
type KeepaliveLabOptions = Pick<Options, 'workers' | 'logLevel' | 'accessLog' | 'serverCpus'> &
  Record<'nginx' | 'caddy' | 'proxyNode', string | undefined> & { readonly proxyNodeArgs: readonly string[] };

export class KeepaliveLab extends LabBase<ServerId> {
  readonly caFile = join(this.dir, 'ca.pem');
  readonly configs: { keyedge: Record<string, unknown>; nginx?: string; caddy?: Record<string, unknown> } = { keyedge: {} };
  /** Comparison servers that were configured but did not come up, with the reason. */
  readonly failed = new Map<ServerId, string>();

  private constructor(
    keyserverLab: KeyserverLab,
    readonly options: KeepaliveLabOptions,
    readonly ports: Record<ServerId | 'origin' | 'admin', number>,
  ) {
    super(keyserverLab, 'keepalive');
  }

  /** Makes the temp dir, the token key, certificates and configs (nothing is started yet). */
  static async create(options: KeepaliveLabOptions, log: (line: string) => void): Promise<KeepaliveLab> {
    const keyserverLab = new KeyserverLab({ prefix: 'keyedge-keepalive-', tokenLabel: 'keyedge-keepalive' });
    try {
      const ports = { origin: await freePort(), keyedge: await freePort(), admin: await freePort(), nginx: await freePort(), caddy: await freePort() };
      const lab = new KeepaliveLab(keyserverLab, options, ports);
      await lab.#makeFiles(log);
      return lab;
    } catch (err) {
      keyserverLab.cleanup();
      throw err;
    }
  }

  #file = (name: string): string => join(this.dir, name);

  async #makeFiles(log: (line: string) => void): Promise<void> {
    const { options: o, ports } = this;
    // Keyless: the key lives in the token, the CSR is signed there; nginx and caddy: a key file, the same name and CA.
    const pki = new LabPki(this.dir, 'keyedge keepalive bench CA');
    const keyId = await this.keyserverLab.generateKey('ec-p256', 'bench-keepalive-ec');
    await pki.tokenCert(this.keyserverLab, 'bench-keepalive-ec', SERVER_NAME, 'keyless');
    pki.fileCert('ec-p256', SERVER_NAME, 'file');
    log(`ECDSA P-256: token key ${keyId.slice(0, 16)}… (keyless proxy), key file (nginx, caddy); certificates for ${SERVER_NAME}`);
    const stateDir = this.keyserverLab.stateDir;
    this.configs.keyedge = {
      stateDir,
      workers: o.workers,
      keyserver: { socket: join(stateDir, 'keyserver.sock') },
      listen: [{ host: '127.0.0.1', port: ports.keyedge, profile: 'intermediate' }],
      certificates: [{ name: 'ka', chain: this.#file('keyless-chain.pem') }],
      sni: { default: null, onUnknown: 'reject' },
      domains: [{ name: SERVER_NAME, origin: `http://127.0.0.1:${ports.origin}` }],
      admin: { host: '127.0.0.1', port: ports.admin },
      log: { level: o.logLevel },
    };
    writeFileSync(this.#file('proxy.json'), JSON.stringify(this.configs.keyedge, null, 2));
    if (o.nginx !== undefined) {
      mkdirSync(this.#file('nginx-tmp'), { recursive: true, mode: 0o700 });
      this.configs.nginx = nginxConfig(this.dir, ports.nginx, ports.origin, o.accessLog);
      writeFileSync(this.#file('nginx.conf'), this.configs.nginx);
    }
    if (o.caddy !== undefined) {
      this.configs.caddy = caddyConfig(this.dir, ports.caddy, ports.origin, o.accessLog);
      writeFileSync(this.#file('caddy.json'), JSON.stringify(this.configs.caddy, null, 2));
    }
  }

  /** Starts the origin, the key server, the keyless proxy and whichever of nginx and caddy were configured; probes each. */
  async start(log: (line: string) => void): Promise<void> {
    const { options: o, ports } = this;
    const [cpus, f] = [o.serverCpus, this.#file];
    const originCommand = [process.execPath, fileURLToPath(new URL('./origin.js', import.meta.url)), '--port', String(ports.origin)];
    const origin = (this.origin = spawnManaged('origin', originCommand, f('origin.log'), cpus, this.dir));
    await waitFor('origin', () => readFileSync(origin.logFile, 'utf8').includes(READY_LINE), 15_000, origin);
    this.keyserver = await this.keyserverLab.startServer();
    if (cpus !== undefined) setAffinity(this.keyserver.pid, cpus);
    const proxyCommand = [o.proxyNode ?? process.execPath, ...o.proxyNodeArgs, KEYEDGE_CLI, 'proxy', '--config', f('proxy.json')];
    const proxy = spawnManaged('keyedge', proxyCommand, f('proxy.log'), cpus, this.dir);
    this.servers.set('keyedge', proxy);
    await waitFor('keyless proxy (/readyz)', async () => (await httpGet(`http://127.0.0.1:${ports.admin}/readyz`)).status === 200, 30_000, proxy);
    await this.#check('keyedge');
    const others: [ServerId, string[]][] = [];
    if (o.nginx !== undefined) others.push(['nginx', [o.nginx, '-e', f('nginx-error.log'), '-p', this.dir, '-c', f('nginx.conf')]]);
    if (o.caddy !== undefined) others.push(['caddy', [o.caddy, 'run', '--config', f('caddy.json')]]);
    for (const [id, command] of others) {
      const server = spawnManaged(id, command, f(`${id}-stdout.log`), cpus, this.dir);
      this.servers.set(id, server);
      try {
        await waitFor(id, () => probe(ports[id], SERVER_NAME, readFileSync(this.caFile, 'utf8')).then((r) => r.status > 0), 30_000, server);
        await this.#check(id);
      } catch (err) {
        this.servers.delete(id);
        await server.stop(2000);
        this.failed.set(id, `did not start: ${(err as Error).message.split('\n').slice(0, 4).join(' ')}`);
        log(`${id} ${this.failed.get(id)}`);
      }
    }
    const running = [...this.servers].map(([id, p]) => `${id} pid ${p.pid} :${ports[id]}`).join('; ');
    log(
      `origin pid ${origin.pid} :${ports.origin}; key server pid ${this.keyserver.pid}; ${running}; ` +
        `keyless proxy ${o.workers} worker(s)${cpus === undefined ? '' : `; servers on CPU ${cpus}`}`,
    );
  }

  /** One request through `id`: 200, the 1 KiB page, TLS 1.3. */
  async #check(id: ServerId): Promise<void> {
    const r = await probe(this.ports[id], SERVER_NAME, readFileSync(this.caFile, 'utf8'));
    if (r.status !== 200 || r.bytes !== 1024 || r.protocol !== 'TLSv1.3') {
      throw new Error(`${id} https://${SERVER_NAME}: expected 200 with 1024 bytes over TLSv1.3, got ${r.status}, ${r.bytes} bytes, ${r.protocol}`);
    }
  }

  /** Requests the origin has served so far (asked directly, not through a proxy). */
  async originCount(): Promise<number> {
    const { status, body } = await httpGet(`http://127.0.0.1:${this.ports.origin}${COUNT_PATH}`);
    if (status !== 200) throw new Error(`origin count: HTTP ${status}`);
    return (JSON.parse(body) as { served: number }).served;
  }
}

/**
 * nginx: one worker, TLS 1.2 and 1.3 as the product's intermediate profile, an upstream keep-alive pool.
 * `keepalive_requests` is raised on both sides: nginx otherwise closes a keep-alive connection after 1000 requests (a
 * new handshake per 1000 requests that neither node:http nor caddy would do). Temp paths under `<dir>/nginx-tmp`.
 */
export function nginxConfig(dir: string, port: number, originPort: number, accessLog: boolean): string {
  const f = (name: string) => join(dir, name);
  return `# bench/keepalive/lab.ts: nginx as a TLS reverse proxy, one worker, its own prefix ${dir}
worker_processes 1;
daemon off;
pid ${f('nginx.pid')};
error_log ${f('nginx-error.log')} warn;
events { worker_connections 4096; }
http {
${['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${f(`nginx-tmp/${t}`)};`).join('\n')}
  ${accessLog ? `access_log ${f('nginx-access.log')};` : 'access_log off;'}
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  upstream origin {
    server 127.0.0.1:${originPort};
    keepalive ${ORIGIN_POOL};
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port} ssl http2;
    server_name ${SERVER_NAME};
    ssl_certificate ${f('file-chain.pem')};
    ssl_certificate_key ${f('file.key')};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      add_header Strict-Transport-Security "max-age=63072000" always;
    }
  }
}
`;
}

/**
 * caddy (JSON config): admin endpoint off, nothing persisted, automatic HTTPS off (no ACME, no redirect listener), the
 * certificate from files; reverse_proxy with an idle pool as large as the others'. caddy sets X-Forwarded-* itself.
 */
function caddyConfig(dir: string, port: number, originPort: number, accessLog: boolean): Record<string, unknown> {
  const f = (name: string) => join(dir, name);
  const hsts = { handler: 'headers', response: { set: { 'Strict-Transport-Security': ['max-age=63072000'] } } };
  const transport = { protocol: 'http', keep_alive: { max_idle_conns_per_host: ORIGIN_POOL } };
  const proxy = { handler: 'reverse_proxy', upstreams: [{ dial: `127.0.0.1:${originPort}` }], transport };
  const server = {
    listen: [`127.0.0.1:${port}`],
    automatic_https: { disable: true },
    tls_connection_policies: [{ protocol_min: 'tls1.2' }],
    ...(accessLog ? { logs: {} } : {}),
    routes: [{ handle: [hsts, proxy] }],
  };
  return {
    admin: { disabled: true, config: { persist: false } },
    storage: { module: 'file_system', root: f('caddy-data') },
    logging: { logs: { default: { writer: { output: 'file', filename: f('caddy.log') }, level: accessLog ? 'INFO' : 'WARN' } } },
    apps: { http: { servers: { bench: server } }, tls: { certificates: { load_files: [{ certificate: f('file-chain.pem'), key: f('file.key') }] } } },
  };
}
