/**
 * The rig of the handshake investigation tools (layers.ts, threads.ts,
 * h2-threads.ts): a temp dir with a throwaway CA's ECDSA P-256 certificate
 * for `bench.test` and the demo origin; the servers they measure, by name,
 * each behind an optional wrapper (valgrind, stdbuf) and Node flags; the pid
 * that serves; the loads, each run to a fixed number of operations (consumed
 * CPU and counts, not rates: they hold on a loaded machine); and callgrind's
 * per-thread dumps.
 *
 * Servers: `inmemory` (alias `keyedge`: inmemory.ts, the real cluster, one
 * worker, key files), `floor` / `floor-h2` (floor.ts: bare node:https /
 * node:http2, fixed 1 KiB answer, no origin), the bare forwarders of floor.ts
 * to the same origin: `bare-undici` (alias `fwd-h1`), `bare-node-http`,
 * `bare-llhttp`, `bare-llhttp-consume` (lean-forwarder.ts) and `fwd-h2`
 * (node:http2 + undici), and `nginx`: the keep-alive bench's configuration
 * (`listen … ssl http2`, bench/keepalive/lab.ts) as one process
 * (`master_process off`, so the pid measured is the one that serves), with a
 * stub_status listener on the admin port for the readiness probe.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort, jsonLine, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { nginxConfig } from '../keepalive/lab.js';
import { KEYEDGE_CLI } from '../lab/keyserver.js';
import { LabPki } from '../lab/pki.js';
import { parseAbOutput } from './ab.js';
import { AlpnLoad } from './alpn.js';
import type { FloorConfig } from './floor.js';
import { fileKeyConfig } from './lab.js';

const execFileAsync = promisify(execFile);
const script = (name: string) => fileURLToPath(new URL(`./${name}.js`, import.meta.url));
export const HOST = 'bench.test';

export interface Rig {
  readonly dir: string;
  /** The CA's PEM, for clients that verify. */
  readonly ca: string;
  /** http://127.0.0.1:port of the demo origin. */
  readonly origin: string;
  /** What startServer started, for close(). */
  readonly servers: Running[];
  /** Stops what the rig started and removes its dir (kept with `keep`). */
  close(keep?: boolean): Promise<void>;
}

/** A temp dir `keyedge-<name>-*` with the certificate (file-chain.pem, file.key) and the demo origin running. */
export async function openRig(name: string): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), `keyedge-${name}-`));
  const servers: Running[] = [];
  let origin: ManagedProcess | undefined;
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
    return { dir, ca: readFileSync(pki.caFile, 'utf8'), origin: `http://127.0.0.1:${port}`, servers, close };
  } catch (e) {
    await close();
    throw e;
  }
}

export interface Running {
  readonly name: string;
  readonly proc: ManagedProcess;
  readonly port: number;
  /** The process that serves: the in-memory cluster's worker, else the process started (under valgrind: node or nginx itself, same pid). */
  readonly pid: number;
  /** How long a graceful stop may take (a callgrind dump at exit takes long). */
  readonly graceMs: number;
}

export interface StartOptions {
  /** Before the binary: valgrind's command, stdbuf, or nothing. */
  readonly wrap?: readonly string[];
  /** Flags of the Node servers' node. */
  readonly nodeArgs?: readonly string[];
  readonly logLevel?: string;
  /** nginx writes an access log line per request (parity with the proxy at 'info'). */
  readonly accessLog?: boolean;
  readonly env?: Readonly<Record<string, string>>;
  readonly graceMs?: number;
}

const FORWARDERS: Record<string, { client: NonNullable<FloorConfig['forward']>['client']; h2?: true }> = {
  'bare-undici': { client: 'undici' },
  'fwd-h1': { client: 'undici' },
  'bare-node-http': { client: 'node-http' },
  'bare-llhttp': { client: 'llhttp' },
  'bare-llhttp-consume': { client: 'llhttp-consume' },
  'fwd-h2': { client: 'undici', h2: true },
};
export const SERVERS = ['inmemory', 'keyedge', 'floor', 'floor-h2', ...Object.keys(FORWARDERS), 'nginx'];

