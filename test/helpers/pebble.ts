/**
 * A real ACME CA on loopback for the issuer's tests: Debian's `pebble` with a
 * TLS certificate made here (2.4.0 ships none), its validation authority
 * pointed at the proxy's plain-HTTP port, and `pebble-challtestsrv` as its
 * DNS server, answering 127.0.0.1 for every name (no AAAA, so the VA never
 * tries ::1, where the proxy does not listen).
 *
 * `PEBBLE_VA_NOSLEEP=1` drops pebble's random validation delay;
 * `PEBBLE_VA_ALWAYS_VALID` is never set: every challenge is really fetched.
 * Pebble rejects 5 % of nonces by default (`PEBBLE_WFE_NONCEREJECT`), which
 * exercises the client's badNonce retry on every run.
 *
 * `startAcmeLab()` is the set-up every ACME test shares: a keyless lab (key
 * server, SoftHSM2 token, origin), a pebble whose HTTP-01 validations go to a
 * port chosen here (the proxy under test listens on it), the proxy's `acme`
 * section for that pebble, and the `keyedge` CLI.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { CLI, REPO, removeDir, sleep, tempDir } from './basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './proxy-cluster.js';
import { freePort, type KeylessLab, startKeylessLab } from './proxy-lab.js';

export interface AcmeLab {
  readonly lab: KeylessLab;
  readonly pebble: Pebble;
  /** The key server's config file: the token the account and certificate keys are made in. */
  readonly keyserverConfig: string;
  /** Where pebble's validation authority sends HTTP-01 requests: the proxy's `httpRedirect` port. */
  readonly httpPort: number;
  /** The proxy's `acme` section for this pebble (directory, its CA, the key server), with `overrides` on top. */
  acme(overrides?: Record<string, unknown>): Record<string, unknown>;
  /**
   * A 2-worker proxy (`acme`) serving `patterns` to the lab's origin, its plain-HTTP port the one pebble validates on,
   * with `acme(overrides)` as its acme section.
   */
  /** `overrides`: of the acme section; `top`: of the proxy config's other fields; `env`: added to the proxy's environment. */
  startProxy(
    patterns: readonly string[],
    overrides?: Record<string, unknown>,
    top?: Record<string, unknown>,
    env?: Record<string, string>,
    /** A command that execs the proxy (startClusterProxy). */
    wrapper?: readonly string[],
  ): Promise<ClusterProxy>;
  /** Runs the built `keyedge` CLI. */
  cli(args: readonly string[], timeoutMs?: number): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Stops pebble and the lab (the test stops its proxies first). */
  close(): Promise<void>;
}

/** `pebble`: extra pebble settings (`tlsPort` for TLS-ALPN-01 at the proxy's HTTPS port), `env`: pebble's environment. */
export async function startAcmeLab(options: { readonly pebble?: Record<string, unknown>; readonly env?: Record<string, string> } = {}): Promise<AcmeLab> {
  // The lab and pebble start side by side (each is seconds, mostly waiting for processes to come up); pebble's files
  // live in a directory of their own, the lab's not made yet.
  const httpPort = await freePort();
  const pebbleDir = tempDir('keyedge-pebble-');
  const [labStart, pebbleStart] = await Promise.allSettled([startKeylessLab(), startPebble(pebbleDir, httpPort, options.env ?? {}, options.pebble ?? {})]);
  if (labStart.status === 'rejected' || pebbleStart.status === 'rejected') {
    if (pebbleStart.status === 'fulfilled') await pebbleStart.value.stop();
    if (labStart.status === 'fulfilled') await labStart.value.close();
    removeDir(pebbleDir);
    throw labStart.status === 'rejected' ? labStart.reason : (pebbleStart as PromiseRejectedResult).reason;
  }
  const lab = labStart.value;
  const pebble = pebbleStart.value;
  try {
    const keyserverConfig = join(lab.dir, 'keyserver.json');
    const started = pebble;
    const acme = (overrides: Record<string, unknown> = {}): Record<string, unknown> => ({
      directory: started.directory,
      caBundle: started.tlsCaFile,
      keyserverConfig,
      orderTimeoutSeconds: 60,
      ...overrides,
    });
    return {
      lab,
      pebble: started,
      keyserverConfig,
      httpPort,
      acme,
      startProxy: (patterns, overrides = {}, top = {}, env = {}, wrapper = []) =>
        startClusterProxy(
          lab,
          'acme',
          (p) =>
            storeProxyConfig(lab, p, {
              httpRedirect: { host: '127.0.0.1', port: httpPort },
              domains: patterns.map((name) => ({ name, origin: `http://127.0.0.1:${lab.origin.port}` })),
              acme: acme(overrides),
              ...top,
            }),
          env,
          90_000,
          wrapper,
        ),
      cli: (args, timeoutMs = 120_000) =>
        new Promise((resolve) => {
          execFile(process.execPath, [CLI, ...args], { cwd: REPO, timeout: timeoutMs }, (err, stdout, stderr) => {
            resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr });
          });
        }),
      async close() {
        await started.stop();
        await lab.close();
        removeDir(pebbleDir);
      },
    };
  } catch (err) {
    await pebble.stop();
    await lab.close();
    removeDir(pebbleDir);
    throw err;
  }
}

