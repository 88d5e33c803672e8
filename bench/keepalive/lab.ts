/**
 * The keep-alive bench's set-up in one temp dir (bench/README.md, "keepalive"): one name on a token key (the keyless
 * proxy and its key server) and on a key file (nginx, caddy, each from its own config, never the system service), and
 * the counting origin (`serveOrigin`, below). Each proxy keeps up to ORIGIN_POOL keep-alive connections to the origin,
 * logs one access line per request unless `accessLog` is off, and sets X-Forwarded-For/-Proto and HSTS as the product
 * does, so they do comparable work per request. A comparison server that does not come up is left out with the reason.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setAffinity } from '../harness/proc-cpu.js';
import { freePort, httpGet, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI, KeyserverLab, LabBase, LabPki, probe } from '../lab/keyserver.js';
import { demoPage } from '../../proxy/demo-origin.js';
import type { Options } from './main.js';

export const SERVER_NAME = 'ka.bench.localhost';
/** The origin answers its count here, uncounted (the bench asks it directly, never through a proxy). */
const COUNT_PATH = '/__bench/count';
/** Keep-alive connections each proxy may keep to the origin: the product's per-worker undici Pool size. */
export const ORIGIN_POOL = 64;

export type ServerId = 'keyedge' | 'nginx' | 'caddy';

/** nginx and caddy: their binaries (absent: not run); the keyless proxy's node (absent: this one). */
type KeepaliveLabOptions = Options & Record<'nginx' | 'caddy' | 'proxyNode', string | undefined>;

export class KeepaliveLab extends LabBase<ServerId> {
  /** Each configured server's config as written (the report's JSON holds them). */
  readonly configs: Partial<Record<ServerId, unknown>> = {};

  ports = { origin: 0, keyedge: 0, admin: 0, nginx: 0, caddy: 0 }; // picked by `start`

  /** Makes the temp dir; `start` makes the rest. */
  constructor(readonly options: KeepaliveLabOptions) {
    super(new KeyserverLab({ prefix: 'keyedge-keepalive-', tokenLabel: 'keyedge-keepalive' }), 'keepalive');
  }

