/**
 * The rig of layers.ts: a temp dir with a throwaway CA's ECDSA P-256 certificate for `bench.test` and the demo origin;
 * the servers by name, optionally under callgrind and with Node flags; the loads, run to a fixed number of operations.
 * Servers: `inmemory` (alias `keyedge`: inmemory.ts, one worker), `floor` / `floor-h2` (floor.ts: bare node:https /
 * node:http2, no origin), floor.ts's bare forwarders to the same origin: `bare-undici` (alias `fwd-h1`), `bare-llhttp`,
 * `fwd-h2` (node:http2 + undici), `llhttp-h2` (node:http2 + native llhttp); `nginx`: the keep-alive bench's configuration as one process (`master_process off`).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { minus, threads } from '../harness/proc-cpu.js';
import { freePort, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { nginxConfig } from '../keepalive/lab.js';
import { KEYEDGE_CLI, LabPki } from '../lab/keyserver.js';
import { parseAbOutput } from './ab.js';
import type { FloorConfig } from './floor.js';
import { startFileKeyed } from './lab.js';

const execFileAsync = promisify(execFile);
const HOST = 'bench.test';

type Rig = Awaited<ReturnType<typeof openRig>>;

/** A temp dir `keyedge-<name>-*` with the certificate (file-chain.pem, file.key) and the demo origin running. */
export async function openRig(name: string) {
  const dir = mkdtempSync(join(tmpdir(), `keyedge-${name}-`));
  const servers: Running[] = [];
  let origin: ManagedProcess | undefined;
  /** Stops what the rig started and removes its dir (kept with `keep`). */
  const close = async (keep = false) => {
    for (const s of servers) await s.proc.stop(s.graceMs).catch(() => s.proc.kill());
    origin?.kill();
    if (keep) process.stderr.write(`kept ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  };
  try {
    const pki = new LabPki(dir, `keyedge ${name} CA`);
    pki.fileCert('ec-p256', HOST, 'file');
    const port = await freePort();
    origin = spawnManaged('origin', [process.execPath, KEYEDGE_CLI, 'demo-origin', '--port', String(port)], join(dir, 'origin.log'), undefined, dir);
    await waitFor('demo origin', () => tcpOpen(port), 30_000, origin);
    return { dir, origin: `http://127.0.0.1:${port}`, servers, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * `pid`: the process that serves (the in-memory cluster's worker, else the one started: valgrind runs it as the same pid);
 * `graceMs`: how long a graceful stop may take (a callgrind dump at exit takes long); `callgrind`: the dumps taken so far.
 */
export type Running = { readonly name: string; readonly proc: ManagedProcess; readonly port: number; pid: number; readonly graceMs: number } & {
  callgrind?: { dumps: number };
};

const FORWARDERS: Record<string, { client: NonNullable<FloorConfig['forward']>['client']; h2?: true }> = {
  'bare-undici': { client: 'undici' },
  'fwd-h1': { client: 'undici' },
  'bare-llhttp': { client: 'llhttp' },
  'fwd-h2': { client: 'undici', h2: true },
  'llhttp-h2': { client: 'llhttp', h2: true },
};
export const SERVERS = ['inmemory', 'keyedge', 'floor', 'floor-h2', ...Object.keys(FORWARDERS), 'nginx'];

/** Instrumentation off until a window; a file per thread and dump: the main thread apart from libuv's pool and V8's helpers. */
const CALLGRIND = ['valgrind', '--tool=callgrind', '--trace-children=yes', '--instr-atstart=no', '--dump-instr=no', '--separate-threads=yes'];

/** Starts server `name`, waits until it serves, registers it for `rig.close()`; nginx logs requests at `logLevel` info and below, as the proxy. */
export async function startServer(rig: Rig, name: string, o: { callgrind: boolean; nodeArgs: readonly string[]; logLevel: string }): Promise<Running> {
  const [port, admin] = [await freePort(), await freePort()];
  const f = (x: string) => join(rig.dir, x);
  const wrap = o.callgrind ? [...CALLGRIND, `--callgrind-out-file=${f(`cg-${name}.%p`)}`] : [];
  let started: { proc: ManagedProcess; serving: Promise<number> };
  if (name === 'nginx') {
    mkdirSync(f('nginx-tmp'), { recursive: true, mode: 0o700 });
    const config = nginxConfig(rig.dir, port, Number(new URL(rig.origin).port), ['trace', 'debug', 'info'].includes(o.logLevel));
    writeFileSync(f('nginx.conf'), `master_process off;\n${config}`);
    const proc = spawnManaged(name, [...wrap, 'nginx', '-e', f('nginx-error.log'), '-p', rig.dir, '-c', f('nginx.conf')], f('nginx.log'), undefined, rig.dir);
    // One process: it serves once its port is open.
    started = { proc, serving: waitFor(name, () => tcpOpen(port), 600_000, proc).then(() => proc.pid) };
  } else {
    const certs = [{ name: 'ec', serverName: HOST, chain: f('file-chain.pem'), key: f('file.key') }];
    const [command, fwd] = [[...wrap, process.execPath, ...o.nodeArgs], FORWARDERS[name]];
    const options = { port, admin, workers: 1, profile: 'intermediate', logLevel: o.logLevel, origin: rig.origin, domain: HOST } as const;
    const floor = { h2: name === 'floor-h2' || fwd?.h2, forward: fwd && { origin: rig.origin, client: fwd.client } };
    const kind = name === 'inmemory' || name === 'keyedge' ? 'inmemory' : 'node-floor';
    started = startFileKeyed(name, kind, certs, { ...options, dir: rig.dir, command, cpus: undefined, timeoutMs: 600_000 }, floor);
  }
  const running: Running = { name, port, proc: started.proc, pid: started.proc.pid, graceMs: o.callgrind ? 300_000 : 30_000 };
  if (o.callgrind) running.callgrind = { dumps: 0 };
  rig.servers.push(running);
  running.pid = await started.serving;
  return running;
}

export const LOADS = ['full', 'keepalive', 'full-h1', 'full-h2', 'keepalive-h2'] as const;
export type Load = (typeof LOADS)[number];
export const isFull = (load: Load): boolean => load.startsWith('full');
/** The proxy and nginx speak every protocol; the floors and bare forwarders one each (the `-h2` ones only h2, the others only HTTP/1.x). */
export const speaks = (server: string, load: Load): boolean =>
  server === 'inmemory' || server === 'keyedge' || server === 'nginx' || server.endsWith('-h2') === load.endsWith('-h2');

/**
 * Runs `n` operations of `load` against `port`; returns how many ran. `full`: ab, a new connection per GET; `keepalive`:
 * ab -k on `concurrency` connections; `full-h1`/`-h2`: h2load, a new connection per GET (ALPN http/1.1 or h2),
 * `concurrency` at a time; `keepalive-h2`: h2load -c 4 -m 10 (bench/keepalive's h2 load).
 */
export async function drive(load: Load, port: number, n: number, concurrency: number): Promise<number> {
  if (load === 'full' || load === 'keepalive') {
    const args = ['-q', '-r', '-s', '120', '-f', 'TLS1.3', '-H', `Host: ${HOST}`, '-n', String(n), '-c', String(concurrency)];
    if (load === 'keepalive') args.push('-k');
    const { stdout } = await execFileAsync('ab', [...args, `https://127.0.0.1:${port}/`], { maxBuffer: 1 << 22 });
    const { failedRequests, non2xx } = parseAbOutput(stdout);
    if (failedRequests !== 0 || non2xx !== 0) throw new Error(`ab: ${failedRequests} failed, ${non2xx} non-2xx requests`);
    return n;
  }
  // h2load counts the GETs that got a 2xx: under valgrind a connection now and then times out; more than 2% throws.
  const step = isFull(load) ? concurrency : n;
  let served = 0;
  for (let done = 0; done < n; done += step) {
    const size = String(Math.min(step, n - done));
    // Full: as many clients as requests, so each connection does one GET and closes.
    const shape = isFull(load) ? ['-n', size, '-c', size] : ['-n', size, '-c', '4', '-m', '10'];
    const args = [...shape, `--npn-list=${load === 'full-h1' ? 'http/1.1' : 'h2'}`, `--connect-to=127.0.0.1:${port}`, `https://${HOST}:${port}/`];
    const { stdout } = await execFileAsync('h2load', args, { maxBuffer: 1 << 22 });
    served += Number(/status codes: (\d+) 2xx/.exec(stdout)?.[1] ?? 'NaN');
  }
  if (!(served >= n * 0.98)) throw new Error(`h2load ${load}: ${served} of ${n} requests got a 2xx`);
  return served;
}

/** One measured window: `fromUs`–`toUs` on the monotonic clock (as a V8 CPU profile's), CPU per thread of every process of the server. */
export type Window = Awaited<ReturnType<typeof measure>>;

/** `n` operations of `load` on `s` (`concurrency`: ab -c, h2load's full connections at a time); under callgrind, instructions too. */
export async function measure(rig: Rig, s: Running, load: Load, n: number, concurrency: number) {
  const [cpu, nowUs] = [() => threads(s.pid, s.name === 'nginx'), () => Number(process.hrtime.bigint() / 1000n)];
  if (s.callgrind) await execFileAsync('callgrind_control', ['-i', 'on', String(s.pid)]);
  const [before, fromUs] = [cpu(), nowUs()];
  const operations = await drive(load, s.port, n, concurrency);
  const window = { server: s.name, load, operations, threads: minus(cpu(), before), fromUs, toUs: nowUs() };
  if (!s.callgrind) return { ...window, instructions: undefined as { main: number; all: number } | undefined };
  await execFileAsync('callgrind_control', ['-d', load, String(s.pid)]);
  await execFileAsync('callgrind_control', ['-i', 'off', String(s.pid)]);
  // Dump N of the server: one file per thread, `cg-<name>.<pid>.<N>-<thread>`, the main thread's `-01`.
  const prefix = `cg-${s.name}.${s.pid}.${++s.callgrind.dumps}-`;
  const files = readdirSync(rig.dir).filter((x) => x.startsWith(prefix));
  if (!files.includes(`${prefix}01`)) throw new Error(`no callgrind dump ${s.callgrind.dumps} of ${s.name}'s main thread (pid ${s.pid})`);
  const all = files.reduce((sum, x) => sum + callgrindInstructions(join(rig.dir, x)), 0);
  return { ...window, instructions: { main: callgrindInstructions(join(rig.dir, `${prefix}01`)), all } };
}

/**
 * A callgrind dump's instructions as the sum of its self costs (every cost line but the inclusive one after each
 * `calls=`): with instrumentation switched on mid-run, calls entered before return unseen and `summary:` wraps below 0.
 */
function callgrindInstructions(file: string): number {
  let [total, skipNext] = [0, false];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.startsWith('calls=')) skipNext = true;
    else if (/^[+\-*]?\d*\s+\d+$/.test(line)) {
      if (!skipNext) total += Number(line.split(/\s+/).at(-1));
      skipNext = false;
    }
  }
  return total;
}
