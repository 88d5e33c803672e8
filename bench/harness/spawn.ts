/**
 * Processes and ports: free ports below the ephemeral range (also drawn by the tests); servers as their own process
 * group (a cluster primary and its workers die together), readiness polling; load clients (ab, autocannon, h2load),
 * parsed once they exit, every wait on them bounded (ab has crashed mid-run and hung). Pinned with taskset (which execs
 * the command: the pid is the program's).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';

const pinned = (cpus: string | undefined, command: readonly string[]) => (cpus === undefined ? [...command] : ['taskset', '-c', cpus, ...command]);

export type ManagedProcess = ReturnType<typeof spawnManaged>;

/** keyedge children's environment: the embedded token sets SOFTHSM2_CONF itself; the bench's NODE_OPTIONS stay out. */
export function childEnv(): NodeJS.ProcessEnv {
  const { SOFTHSM2_CONF: _conf, NODE_OPTIONS: _options, ...env } = process.env;
  return env;
}

/** Binds 127.0.0.1:port (0: the kernel picks) and releases it; resolves with the port, or undefined when taken. */
async function tryPort(port: number): Promise<number | undefined> {
  const server = net.createServer();
  const bound = await new Promise<boolean>((resolve) => server.once('error', () => resolve(false)).listen(port, '127.0.0.1', () => resolve(true)));
  if (!bound) return undefined;
  const chosen = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return chosen;
}

const handedOut = new Set<number>();
const PORT_RANGE = '/proc/sys/net/ipv4/ip_local_port_range';

/**
 * A free port below the ephemeral range (where an outgoing connection may take it first), never the same twice in a
 * process; with `slice` (a vitest worker's, 0-3) only 20000 + slice × 3000 and the 3000 above, so test files differ.
 */
export async function freePort(slice?: number): Promise<number> {
  const range = existsSync(PORT_RANGE) ? readFileSync(PORT_RANGE, 'utf8') : ''; // not Linux: the default range start
  const low = Number(/\d+/.exec(range)?.[0] ?? 32768);
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
 * Starts `command` in `cwd` with output to `logFile` and `extraEnv` over childEnv(); `detached`: its own process group.
 * `stop()`: SIGTERM (a cluster primary stops its workers), SIGKILL to the group after `graceMs`; `kill()`: SIGKILL now.
 */
export function spawnManaged(
  name: string,
  command: readonly string[],
  logFile: string,
  cpus: string | undefined,
  cwd: string,
  extraEnv: Readonly<Record<string, string>> = {},
  detached = true,
) {
  const full = pinned(cpus, command);
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
    } catch {} // gone already
  };
  const stop = async (graceMs = 5000) => {
    if (exited) return kill(); // the primary is gone; workers may linger
    child.kill('SIGTERM');
    const timer = setTimeout(kill, graceMs);
    await exit;
    clearTimeout(timer);
    kill();
  };
  const tail = (lines = 20) => (existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n') : []).slice(-lines - 1).join('\n');
  return { name, pid, child, logFile, command: full, exited: () => exited, stop, kill, tail };
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

/** The first line of `file` holding `"text"`, parsed from its first '{' (a JSON log line, maybe prefixed); undefined when none yet. */
export function jsonLine<T>(file: string, text: string): T | undefined {
  const lines = readFileSync(file, 'utf8').split('\n');
  const line = lines.find((l) => l.includes(`"${text}"`));
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

export type ClientProcess<T> = ReturnType<typeof startClient<T>>;
/** What `parse` gets: stdout, stderr lines (the first 20 and their count), how the client exited. */
export type ClientOutput = { stdout: string; stderr: readonly string[]; stderrLines: number; exitCode: number | null; signal: NodeJS.Signals | null };

export function startClient<T>(
  name: string,
  command: readonly string[],
  cpus: string | undefined,
  parse: (out: ClientOutput) => T,
  env: NodeJS.ProcessEnv = process.env,
) {
  const full = pinned(cpus, command);
  const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  const stderr: string[] = [];
  let stderrLines = 0;
  let killedAfterMs: number | undefined;
  child.stdout!.setEncoding('utf8').on('data', (t: string) => (stdout = (stdout + t).slice(-200_000)));
  child.stderr!.setEncoding('utf8').on('data', (t: string) => {
    for (const line of t.split('\n').filter(Boolean)) if (stderrLines++ < 20) stderr.push(line);
  });
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  const kill = () => {
    if (!exited()) child.kill('SIGKILL');
  };
  // 'close' once the pipes are drained; a grandchild holding them open does not hold us past 'exit' for long.
  const exit = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.once('exit', () => setTimeout(resolve, 1000).unref());
  });
  const done = new Promise<T>((resolve, reject) => {
    child.once('error', reject);
    void exit.then(() => {
      const how = child.signalCode ?? `status ${child.exitCode}`;
      const why = killedAfterMs === undefined ? `exited with ${how}` : `did not exit within ${killedAfterMs / 1000} s of being stopped: killed`;
      try {
        resolve(parse({ stdout, stderr, stderrLines, exitCode: child.exitCode, signal: child.signalCode }));
      } catch (err) {
        reject(new Error(`${name} ${why}: ${(err as Error).message}\n--- ${name} output ---\n${stdout.slice(-2000)}\n${stderr.join('\n')}`));
      }
    });
  });
  done.catch(() => undefined); // observed by whoever awaits it; never an unhandled rejection
  /** `signal` if any, SIGKILL after `graceMs`; then the report, or a rejection saying why there is none. */
  const stop = async (signal?: NodeJS.Signals, graceMs = 10_000) => {
    if (!exited() && signal !== undefined) child.kill(signal);
    const timer = setTimeout(() => {
      if (exited()) return;
      killedAfterMs = graceMs;
      kill();
    }, graceMs);
    await exit;
    clearTimeout(timer);
    return done;
  };
  return { pid: child.pid ?? -1, command: full, exited, kill, done, stop };
}

/** A parse step that refuses a client that did not exit cleanly (autocannon, h2load: status 0 or no report). */
export function exitedCleanly(out: ClientOutput): void {
  if (out.exitCode !== 0) throw new Error(`exit ${out.signal ?? `status ${out.exitCode}`}`);
}

/** A client's command line as a report shows it: taskset when pinned, spaced arguments quoted, per-run parts as placeholders. */
export function shownCommand(cpus: string | undefined, program: string, args: readonly string[], placeholders: readonly [RegExp, string][]): string {
  const line = pinned(cpus, [program, ...args.map((a) => (a.includes(' ') ? `'${a}'` : a))]).join(' ');
  return placeholders.reduce((text, [pattern, with_]) => text.replace(pattern, with_), line);
}