export interface Pebble {
  readonly directory: string;
  /** Pebble's own HTTPS certificate, to trust for the directory. */
  readonly tlsCaFile: string;
  /** Its key, for a front that impersonates it (acme-fault-front.ts). */
  readonly tlsKeyFile: string;
  readonly managementPort: number;
  /** The DNS server's answer for `host` becomes `address` (pebble-challtestsrv's /add-a). */
  addA(host: string, address: string): Promise<void>;
  /** `host`'s A records added by `addA` are dropped: it gets the default answer, 127.0.0.1, again (/clear-a). */
  clearA(host: string): Promise<void>;
  /** `host` gets a CNAME to `target` (pebble-challtestsrv's /set-cname). */
  setCname(host: string, target: string): Promise<void>;
  /** The DNS server (`127.0.0.1:PORT`), for the proxy's CNAME check. */
  readonly dnsServer: string;
  /** The root that issued every certificate, as a PEM file (from /roots/0). */
  rootFile(): Promise<string>;
  /** Orders pebble logged as created so far. */
  orders(): number;
  stop(): Promise<void>;
}

export async function startPebble(dir: string, httpPort: number, env: Record<string, string> = {}, extra: Record<string, unknown> = {}): Promise<Pebble> {
  const key = join(dir, 'pebble-key.pem');
  const cert = join(dir, 'pebble-cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      '/CN=pebble',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    { stdio: 'ignore' },
  );
  const [listen, management, dns, dnsManagement, tlsPort] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  const configFile = join(dir, 'pebble.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${listen}`,
        managementListenAddress: `127.0.0.1:${management}`,
        certificate: cert,
        privateKey: key,
        httpPort,
        tlsPort,
        ocspResponderURL: '',
        externalAccountBindingRequired: false,
        ...extra,
      },
    }),
  );
  const children: ChildProcess[] = [];
  const dnsServer = spawn(
    'pebble-challtestsrv',
    [
      '-dns01',
      `127.0.0.1:${dns}`,
      '-http01',
      '',
      '-https01',
      '',
      '-tlsalpn01',
      '',
      '-management',
      `127.0.0.1:${dnsManagement}`,
      '-defaultIPv4',
      '127.0.0.1',
      '-defaultIPv6',
      '',
    ],
    { stdio: 'ignore' },
  );
  children.push(dnsServer);
  let log = '';
  const pebble = spawn('pebble', ['-config', configFile, '-dnsserver', `127.0.0.1:${dns}`], {
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(pebble);
  pebble.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  pebble.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const tlsCa = readFileSync(cert, 'utf8');
  const get = (url: string): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      https
        .get(url, { ca: tlsCa }, (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        })
        .on('error', reject);
    });
  const directory = `https://127.0.0.1:${listen}/dir`;
  for (let i = 0; ; i++) {
    try {
      if ((await get(directory)).status === 200) break;
    } catch {
      if (i > 200 || pebble.exitCode !== null) {
        for (const child of children) child.kill('SIGKILL');
        throw new Error(`pebble did not start: ${log.slice(-500)}`);
      }
      await sleep(100);
    }
  }
  return {
    directory,
    tlsCaFile: cert,
    tlsKeyFile: key,
    managementPort: management,
    dnsServer: `127.0.0.1:${dns}`,
    async setCname(host, target) {
      const res = await fetch(`http://127.0.0.1:${dnsManagement}/set-cname`, { method: 'POST', body: JSON.stringify({ host, target }) });
      if (res.status !== 200) throw new Error(`challtestsrv set-cname answered ${res.status}`);
    },
    async addA(host, address) {
      const res = await fetch(`http://127.0.0.1:${dnsManagement}/add-a`, { method: 'POST', body: JSON.stringify({ host, addresses: [address] }) });
      if (res.status !== 200) throw new Error(`challtestsrv add-a answered ${res.status}`);
    },
    async clearA(host) {
      const res = await fetch(`http://127.0.0.1:${dnsManagement}/clear-a`, { method: 'POST', body: JSON.stringify({ host }) });
      if (res.status !== 200) throw new Error(`challtestsrv clear-a answered ${res.status}`);
    },
    async rootFile() {
      const root = await get(`https://127.0.0.1:${management}/roots/0`);
      const file = join(dir, 'pebble-root.pem');
      writeFileSync(file, root.body);
      return file;
    },
    orders: () => (log.match(/Added order/gi) ?? []).length,
    async stop() {
      await Promise.all(
        children.map(
          (child) =>
            new Promise<void>((resolve) => {
              if (child.exitCode !== null || child.signalCode !== null) return resolve();
              child.once('exit', () => resolve());
              child.kill('SIGTERM');
            }),
        ),
      );
    },
  };
}
