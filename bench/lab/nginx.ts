/**
 * nginx, the handshake bench's reference TLS terminator, holding the same keys three ways: `file` (a PEM key file),
 * `engine` (the token through OpenSSL's pkcs11 engine, libp11) and `p11kit` (that engine on p11-kit-client.so talking
 * to `p11-kit server`: the key behind a local socket, the deployment keyless competes with). Every nginx is one process:
 * libp11 does not survive nginx's fork of the worker (libp11 #156, #195). The PIN stays in a 0600 OPENSSL_CONF file.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { aptInstall, versionOf, which } from '../harness/install.js';
import { httpGet, type ManagedProcess, spawnManaged, waitFor } from '../harness/spawn.js';

export type NginxVariant = 'file' | 'engine' | 'p11kit';

/** Where Debian puts libp11's engine and p11-kit's client module (amd64, arm64), under these library dirs. */
const findLib = (name: string) => ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64'].map((dir) => `${dir}/${name}`).find(existsSync);

export type NginxTools = ReturnType<typeof findTools>;

function findTools() {
  const nginx = which('nginx');
  if (nginx === undefined) return undefined;
  const version = versionOf(nginx, ['-v'])?.match(/nginx\/(\S+)/)?.[1];
  return { nginx, version, engine: findLib('engines-3/pkcs11.so'), p11kit: which('p11-kit'), p11kitClient: findLib('pkcs11/p11-kit-client.so') };
}

export function variantSkipReason(tools: NginxTools | undefined, variant: NginxVariant): string | undefined {
  if (tools === undefined) return 'nginx is not installed (apt-get install -y nginx)';
  if (variant === 'file') return undefined;
  if (tools.engine === undefined) return 'the pkcs11 engine is not installed (apt-get install -y libengine-pkcs11-openssl)';
  if (variant === 'p11kit' && (tools.p11kit === undefined || tools.p11kitClient === undefined))
    return 'p11-kit is not installed (apt-get install -y p11-kit p11-kit-modules)';
  return undefined;
}

/** nginx, libp11's engine and p11-kit, apt-got when missing with `install`; undefined when nginx is still missing. */
export function ensureNginxTools(install: boolean, log: (line: string) => void): NginxTools | undefined {
  const found = findTools();
  if (!install || (found !== undefined && (['engine', 'p11kit'] as const).every((v) => variantSkipReason(found, v) === undefined))) return found;
  const failed = aptInstall(['nginx', 'libengine-pkcs11-openssl', 'p11-kit', 'p11-kit-modules'], log, ['nginx']);
  if (failed !== undefined) log(`nginx scenarios: ${failed}; skipping what cannot run`);
  return findTools();
}

/** `stub_status` text ("…accepts handled requests\n A H R"): connections accepted and handled, requests served, since start. */
export function parseStubStatus(text: string): { readonly accepts: number; readonly handled: number; readonly requests: number } {
  const m = /accepts handled requests\s*\n\s*(\d+)\s+(\d+)\s+(\d+)/.exec(text);
  if (m === null) throw new Error(`not a stub_status answer: ${text.slice(0, 120)}`);
  return { accepts: Number(m[1]), handled: Number(m[2]), requests: Number(m[3]) };
}

export async function readNginxStatus(statusPort: number) {
  const { status, body } = await httpGet(`http://127.0.0.1:${statusPort}/status`, 10_000);
  if (status !== 200) throw new Error(`nginx status :${statusPort} answered ${status}`);
  return parseStubStatus(body);
}

/** Mozilla "intermediate" (v5.7) TLS 1.2 ciphers, the proxy's intermediate profile; TLS 1.3 suites are OpenSSL's defaults. */
const INTERMEDIATE_CIPHERS =
  'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305';

interface NginxLabOptions {
  readonly dir: string;
  readonly tools: NonNullable<NginxTools>;
  readonly variants: readonly NginxVariant[];
  /** Per key: the token key's chain and object label (engine, p11kit), the file variant's chain and PEM key. */
  readonly keys: readonly { key: { readonly serverName: string }; tokenChain: string; tokenLabel: string; fileChain: string; fileKey: string }[];
  /** The key server's token: its SoftHSM2 configuration, module, label and the file with the user PIN (0600). */
  readonly token: { readonly softhsmConf: string; readonly softhsmModule: string; readonly tokenLabel: string; readonly pinFile: string };
  readonly originPort: number;
  readonly ports: Readonly<Record<NginxVariant, { port: number; statusPort: number }>>;
  readonly cpus: string | undefined;
  readonly accessLog: boolean; // Access log on (one line per request, like the proxy at info) or off.
}

type NginxInstance = { readonly variant: NginxVariant; readonly port: number; readonly statusPort: number; process: ManagedProcess | undefined };

/** The nginx variants and the p11-kit server: one start (configs written, processes started), one stop or kill. */
export class NginxLab {
  readonly instances: ReadonlyMap<NginxVariant, NginxInstance>;
  readonly p11kitSocket: string;
  p11kitServer: ManagedProcess | undefined;

  constructor(readonly options: NginxLabOptions) {
    this.p11kitSocket = join(options.dir, 'p11kit.sock');
    this.instances = new Map(options.variants.map((variant) => [variant, { variant, ...options.ports[variant], process: undefined }]));
  }

