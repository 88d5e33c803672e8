/**
 * The rig of the handshake investigation tools (layers.ts, threads.ts, h2-threads.ts): a temp dir with a throwaway
 * CA's ECDSA P-256 certificate for `bench.test` and the demo origin; the servers they measure, by name, optionally
 * under callgrind or another wrapper and with Node flags, and the pid that serves; the loads, each run to a fixed
 * number of operations (consumed CPU and counts, not rates: they hold on a loaded machine); one measured window.
 *
 * Servers: `inmemory` (alias `keyedge`: inmemory.ts, the real cluster, one worker, key files), `floor` / `floor-h2`
 * (floor.ts: bare node:https / node:http2, fixed 1 KiB answer, no origin), floor.ts's bare forwarders to the same
 * origin: `bare-undici` (alias `fwd-h1`), `bare-node-http`, `bare-llhttp`, `bare-llhttp-consume` (lean-forwarder.ts)
 * and `fwd-h2` (node:http2 + undici); and `nginx`: the keep-alive bench's configuration (`listen … ssl http2`) as one
 * process (`master_process off`: the pid measured serves), with a stub_status listener for the readiness probe.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { minus, type ThreadTimes, threads } from '../harness/proc-cpu.js';
import { freePort, jsonLine, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { nginxConfig } from '../keepalive/lab.js';
import { KEYEDGE_CLI } from '../lab/keyserver.js';
import { LabPki } from '../lab/keyserver.js';
import { parseAbOutput } from './ab.js';
import { AlpnLoad } from './alpn.js';
import type { FloorConfig } from './floor.js';
import { fileKeyConfig } from './lab.js';

const execFileAsync = promisify(execFile);
const HOST = 'bench.test';

export type Rig = Awaited<ReturnType<typeof openRig>>;

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
    // The CA's PEM for clients that verify; the demo origin's URL; what startServer started, for close().
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
  /** Under callgrind: the dumps taken so far (each window is one). */
  callgrind?: { dumps: number };
}

export interface StartOptions {
  /** Under valgrind's callgrind, instrumentation off until a window switches it on (`measure`). */
  readonly callgrind?: boolean;
  /** Before the binary otherwise: stdbuf, or nothing. */
  readonly wrap?: readonly string[];
  /** Flags of the Node servers' node. */
  readonly nodeArgs?: readonly string[];
  readonly logLevel?: string;
  /** nginx writes an access log line per request (parity with the proxy at 'info'). */
  readonly accessLog?: boolean;
  readonly env?: Readonly<Record<string, string>>;
}

const FORWARDERS: Record<string, { client: NonNullable<FloorConfig['forward']>['client']; h2?: true }> = {
  'bare-undici': { client: 'undici' },
  'fwd-h1': { client: 'undici' },
  'bare-node-http': { client: 'node-http' },
  'bare-llhttp': { client: 'llhttp' },
  'bare-llhttp-consume': { client: 'llhttp-consume' },
  'fwd-h2': { client: 'undici', h2: true },
};
const SERVERS = ['inmemory', 'keyedge', 'floor', 'floor-h2', ...Object.keys(FORWARDERS), 'nginx'];

/**
 * valgrind's callgrind, instrumentation off until a window switches it on; one file per thread and dump: the main
 * thread apart from libuv's pool and V8's helpers (JIT, GC).
 */
const callgrind = (dir: string, name: string) => [
  ...['valgrind', '--tool=callgrind', '--trace-children=yes', '--instr-atstart=no', '--dump-instr=no', '--separate-threads=yes'],
  `--callgrind-out-file=${join(dir, `cg-${name}.%p`)}`,
];