/** Starts server `name` of the rig, waits until it serves, and registers it for `rig.close()`. */
export async function startServer(rig: Rig, name: string, o: StartOptions = {}): Promise<Running> {
  if (!SERVERS.includes(name)) throw new Error(`unknown server '${name}' (${SERVERS.join(', ')})`);
  const [port, admin] = [await freePort(), await freePort()];
  const f = (x: string) => join(rig.dir, x);
  const wrap = o.wrap ?? [];
  let command: string[];
  if (name === 'nginx') {
    mkdirSync(f('nginx-tmp'), { recursive: true, mode: 0o700 });
    const status = `  server { listen 127.0.0.1:${admin}; access_log off; location = /status { stub_status; } }\n}\n`;
    const originPort = Number(new URL(rig.origin).port);
    writeFileSync(f('nginx.conf'), `master_process off;\n${nginxConfig(rig.dir, port, originPort, o.accessLog ?? true).replace(/}\n$/, status)}`);
    command = [...wrap, 'nginx', '-e', f('nginx-error.log'), '-p', rig.dir, '-c', f('nginx.conf')];
  } else {
    const inmemory = name === 'inmemory' || name === 'keyedge';
    const certs = [{ name: 'ec', serverName: HOST, chain: f('file-chain.pem'), key: f('file.key') }];
    const base = { port, admin, workers: 1, profile: 'intermediate', logLevel: o.logLevel ?? 'info', origin: rig.origin, domain: HOST } as const;
    const fwd = FORWARDERS[name];
    const config = fileKeyConfig(inmemory ? 'inmemory' : 'node-floor', certs, base);
    const floor = { ...(config as FloorConfig), h2: name === 'floor-h2' || fwd?.h2, forward: fwd && { origin: rig.origin, client: fwd.client } };
    writeFileSync(f(`${name}.json`), JSON.stringify(inmemory ? config : floor));
    command = [...wrap, process.execPath, ...(o.nodeArgs ?? []), script(inmemory ? 'inmemory' : 'floor'), '--config', f(`${name}.json`)];
  }
  const proc = spawnManaged(name, command, f(`${name}.log`), undefined, rig.dir, o.env);
  const running = { name, proc, port, pid: proc.pid, graceMs: o.graceMs ?? 10_000 };
  rig.servers.push(running);
  if (name === 'inmemory' || name === 'keyedge') return { ...running, pid: await inMemoryWorkerPid(proc) };
  await waitFor(name, () => tcpOpen(admin), 600_000, proc);
  return running;
}

/** The pid of the in-memory server's first worker (inmemory.ts), from the primary's `in-memory ready` log line. */
export async function inMemoryWorkerPid(proc: ManagedProcess, timeoutMs = 600_000): Promise<number> {
  let pid: number | undefined;
  const ready = () => (pid = jsonLine<{ workers: number[] }>(proc.logFile, 'in-memory ready')?.workers[0]) !== undefined;
  await waitFor('in-memory ready', ready, timeoutMs, proc);
  return pid!;
}

export const LOADS = ['full', 'keepalive', 'full-h1', 'full-h2', 'keepalive-h2', 'alpn-h1', 'alpn-h2'] as const;
export type Load = (typeof LOADS)[number];
export const isFull = (load: Load): boolean => load.startsWith('full') || load.startsWith('alpn');
/** The proxy and nginx speak every protocol; the floors and bare forwarders one each (the `-h2` ones only h2, the others only HTTP/1.x). */
export const speaks = (server: string, load: Load): boolean =>
  server === 'inmemory' || server === 'keyedge' || server === 'nginx' || server.endsWith('-h2') === load.endsWith('-h2');

/**
 * Runs `n` operations of `load` against `port`; returns how many ran.
 *   full          ab -f TLS1.3, a new connection per GET (HTTP/1.0, no keep-alive);
 *   keepalive     ab -k, `concurrency` connections;
 *   full-h1/-h2   h2load, a new connection per GET (HTTP/1.1, then closed / ALPN h2: preface, SETTINGS, one stream, GOAWAY), `concurrency` at a time;
 *   keepalive-h2  h2load -c 4 -m 10 (bench/keepalive's h2 load): 10 streams in flight on each of 4 connections;
 *   alpn-h1/-h2   the handshake bench's ALPN client (alpn.ts, `concurrency` loops): a new connection per GET.
 */
