/**
 * `keyedge proxy` run as an operator runs it (primary + workers, admin port,
 * token file) from a config file the test can rewrite, with its JSON log
 * lines collected for assertions.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CLI, sleep } from './basics.js';
import { freePort, type KeylessLab } from './proxy-lab.js';

export interface ClusterPorts {
  readonly port: number;
  readonly adminPort: number;
  readonly storeDir: string;
  readonly tokenFile: string;
}

/**
 * The primary's cluster workers, oldest first: its children that node:cluster forked (NODE_UNIQUE_ID in their
 * environment), not the `keyedge key` runs its ACME issuer starts (token-keys.ts), which are children too.
 */
export function clusterWorkerPids(primaryPid: number): number[] {
  let children: number[];
  try {
    children = execFileSync('pgrep', ['-P', String(primaryPid)], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map(Number);
  } catch {
    return [];
  }
  return children.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/environ`, 'latin1')
        .split('\0')
        .some((entry) => entry.startsWith('NODE_UNIQUE_ID='));
    } catch {
      return false;
    }
  });
}

/** A cluster config served from the certificate store: every *.lab.test name to the lab's origin, admin API with the token. */
export function storeProxyConfig(lab: KeylessLab, p: ClusterPorts, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    stateDir: join(lab.dir, 'state'),
    workers: 2,
    keyserver: { socket: lab.socket },
    listen: [{ host: '127.0.0.1', port: p.port, http2: true }],
    domains: [{ name: '*.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` }],
    admin: { host: '127.0.0.1', port: p.adminPort, tokenFile: p.tokenFile },
    certStore: { dir: p.storeDir },
    log: { level: 'info' },
    ...overrides,
  };
}

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface ClusterProxy {
  readonly port: number;
  readonly adminPort: number;
  readonly configFile: string;
  readonly storeDir: string;
  readonly lines: Record<string, unknown>[];
  readonly pid: number;
  writeConfig(config: Record<string, unknown>): void;
  admin(method: string, path: string, body?: string, token?: string | null): Promise<{ status: number; text: string }>;
  stop(): Promise<void>;
}

/** The JSON lines a child writes to `stdout` (its log), parsed as they arrive, a line split across chunks included. */
export function jsonLinesOf(stdout: Readable, lines: Record<string, unknown>[] = []): Record<string, unknown>[] {
  let pending = '';
  stdout.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const parts = pending.split('\n');
    pending = parts.pop() ?? '';
    for (const part of parts) if (part.startsWith('{')) lines.push(JSON.parse(part) as Record<string, unknown>);
  });
  return lines;
}

/** `intervalMs`: the pause between checks; longer for a check that costs (a TLS handshake, a key server signature each). */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000, intervalMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/**
 * `config(port, adminPort, storeDir)` gives the file's content; the token file and store dir live in a fresh dir under the lab.
 * `env` is added to the proxy's environment (its workers inherit it). `wrapper`: a command that execs the proxy (its pid
 * stays the primary's), e.g. setpriv to start it with fewer capabilities.
 */
export async function startClusterProxy(
  lab: KeylessLab,
  name: string,
  config: (ports: ClusterPorts) => Record<string, unknown>,
  env: Record<string, string> = {},
  readyTimeoutMs = 30_000,
  wrapper: readonly string[] = [],
): Promise<ClusterProxy> {
  const port = await freePort();
  const adminPort = await freePort();
  const dir = join(lab.dir, name);
  const storeDir = join(dir, 'certs');
  const tokenFile = join(dir, 'admin.token');
  const configFile = join(dir, 'proxy.json');
  mkdirSync(storeDir, { recursive: true });
  writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`, { mode: 0o600 });
  const writeConfig = (content: Record<string, unknown>): void => writeFileSync(configFile, JSON.stringify(content, null, 2));
  writeConfig(config({ port, adminPort, storeDir, tokenFile }));
  const command = [...wrapper, process.execPath, CLI, 'proxy', '--config', configFile];
  const child: ChildProcess = spawn(command[0]!, command.slice(1), {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  const lines = jsonLinesOf(child.stdout!);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitFor(
      'the proxy to be ready',
      async () => {
        if (child.exitCode !== null) throw new Error(`the proxy exited (${child.exitCode}): ${JSON.stringify(lines.slice(-3))}`);
        try {
          return (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200 ? true : undefined;
        } catch {
          return undefined;
        }
      },
      readyTimeoutMs,
      // Every 100 ms: a start takes seconds, and each check is an HTTP request the starting primary answers (some 3 ms
      // of CPU with the client's, 40 a second at 25 ms, about half a second of CPU a start).
      100,
    );
  } catch (err) {
    // The test gets no handle to stop it with: a proxy left running would outlive the test run.
    if (child.exitCode === null) child.kill('SIGTERM');
    // What the proxy last said is what tells a slow start from a stuck one.
    if (err instanceof Error) err.message += `; its last lines: ${JSON.stringify(lines.slice(-5))}`;
    throw err;
  }
  return {
    port,
    adminPort,
    configFile,
    storeDir,
    lines,
    pid: child.pid!,
    writeConfig,
    async admin(method, path, body, token = ADMIN_TOKEN) {
      const response = await fetch(`http://127.0.0.1:${adminPort}${path}`, {
        method,
        ...(body === undefined ? {} : { body }),
        headers: token === null ? {} : { authorization: `Bearer ${token}` },
      });
      return { status: response.status, text: await response.text() };
    },
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}