  /**
   * Makes the key, certificates and configs; starts the origin, the key server, the keyless proxy and whichever of
   * nginx and caddy were found, and probes each. Returns the comparison servers that did not come up, with the reason
   * (the keyless proxy failing is fatal).
   */
  async start(log: (line: string) => void): Promise<Map<ServerId, string>> {
    this.ports = { origin: await freePort(), keyedge: await freePort(), admin: await freePort(), nginx: await freePort(), caddy: await freePort() };
    const { options: o, ports, dir } = this;
    // Keyless: the key lives in the token, the CSR is signed there; nginx and caddy: a key file, the same name and CA.
    const pki = new LabPki(dir, 'keyedge keepalive bench CA');
    const keyId = await this.keyserverLab.generateKey('ec-p256', 'bench-keepalive-ec');
    await pki.tokenCert(this.keyserverLab, 'bench-keepalive-ec', SERVER_NAME, 'keyless');
    pki.fileCert('ec-p256', SERVER_NAME, 'file');
    log(`ECDSA P-256: token key ${keyId.slice(0, 16)}… (keyless proxy), key file (nginx, caddy); certificates for ${SERVER_NAME}`);
    const originCommand = [process.execPath, fileURLToPath(import.meta.url), '--origin', String(ports.origin)];
    this.origin = spawnManaged('origin', originCommand, this.#file('origin.log'), o.serverCpus, dir);
    await waitFor('origin', () => tcpOpen(ports.origin), 15_000, this.origin);
    this.keyserver = await this.keyserverLab.startServer();
    if (o.serverCpus !== undefined) setAffinity(this.keyserver.pid, o.serverCpus);
    const [failed, ca] = [new Map<ServerId, string>(), readFileSync(this.#file('ca.pem'), 'utf8')];
    for (const [id, command] of this.#configure()) {
      const server = spawnManaged(id, command, this.#file(`${id}-stdout.log`), o.serverCpus, dir);
      this.servers.set(id, server);
      // The proxy is ready once its workers are (/readyz); nginx and caddy once they listen.
      const ready = async () => (id === 'keyedge' ? (await httpGet(`http://127.0.0.1:${ports.admin}/readyz`)).status === 200 : tcpOpen(ports[id]));
      try {
        await waitFor(id, ready, 30_000, server);
        // One request through it: 200, the 1 KiB page, TLS 1.3.
        const r = await probe(ports[id], SERVER_NAME, ca);
        if (r.status !== 200 || r.bytes !== 1024 || r.protocol !== 'TLSv1.3')
          throw new Error(`${id} https://${SERVER_NAME}: expected 200 with 1024 bytes over TLSv1.3, got ${r.status}, ${r.bytes} bytes, ${r.protocol}`);
      } catch (err) {
        if (id === 'keyedge') throw err;
        this.servers.delete(id);
        await server.stop(2000);
        failed.set(id, `did not start: ${(err as Error).message.split('\n').slice(0, 4).join(' ')}`);
      }
    }
    log([this.origin, this.keyserver, ...this.servers.values()].map((p) => `${p.name} pid ${p.pid}`).join(', '));
    return failed;
  }

  #file = (name: string): string => join(this.dir, name);

  /** Writes each server's config (nginx and caddy only when found) and records it; returns their commands. */
  #configure(): [ServerId, string[]][] {
    const { options: o, ports, dir } = this;
    const write = (id: ServerId, file: string, config: unknown) => {
      this.configs[id] = config;
      writeFileSync(this.#file(file), typeof config === 'string' ? config : JSON.stringify(config, null, 2));
    };
    const stateDir = this.keyserverLab.stateDir;
    write('keyedge', 'proxy.json', {
      stateDir,
      workers: o.workers,
      keyserver: { socket: join(stateDir, 'keyserver.sock') },
      listen: [{ host: '127.0.0.1', port: ports.keyedge, profile: 'intermediate' }],
      certificates: [{ name: 'ka', chain: this.#file('keyless-chain.pem') }],
      sni: { default: null, onUnknown: 'reject' },
      domains: [{ name: SERVER_NAME, origin: `http://127.0.0.1:${ports.origin}` }],
      admin: { host: '127.0.0.1', port: ports.admin },
      log: { level: o['log-level'] },
    });
    // node writes the profile at exit into the dir, which it makes.
    const profiling = o.cpuProfDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir];
    const commands: [ServerId, string[]][] = [
      ['keyedge', [o.proxyNode ?? process.execPath, ...profiling, KEYEDGE_CLI, 'proxy', '--config', this.#file('proxy.json')]],
    ];
    if (o.nginx !== undefined) {
      mkdirSync(this.#file('nginx-tmp'), { mode: 0o700 });
      write('nginx', 'nginx.conf', nginxConfig(dir, ports.nginx, ports.origin, o.accessLog));
      commands.push(['nginx', [o.nginx, '-e', this.#file('nginx-error.log'), '-p', dir, '-c', this.#file('nginx.conf')]]);
    }
    if (o.caddy !== undefined) {
      write('caddy', 'caddy.json', caddyConfig(dir, ports.caddy, ports.origin, o.accessLog));
      commands.push(['caddy', [o.caddy, 'run', '--config', this.#file('caddy.json')]]);
    }
    return commands;
  }

  /** Requests the origin has served so far (asked directly, not through a proxy). */
  async originCount(): Promise<number> {
    return Number((await httpGet(`http://127.0.0.1:${this.ports.origin}${COUNT_PATH}`)).body);
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

/**
 * The origin, its own process on the servers' CPU (`node dist/bench/keepalive/lab.js --origin PORT`): the product's
 * demo page (1 KiB, proxy/demo-origin.ts) and a request counter. Every proxied request reaches the origin exactly
 * once, so the counter counts keyedge, nginx and caddy alike.
 */
function serveOrigin(port: number): void {
  const page = demoPage(1024);
  let served = 0;
  // Idle connections kept longer than any proxy's upstream idle timeout: the proxies decide when pooled connections close.
  const timeouts = { keepAliveTimeout: 120_000, headersTimeout: 130_000 };
  const server = http.createServer(timeouts, (req, res) => {
    if (req.url === COUNT_PATH) return void res.writeHead(200, { 'content-type': 'text/plain' }).end(String(served));
    served++;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': page.length }).end(page);
  });
  server.listen(port, '127.0.0.1'); // no signal handlers: SIGTERM ends it, it holds nothing to save
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === '--origin') serveOrigin(Number(process.argv[3]));
