/**
 * A proxy worker in a child process of its own, so that what is measured in
 * it (event-loop delay while a keyless RPC blocks) is not distorted by the
 * test's clients. The child runs the compiled worker (dist/), from a config
 * file, and answers "stats" on stdin with one JSON line:
 * { maxDelayMs (since the last "stats"), bridge: KeylessStats }.
 *
 *   const proxy = await startProxyChild(dir, 'a', configObject);
 *   const { maxDelayMs, bridge } = await proxy.stats();
 *   await proxy.stop();
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import type { KeylessStats } from '../../proxy/keyless/bridge.js';
import { REPO } from './basics.js';

const SCRIPT = `
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { loadProxyConfig } from ${JSON.stringify(pathToFileURL(join(REPO, 'dist/config/load.js')).href)};
import { createLogger } from ${JSON.stringify(pathToFileURL(join(REPO, 'dist/keyserver/shared/log.js')).href)};
import { startProxyWorker } from ${JSON.stringify(pathToFileURL(join(REPO, 'dist/proxy/worker.js')).href)};

const config = loadProxyConfig(process.argv[2]);
const worker = await startProxyWorker(config, { log: createLogger('proxy-child', 'warn', process.stderr) });
const delay = monitorEventLoopDelay({ resolution: 10 });
delay.enable();
process.stdout.write(JSON.stringify({ port: worker.ports[0] }) + '\\n');
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() !== 'stats') return;
  const answer = { maxDelayMs: delay.max / 1e6, bridge: worker.keySource.stats() };
  delay.reset();
  process.stdout.write(JSON.stringify(answer) + '\\n');
});
process.stdin.once('end', () => void worker.close().then(() => process.exit(0)));
`;

export interface ProxyChildStats {
  readonly maxDelayMs: number;
  readonly bridge: KeylessStats;
}

export interface ProxyChild {
  readonly child: ChildProcess;
  readonly port: number;
  alive(): boolean;
  stats(): Promise<ProxyChildStats>;
  /** stderr so far (the worker's warn/error log lines). */
  output(): string;
  stop(): Promise<void>;
}

export async function startProxyChild(dir: string, name: string, config: Record<string, unknown>): Promise<ProxyChild> {
  const script = join(dir, 'proxy-child.mjs');
  writeFileSync(script, SCRIPT);
  const configFile = join(dir, `proxy-${name}.json`);
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  const child = spawn(process.execPath, [script, configFile], { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => void (stderr += chunk.toString('utf8')));
  // It also exits when its stdin closes, so it never outlives this process.
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const waiting: ((line: string) => void)[] = [];
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const next = waiting.shift();
    if (next === undefined) lines.push(line);
    else next(line);
  });
  const nextLine = (timeoutMs: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const queued = lines.shift();
      if (queued !== undefined) return resolve(queued);
      const timer = setTimeout(() => reject(new Error(`no answer from the proxy child within ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
      waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
      void exited.then(() => reject(new Error(`the proxy child exited (${child.exitCode ?? child.signalCode}):\n${stderr}`)));
    });
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  const stop = async (): Promise<void> => {
    if (alive()) child.kill('SIGKILL');
    await exited;
  };
  let port: number;
  try {
    port = (JSON.parse(await nextLine(20_000)) as { port: number }).port;
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    child,
    port,
    alive,
    async stats() {
      child.stdin!.write('stats\n');
      return JSON.parse(await nextLine(5000)) as ProxyChildStats;
    },
    output: () => stderr,
    stop,
  };
}
