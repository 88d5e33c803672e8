/**
 * Processes and ports for the benches' servers: free ports below the ephemeral range (also drawn by the tests,
 * test/helpers/proxy-lab.ts), servers started detached as their own process group (so a cluster primary and its
 * workers, or nginx and its helpers, die together), readiness polling (a ready line in a JSON log), and a small HTTP GET
 * for admin endpoints.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logFile: string;
  readonly command: readonly string[];
  exited(): boolean;
  /** SIGTERM to the process (graceful: a cluster primary stops its workers), SIGKILL to its group after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL to the whole process group, synchronously. */
  kill(): void;
  tail(lines?: number): string;
}

/** The environment of keyedge children: the embedded token sets SOFTHSM2_CONF itself, and the bench's Node options must not reach the servers it measures. */
export function childEnv(): NodeJS.ProcessEnv {
  const { SOFTHSM2_CONF: _conf, NODE_OPTIONS: _options, ...env } = process.env;
  return env;
}

/** Binds 127.0.0.1:port (0: the kernel picks) and releases it; resolves with the port, or undefined when taken. */
async function tryPort(port: number): Promise<number | undefined> {
  const server = net.createServer();
  const bound = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
  if (!bound) return undefined;
  const chosen = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return chosen;
}

const handedOut = new Set<number>();

/**
 * A free port below the kernel's ephemeral range, never the same twice in a process: the servers bind it a few seconds
 * later, and a port from the ephemeral range (what listen(0) hands out) can be taken meanwhile by any outgoing
 * connection (ab opens thousands; a red CI once: EADDRINUSE on a proxy's port). Without `slice`: anywhere from 20000 up
 * to the ephemeral range, 50 tries, then any port. With `slice` (a vitest worker's, 0-3): only 20000 + slice × 3000
 * and the 3000 above, until one is free, so test files running side by side never pick the same.
 */
export async function freePort(slice?: number): Promise<number> {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: use the default range start
  }
  const [from, width] = slice === undefined ? [20_000, low - 20_000] : [20_000 + slice * 3000, 3000];
  for (let i = 0; slice !== undefined || (width > 1000 && i < 50); i++) {
    const port = from + Math.floor(Math.random() * width);
    if (handedOut.has(port) || (await tryPort(port)) === undefined) continue;
    handedOut.add(port);
    return port;
  }
  const port = await tryPort(0);
  if (port === undefined) throw new Error('no free port');
  return port;
}

/**
 * Starts `command` with output to `logFile`, in `cwd` (files a runtime drops, e.g. V8 logs, land there), with
 * `extraEnv` over the bench's child environment; `detached` (the default): its own process group, killed whole.
 */
export function spawnManaged(
  name: string,
  command: readonly string[],
  logFile: string,
  cpus: string | undefined,
  cwd: string,
  extraEnv: Readonly<Record<string, string>> = {},
  detached = true,
): ManagedProcess {
  const full = cpus === undefined ? [...command] : ['taskset', '-c', cpus, ...command];
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(full[0]!, full.slice(1), { detached, stdio: ['ignore', fd, fd], env: { ...childEnv(), ...extraEnv }, cwd });
  } finally {
    closeSync(fd);
  }
  const pid = child.pid ?? -1;
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => resolve(void (exited = true))));
  child.once('error', () => undefined);
  const kill = () => {
    try {
      if (pid > 0 && detached) process.kill(-pid, 'SIGKILL');
      else if (!exited) child.kill('SIGKILL');
    } catch {
      // gone already
    }
  };
  return {
    name,
    pid,
    child,
    logFile,
    command: full,
    exited: () => exited,
    async stop(graceMs = 5000) {
      if (exited) return kill(); // the primary is gone; workers may linger
      child.kill('SIGTERM');
      const timer = setTimeout(kill, graceMs);
      await exit;
      clearTimeout(timer);
      kill();
    },
    kill,
    tail(lines = 20) {
      try {
        return readFileSync(logFile, 'utf8')
          .split('\n')
          .slice(-lines - 1)
          .join('\n');
      } catch {
        return '';
      }
    },
  };
}

/** Polls `check` (a throw counts as not yet) every `pollMs` until true; fails when `process` exits or after `timeoutMs`, with its log's tail. */
export async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, process?: ManagedProcess, pollMs = 100): Promise<void> {
  const started = Date.now();
  const tail = () => (process ? `\n--- ${process.logFile} ---\n${process.tail()}` : '');
  for (;;) {
    if (await (async () => check())().catch(() => false)) return;
    if (process?.exited()) throw new Error(`${what}: the process exited${tail()}`);
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not ready within ${timeoutMs} ms${tail()}`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/** The first line of `file` that holds `"text"`, parsed from its first '{' (a JSON log line, maybe prefixed); undefined when none yet. */
export function jsonLine<T>(file: string, text: string): T | undefined {
  const line = readFileSync(file, 'utf8')
    .split('\n')
    .find((l) => l.includes(`"${text}"`));
  return line === undefined ? undefined : (JSON.parse(line.slice(line.indexOf('{'))) as T);
}

export async function httpGet(url: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: response.status, body: await response.text() };
}

export function tcpOpen(port: number): Promise<boolean> {
  const socket = net.connect(port, '127.0.0.1');
  return new Promise<boolean>((resolve) => socket.once('connect', () => resolve(true)).once('error', () => resolve(false))).finally(() => socket.destroy());
}