export async function drive(load: Load, port: number, n: number, concurrency: number, ca: string): Promise<number> {
  if (load === 'alpn-h1' || load === 'alpn-h2') {
    const alpn = new AlpnLoad({ port, serverName: HOST, ca, loops: concurrency, protocol: load === 'alpn-h1' ? 'http/1.1' : 'h2' });
    alpn.start();
    while (alpn.completed + alpn.errors < n) await new Promise((r) => setTimeout(r, 20));
    if ((await alpn.stop(300_000)) !== 0) throw new Error('alpn: connections still out');
    if (alpn.errors !== 0) throw new Error(`${load}: ${alpn.errors} failed (${alpn.firstError})`);
    return alpn.completed;
  }
  if (load === 'full' || load === 'keepalive') {
    const args = ['-q', '-r', '-n', String(n), '-c', String(concurrency), '-s', '120', '-f', 'TLS1.3', '-H', `Host: ${HOST}`];
    if (load === 'keepalive') args.push('-k');
    const { stdout } = await execFileAsync('ab', [...args, `https://127.0.0.1:${port}/`], { maxBuffer: 1 << 22 });
    const { failedRequests, non2xx } = parseAbOutput(stdout);
    if (failedRequests !== 0 || non2xx !== 0) throw new Error(`ab: ${failedRequests} failed, ${non2xx} non-2xx requests`);
    return n;
  }
  // h2load (Debian nghttp2-client) counts the GETs that got a 2xx: under valgrind a connection now and then
  // times out, and the operations counted are the ones served; more than 2% failed throws.
  const full = isFull(load);
  const batch = full ? concurrency : n;
  let served = 0;
  for (let done = 0; done < n; done += batch) {
    const size = Math.min(batch, n - done);
    // One request per client, as many clients as requests: each connection does one GET and closes.
    const shape = full ? ['-n', String(size), '-c', String(size)] : ['-n', String(size), '-c', '4', '-m', '10'];
    const protocol = load === 'full-h1' ? 'http/1.1' : 'h2';
    const args = [...shape, `--npn-list=${protocol}`, `--connect-to=127.0.0.1:${port}`, `https://${HOST}:${port}/`];
    const { stdout } = await execFileAsync('h2load', args, { maxBuffer: 1 << 22 });
    served += Number(/status codes: (\d+) 2xx/.exec(stdout)?.[1] ?? 'NaN');
  }
  if (!(served >= n * 0.98)) throw new Error(`h2load ${load}: ${served} of ${n} requests got a 2xx`);
  return served;
}

/** valgrind's callgrind, instrumentation off until a window switches it on; one file per thread and dump: the main thread apart from libuv's pool and V8's helpers (JIT, GC). */
export function callgrind(dir: string, name: string): string[] {
  const out = `--callgrind-out-file=${join(dir, `cg-${name}.%p`)}`;
  return ['valgrind', '--tool=callgrind', '--trace-children=yes', '--instr-atstart=no', '--dump-instr=no', '--separate-threads=yes', out];
}

/** `callgrind_control ARGS pid`: `-i on|off`, `-d` (dump). */
export async function callgrindControl(pid: number, ...args: string[]): Promise<void> {
  await execFileAsync('callgrind_control', [...args, String(pid)]);
}

/** Dump `dump` (from 1) of server `name`'s `pid`: its main thread's file (`cg-<name>.<pid>.<dump>-01`), and instructions of the main thread and of all threads. */
export function callgrindDump(dir: string, name: string, pid: number, dump: number): { mainFile: string; main: number; all: number } {
  const prefix = `cg-${name}.${pid}.${dump}-`;
  const files = readdirSync(dir).filter((x) => x.startsWith(prefix));
  if (!files.includes(`${prefix}01`)) throw new Error(`no callgrind dump ${dump} of ${name}'s main thread (pid ${pid})`);
  const mainFile = join(dir, `${prefix}01`);
  return { mainFile, main: callgrindInstructions(mainFile), all: files.reduce((sum, x) => sum + callgrindInstructions(join(dir, x)), 0) };
}

/**
 * The instructions of one callgrind dump file as the sum of its self costs
 * (every cost line but the inclusive one after each `calls=`). Its `summary:`
 * line cannot be trusted when instrumentation was switched on mid-run
 * (`--instr-atstart=no`): calls entered before it return unseen, and the
 * summary wraps below zero.
 */
export function callgrindInstructions(file: string): number {
  let total = 0;
  let skipNext = false;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.startsWith('calls=')) {
      skipNext = true;
      continue;
    }
    const m = /^[+\-*]?\d*\s+(\d+)$/.exec(line);
    if (m === null) continue;
    if (skipNext) skipNext = false;
    else total += Number(m[1]);
  }
  return total;
}

/** Stops a tracer (strace, perf) with SIGINT, as its own Ctrl-C, so it writes its summary; resolves once it exited. */
export async function interrupt(proc: ManagedProcess): Promise<void> {
  proc.child.kill('SIGINT');
  await new Promise<void>((r) => (proc.exited() ? r() : proc.child.once('exit', () => r())));
}