  /** The OpenSSL config (0600) loading libp11 with `module` and the PIN; init = 0: nginx's ssl_engine initialises the engine. */
  #opensslConf(name: string, module: string): string {
    const pin = readFileSync(this.options.token.pinFile, 'utf8').trim();
    const path = join(this.options.dir, name);
    const conf = `openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = ${this.options.tools.engine}
MODULE_PATH = ${module}
PIN = ${pin}
init = 0
`;
    writeFileSync(path, conf, { mode: 0o600 });
    return path;
  }

  #nginxConf({ variant, port, statusPort }: NginxInstance): string {
    const { dir, keys, originPort, accessLog, token } = this.options;
    const file = (suffix: string) => join(dir, `nginx-${variant}${suffix}`);
    mkdirSync(file('-tmp'), { recursive: true, mode: 0o700 });
    const servers = keys.flatMap((k) => {
      const tokenKey = `engine:pkcs11:pkcs11:token=${encodeURIComponent(token.tokenLabel)};object=${encodeURIComponent(k.tokenLabel)};type=private`;
      return [
        '  server {',
        // http2: ALPN h2 for the alpn-h2 kind (nginx 1.22 syntax; `http2 on` from 1.25.1); ab offers no ALPN and gets HTTP/1.1.
        `    listen 127.0.0.1:${port} ssl http2;`,
        `    server_name ${k.key.serverName};`,
        `    ssl_certificate ${variant === 'file' ? k.fileChain : k.tokenChain};`,
        `    ssl_certificate_key "${variant === 'file' ? k.fileKey : tokenKey}";`,
        '    location / {',
        '      proxy_pass http://origin;',
        '      proxy_http_version 1.1;',
        ...['Connection ""', 'Host $host', 'X-Forwarded-For $remote_addr', 'X-Forwarded-Proto https'].map((h) => `      proxy_set_header ${h};`),
        '    }',
        '  }',
      ];
    });
    return [
      `# Written by bench/handshake/main.ts: nginx ${variant} variant.`,
      // One process: see the module comment (libp11 and fork).
      'master_process off;',
      'worker_processes 1;',
      `pid ${file('.pid')};`,
      `error_log ${file('.log')} warn;`,
      ...(variant === 'file' ? [] : ['ssl_engine pkcs11;']),
      'events { worker_connections 4096; }',
      'http {',
      accessLog ? `  access_log ${file('-access.log')};` : '  access_log off;',
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${file('-tmp')}/${t};`),
      '  ssl_protocols TLSv1.2 TLSv1.3;',
      `  ssl_ciphers ${INTERMEDIATE_CIPHERS};`,
      '  ssl_prefer_server_ciphers off;',
      // Resumption by session tickets (stateless), as the proxy: nginx's own ticket key, one process.
      '  ssl_session_tickets on;',
      '  ssl_session_timeout 1h;',
      // Keep-alive connections to the origin, as the proxy's undici pool.
      `  upstream origin { server 127.0.0.1:${originPort}; keepalive 64; }`,
      ...servers,
      `  server { listen 127.0.0.1:${statusPort}; access_log off; location = /status { stub_status; } }`,
      '}',
      '',
    ].join('\n');
  }

  /** Starts the p11-kit server (when a variant needs it) and every nginx; resolves once each answers its status port. */
  async start(log: (line: string) => void): Promise<void> {
    const { tools, token, dir, cpus } = this.options;
    const tokenEnv = { SOFTHSM2_CONF: token.softhsmConf };
    if (this.instances.has('p11kit')) {
      // -f: foreground, so it is our child and its process group; it forks one p11-kit-remote per client connection.
      const tokenUri = `pkcs11:token=${encodeURIComponent(token.tokenLabel)}`;
      const command = [tools.p11kit!, 'server', '-f', '-n', this.p11kitSocket, '--provider', token.softhsmModule, tokenUri];
      this.p11kitServer = spawnManaged('p11-kit server', command, join(dir, 'p11kit-server.log'), cpus, dir, tokenEnv);
      await waitFor('p11-kit server socket', () => existsSync(this.p11kitSocket), 15_000, this.p11kitServer);
    }
    for (const instance of this.instances.values()) {
      const { variant } = instance;
      const configPath = join(dir, `nginx-${variant}.conf`);
      writeFileSync(configPath, this.#nginxConf(instance));
      const env: Record<string, string> =
        variant === 'file'
          ? {}
          : variant === 'engine'
            ? { ...tokenEnv, OPENSSL_CONF: this.#opensslConf('openssl-engine.cnf', token.softhsmModule) }
            : { OPENSSL_CONF: this.#opensslConf('openssl-p11kit.cnf', tools.p11kitClient!), P11_KIT_SERVER_ADDRESS: `unix:path=${this.p11kitSocket}` };
      // Start-up errors (-e) and the config's error_log go to the process's own log, which a failed wait shows.
      const logFile = join(dir, `nginx-${variant}.log`);
      instance.process = spawnManaged(`nginx ${variant}`, [tools.nginx, '-c', configPath, '-e', logFile, '-g', 'daemon off;'], logFile, cpus, dir, env);
      await waitFor(`nginx ${variant}`, () => readNginxStatus(instance.statusPort).then(() => true), 15_000, instance.process);
    }
    const started = [...this.instances.values()].map((i) => `${i.variant} pid ${i.process?.pid} :${i.port}`).join(', ');
    log(`nginx ${tools.version ?? '?'}: ${started}${this.p11kitServer === undefined ? '' : `; p11-kit server pid ${this.p11kitServer.pid}`}`);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.instances.values()].map((i) => i.process?.stop(5000)));
    await this.p11kitServer?.stop(5000);
  }

  kill(): void {
    for (const i of this.instances.values()) i.process?.kill();
    this.p11kitServer?.kill();
  }
}
