/**
 * `keyedge proxy` as an operator runs it: the compiled CLI (dist/) in a child
 * process, a cluster primary with its workers and the admin port, from a
 * config file written here. Its JSON log lines (stdout) are parsed and kept.
 *
 *   const proxy = await startProxyCluster(dir, configObject);   // resolves once /readyz says ready
 *   ... proxy.lines ...
 *   await proxy.stop();                                          // SIGTERM, graceful
 *
 * The config must have `workers` and a non-null `admin` (readiness is read there).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, REPO, sleep } from './keyserver.js';

export interface ProxyCluster {
  readonly child: ChildProcess;
  readonly adminPort: number;
  /** Every JSON log line so far (primary and workers), parsed. */
  readonly lines: readonly Record<string, unknown>[];
  /** The pids of the workers that reported listening. */
  workerPids(): Set<number>;
  alive(): boolean;
  /** SIGTERM (graceful), SIGKILL if still running after 15 s. */
  stop(): Promise<void>;
}

/** Waits until `check` gives a value, or rejects after `timeoutMs` naming `what`. */
export async function waitUntil<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

export async function startProxyCluster(dir: string, config: { readonly workers: number; readonly admin: { readonly host: string; readonly port: number } } & Record<string, unknown>): Promise<ProxyCluster> {
  const configFile = join(dir, 'proxy-cluster.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  const child = spawn(process.execPath, [CLI, 'proxy', '--config', configFile], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  let pending = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    pending += chunk.toString('utf8');
    const parts = pending.split('\n');
    pending = parts.pop() ?? '';
    for (const part of parts) if (part.startsWith('{')) lines.push(JSON.parse(part) as Record<string, unknown>);
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => void (stderr += chunk.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  const workerPids = (): Set<number> =>
    new Set(lines.filter((l) => String(l.name).startsWith('proxy-worker') && l.msg === 'proxy worker listening').map((l) => l.pid as number));
  const stop = async (): Promise<void> => {
    if (!alive()) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(killer);
  };
  const adminPort = config.admin.port;
  try {
    await waitUntil('the proxy cluster to report ready on /readyz', async () => {
      if (!alive()) throw new Error(`keyedge proxy exited during start-up (${child.exitCode ?? child.signalCode}):\n${stderr}\n${JSON.stringify(lines)}`);
      const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`).then(
        (res) => res.status === 200,
        () => false,
      );
      return ready && workerPids().size === config.workers ? true : undefined;
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { child, adminPort, lines, workerPids, alive, stop };
}