/** Starts server `name` of the rig, waits until it serves, and registers it for `rig.close()`. */
export async function startServer(rig: Rig, name: string, o: StartOptions = {}): Promise<Running> {
  if (!SERVERS.includes(name)) throw new Error(`unknown server '${name}' (${SERVERS.join(', ')})`);
  const [port, admin] = [await freePort(), await freePort()];
  const f = (x: string) => join(rig.dir, x);
  const wrap = o.callgrind ? callgrind(rig.dir, name) : (o.wrap ?? []);
  const inmemory = name === 'inmemory' || name === 'keyedge';
  let command: string[];
  if (name === 'nginx') {
    mkdirSync(f('nginx-tmp'), { recursive: true, mode: 0o700 });
    const status = `  server { listen 127.0.0.1:${admin}; access_log off; location = /status { stub_status; } }\n}\n`;
    const config = nginxConfig(rig.dir, port, Number(new URL(rig.origin).port), o.accessLog ?? true);
    writeFileSync(f('nginx.conf'), `master_process off;\n${config.replace(/}\n$/, status)}`);
    command = [...wrap, 'nginx', '-e', f('nginx-error.log'), '-p', rig.dir, '-c', f('nginx.conf')];
  } else {
    const certs = [{ name: 'ec', serverName: HOST, chain: f('file-chain.pem'), key: f('file.key') }];
    const base = { port, admin, workers: 1, profile: 'intermediate', logLevel: o.logLevel ?? 'info', origin: rig.origin, domain: HOST } as const;
    const fwd = FORWARDERS[name];
    const config = fileKeyConfig(inmemory ? 'inmemory' : 'node-floor', certs, base);
    const floor: FloorConfig = { ...(config as FloorConfig), h2: name === 'floor-h2' || fwd?.h2, forward: fwd && { origin: rig.origin, client: fwd.client } };
    writeFileSync(f(`${name}.json`), JSON.stringify(inmemory ? config : floor));
    const script = fileURLToPath(new URL(`./${inmemory ? 'inmemory' : 'floor'}.js`, import.meta.url));
    command = [...wrap, process.execPath, ...(o.nodeArgs ?? []), script, '--config', f(`${name}.json`)];
  }
  const proc = spawnManaged(name, command, f(`${name}.log`), undefined, rig.dir, o.env);
  const running: Running = { name, proc, port, pid: proc.pid, graceMs: o.callgrind ? 300_000 : 30_000, ...(o.callgrind && { callgrind: { dumps: 0 } }) };
  rig.servers.push(running);
  if (!inmemory) await waitFor(name, () => tcpOpen(admin), 600_000, proc);
  else {
    // The pid of the first worker, from the primary's `in-memory ready` log line.
    let pid: number | undefined;
    await waitFor('in-memory ready', () => (pid = jsonLine<{ workers: number[] }>(proc.logFile, 'in-memory ready')?.workers[0]) !== undefined, 600_000, proc);
    return { ...running, pid: pid! };
  }
  return running;
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
    const args = [
      '-q',
      '-r',
      '-n',
      String(n),
      '-c',
      String(concurrency),
      '-s',
      '120',
      '-f',
      'TLS1.3',
      '-H',
      `Host: ${HOST}`,
      ...(load === 'keepalive' ? ['-k'] : []),
    ];
    const { stdout } = await execFileAsync('ab', [...args, `https://127.0.0.1:${port}/`], { maxBuffer: 1 << 22 });
    const { failedRequests, non2xx } = parseAbOutput(stdout);
    if (failedRequests !== 0 || non2xx !== 0) throw new Error(`ab: ${failedRequests} failed, ${non2xx} non-2xx requests`);
    return n;
  }
  // h2load (Debian nghttp2-client) counts the GETs that got a 2xx: under valgrind a connection now and then
  // times out, and the operations counted are the ones served; more than 2% failed throws.
  const full = isFull(load);
  let served = 0;
  for (let done = 0; done < n; done += full ? concurrency : n) {
    const size = Math.min(full ? concurrency : n, n - done);
    // Full: one request per client, as many clients as requests, so each connection does one GET and closes.
    const shape = full ? ['-n', String(size), '-c', String(size)] : ['-n', String(size), '-c', '4', '-m', '10'];
    const args = [...shape, `--npn-list=${load === 'full-h1' ? 'http/1.1' : 'h2'}`, `--connect-to=127.0.0.1:${port}`, `https://${HOST}:${port}/`];
    const { stdout } = await execFileAsync('h2load', args, { maxBuffer: 1 << 22 });
    served += Number(/status codes: (\d+) 2xx/.exec(stdout)?.[1] ?? 'NaN');
  }
  if (!(served >= n * 0.98)) throw new Error(`h2load ${load}: ${served} of ${n} requests got a 2xx`);
  return served;
}

export interface Window {
  readonly operations: number;
  /** CPU per thread over the window (/proc, 10 ms ticks), of every process of the server. */
  readonly threads: Map<string, ThreadTimes>;
  /** Under callgrind: the main thread's dump file, and instructions of the main thread and of all threads. */
  readonly instructions?: { readonly mainFile: string; readonly main: number; readonly all: number };
}

/** One window: `n` operations of `load` on `s` (`concurrency`: ab -c, h2load's full connections at a time, the ALPN client's loops). */
export async function measure(rig: Rig, s: Running, load: Load, n: number, concurrency: number): Promise<Window> {
  const cpu = () => threads(s.pid, s.name === 'nginx');
  if (s.callgrind) await execFileAsync('callgrind_control', ['-i', 'on', String(s.pid)]);
  const before = cpu();
  const operations = await drive(load, s.port, n, concurrency, rig.ca);
  const window = { operations, threads: minus(cpu(), before) };
  if (!s.callgrind) return window;
  for (const args of [
    ['-d', load],
    ['-i', 'off'],
  ])
    await execFileAsync('callgrind_control', [...args, String(s.pid)]);
  // Dump N of the server: one file per thread, `cg-<name>.<pid>.<N>-<thread>`, the main thread's `-01`.
  const prefix = `cg-${s.name}.${s.pid}.${++s.callgrind.dumps}-`;
  const files = readdirSync(rig.dir).filter((x) => x.startsWith(prefix));
  if (!files.includes(`${prefix}01`)) throw new Error(`no callgrind dump ${s.callgrind.dumps} of ${s.name}'s main thread (pid ${s.pid})`);
  const mainFile = join(rig.dir, `${prefix}01`);
  const all = files.reduce((sum, x) => sum + callgrindInstructions(join(rig.dir, x)), 0);
  return { ...window, instructions: { mainFile, main: callgrindInstructions(mainFile), all } };
}

/**
 * The instructions of one callgrind dump file as the sum of its self costs (every cost line but the inclusive one after
 * each `calls=`). Its `summary:` line cannot be trusted when instrumentation was switched on mid-run
 * (`--instr-atstart=no`): calls entered before it return unseen, and the summary wraps below zero.
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

/** Stops a tracer (strace, perf) with SIGINT, as its own Ctrl-C, so it writes its summary; resolves once it exited. */
export async function interrupt(proc: ManagedProcess): Promise<void> {
  proc.child.kill('SIGINT');
  await new Promise<void>((r) => (proc.exited() ? r() : proc.child.once('exit', () => r())));
}
