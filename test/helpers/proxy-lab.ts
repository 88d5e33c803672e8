/**
 * A keyless lab for proxy tests: a real key server (child process, its own
 * SoftHSM2 token in a temp dir) holding an ECDSA P-256 and an RSA-2048 key,
 * certificates for those keys from a test CA, a real HTTP origin, and the
 * proxy's config pointing at all of it. The proxy itself is started by the
 * test (in-process worker, or the CLI), so each test decides how.
 *
 * The test process never opens the token: key generation and signing happen
 * in the key server's own processes.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import http from 'node:http';
import type net from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadProxyConfig } from '../../config/load.js';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { freePort as benchFreePort } from '../../bench/harness/spawn.js';
import { KeyserverClient } from '../../keyserver/client/client.js';
import { CLI, removeDir, sleep, tempDir } from './basics.js';
import { labToken, writeLabConfig } from './lab-token.js';
import { createCa, issueForPublicKey, type Issued, type TestCa, writePem } from './pki.js';

export interface LabKey {
  readonly label: string;
  readonly keyId: string;
  readonly spki: Buffer;
}

export interface KeylessLab {
  readonly dir: string;
  readonly socket: string;
  readonly adminPort: number;
  readonly ca: TestCa;
  readonly caFile: string;
  readonly keys: { readonly ec: LabKey; readonly rsa: LabKey };
  readonly origin: { readonly port: number; readonly requests: () => number };
  /** Writes a chain (leaf + CA) for `key` covering `names`; returns its path and the issued leaf. */
  certificate(name: string, key: LabKey, names: readonly string[], extra?: { ocspUrl?: string; notAfter?: Date }): Promise<{ file: string; leaf: Issued }>;
  proxyConfig(overrides: Record<string, unknown>): ProxyConfig;
  /** The key server's count of successful signs, from its /metrics. */
  signCount(): Promise<number>;
  stopKeyserver(): Promise<void>;
  startKeyserver(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A port nothing listens on, which stays free until the caller binds it: below Linux's ephemeral range, never twice in
 * a process (bench/harness/spawn.ts). Each vitest worker draws from its own slice (VITEST_POOL_ID), so two test files
 * running side by side never pick the same one.
 */
export const freePort = (): Promise<number> => benchFreePort(Math.max(0, (Number(process.env.VITEST_POOL_ID) || 1) - 1) % 4);

/** A port nothing listens on: for an origin that must refuse connections, or one that comes up later on a known port. */
export const refusedPort = freePort;

export async function startKeylessLab(): Promise<KeylessLab> {
  const dir = tempDir('keyedge-lab-');
  const adminPort = await freePort();
  const configFile = writeLabConfig(dir, adminPort);
  const socket = join(dir, 'state', 'keyserver.sock');
  const { ec: ecId, rsa: rsaId } = await labToken(dir, configFile);

  let child: ChildProcess | undefined;
  const startKeyserver = async (): Promise<void> => {
    child = spawn(process.execPath, [CLI, 'keyserver', '--config', configFile], { stdio: ['ignore', 'ignore', 'inherit'] });
    // A node start and a token login take seconds on a loaded 2-core machine: wait up to 30 s.
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      try {
        const client = await KeyserverClient.connect({ unixPath: socket });
        await client.ping();
        client.close();
        return;
      } catch {
        await sleep(50);
      }
    }
    // Not left running after the test gives up on it.
    child.kill('SIGKILL');
    throw new Error('the lab key server did not start');
  };
  const stopKeyserver = async (): Promise<void> => {
    const running = child;
    child = undefined;
    if (running === undefined || running.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      running.once('exit', () => resolve());
      running.kill('SIGTERM');
    });
  };
  await startKeyserver();

  const client = await KeyserverClient.connect({ unixPath: socket });
  const keys = {
    ec: { label: 'lab-ec', keyId: ecId, spki: await client.getPublicKey(ecId) },
    rsa: { label: 'lab-rsa', keyId: rsaId, spki: await client.getPublicKey(rsaId) },
  };
  client.close();

  const ca = await createCa('keyedge lab CA');
  const caFile = writePem(dir, 'ca', ca.certPem);
  let originRequests = 0;
  const origin = http.createServer((req, res) => {
    originRequests++;
    const body = JSON.stringify({ host: req.headers.host, url: req.url, forwarded: req.headers.forwarded, xff: req.headers['x-forwarded-for'] });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const originPort = (origin.address() as net.AddressInfo).port;

  return {
    dir,
    socket,
    adminPort,
    ca,
    caFile,
    keys,
    origin: { port: originPort, requests: () => originRequests },
    async certificate(name, key, names, extra = {}) {
      const leaf = await issueForPublicKey(ca, key.spki, { commonName: names[0] ?? name, dnsNames: names, ...extra });
      const file = writePem(dir, `${name}-chain`, `${leaf.certPem}\n${ca.certPem}`);
      return { file, leaf };
    },
    proxyConfig(overrides) {
      return loadProxyConfig(undefined, {
        stateDir: join(dir, 'state'),
        workers: 1,
        admin: null,
        log: { level: 'warn' },
        listen: [{ host: '127.0.0.1', port: 0, http2: true }],
        keyserver: { socket, timeoutMs: 250, breakerMs: 200 },
        domains: [
          { name: '*.lab.test', origin: `http://127.0.0.1:${originPort}` },
          { name: 'lab.test', origin: `http://127.0.0.1:${originPort}` },
        ],
        ...overrides,
      });
    },
    async signCount() {
      const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      let total = 0;
      for (const line of text.split('\n')) {
        if (line.startsWith('keyedge_keyserver_requests_total{') && line.includes('op="sign"') && line.includes('result="ok"')) {
          total += Number(line.slice(line.lastIndexOf(' ') + 1));
        }
      }
      return total;
    },
    stopKeyserver,
    startKeyserver,
    async close() {
      await stopKeyserver();
      await new Promise((resolve) => origin.close(resolve));
      removeDir(dir);
    },
  };
}

/** A pino destination that parses each JSON log line into `lines`, for assertions on what was logged. */
/**
 * The TLS tests' certificates, to spread into `lab.proxyConfig`: ECDSA for ec.lab.test and *.wild.lab.test (also
 * the default, for a hello without SNI), RSA for rsa.lab.test; any other name refused.
 */
export async function ecAndRsaServing(lab: KeylessLab): Promise<Record<string, unknown>> {
  const ec = await lab.certificate('ec', lab.keys.ec, ['ec.lab.test', '*.wild.lab.test']);
  const rsa = await lab.certificate('rsa', lab.keys.rsa, ['rsa.lab.test']);
  return {
    certificates: [
      { name: 'ec', chain: ec.file },
      { name: 'rsa', chain: rsa.file },
    ],
    sni: { default: 'ec', onUnknown: 'reject' },
  };
}

export function jsonLineSink(lines: Record<string, unknown>[]): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
}
