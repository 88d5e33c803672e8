/**
 * What HTTP/2 costs a server, thread by thread (issue 13, must-show 3): for
 * (a) a full TLS 1.3 handshake + one GET negotiating h2 against one
 * negotiating http/1.1, and (b) a keep-alive GET over h2 with 10 streams in
 * flight on each of 4 connections, CPU consumed at a fixed number of
 * operations, split by thread (its name, `comm`) and into user and system
 * time, from /proc/<pid>/task/<tid>/stat of every process of the server
 * (nginx's master and worker; the in-memory proxy's worker only, its primary
 * idles). Rounds are interleaved (server × load, `--rounds` times) and each
 * figure is the median with its spread (max − min over the median).
 *
 * Servers (`--servers`): `keyedge` (inmemory.ts: the real cluster and worker,
 * one worker, the key in memory), `floor` / `floor-h2` (floor.ts: bare
 * node:https / node:http2, fixed 1 KiB answer, no origin), `fwd-h1` (floor.ts
 * forwarding through undici's dispatch), `fwd-h2` (h2-forwarder.ts: bare
 * node:http2 stream API + undici dispatch), `nginx` (the keep-alive bench's
 * config, `listen … ssl http2`, one worker). All forward to the same demo
 * origin; all run at once, the loads one after the other.
 *
 * `--diagnose`: one more window per server and load under `strace -c -f`
 * (system calls per operation, by name) with Node's `--trace-gc` on
 * (scavenges and mark-compacts per operation); its CPU is not counted.
 * `--perf`: `perf stat` on each window too (task-clock: CPU time at
 * nanosecond resolution; page faults; context switches), with h2 ÷ http/1.1
 * by task-clock within each round.
 * `--profiler callgrind`: the Node servers under callgrind (switched on for
 * the measured window only): instructions per operation, main thread and all
 * threads, instead of /proc; nginx too (its worker), user space only.
 *
 * Usage: node dist/bench/handshake/h2-threads.js [--full N] [--keepalive N] [--rounds R] [--servers LIST] [--loads LIST] [--diagnose] [--perf] [--profiler none|callgrind] [--node-args ARGS]
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseCli, std } from '../harness/cli.js';
import { childrenOf, minus, type ThreadTimes, threads } from '../harness/proc-threads.js';
import { freePort, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { nginxConfig, SERVER_NAME } from '../keepalive/lab.js';
import { KEYEDGE_CLI } from '../lab/keyserver.js';
import { LabPki } from '../lab/pki.js';
import { callgrindInstructions } from './callgrind-cost.js';
import { inMemoryWorkerPid } from './inmemory-pid.js';
import { fileKeyConfig } from './lab.js';

const execFileAsync = promisify(execFile);
const script = (name: string) => fileURLToPath(new URL(`./${name}.js`, import.meta.url));

const TABLE = {
  full: { kind: 'number', arg: 'N', def: 1000, min: 1, integer: true, help: '(a) full handshakes + GET per window' },
  keepalive: { kind: 'number', arg: 'N', def: 20_000, min: 1, integer: true, help: '(b) keep-alive GETs per window (4 connections × 10 streams)' },
  warmup: { kind: 'number', arg: 'N', def: 1000, min: 0, integer: true, help: 'warm-up per server: N full handshakes of each protocol, 10 N keep-alive GETs' },
  rounds: { kind: 'number', arg: 'R', def: 3, min: 1, integer: true, help: 'interleaved rounds' },
  servers: { kind: 'string', arg: 'LIST', def: 'keyedge,floor,floor-h2,fwd-h1,fwd-h2,nginx', help: 'keyedge, floor, floor-h2, fwd-h1, fwd-h2, nginx' },
  loads: { kind: 'string', arg: 'LIST', def: 'full-h1,full-h2,keepalive-h2', help: 'full-h1, full-h2, keepalive-h2' },
  perf: { kind: 'flag', help: 'also perf stat each window: CPU time at ns resolution, page faults, context switches' },
  diagnose: { kind: 'flag', help: 'one more window per server and load under strace -c -f, with --trace-gc' },
  profiler: { kind: 'string', arg: 'NAME', def: 'none', choices: ['none', 'callgrind'], help: '/proc CPU, or callgrind instructions' },
  'node-args': { kind: 'string', arg: 'ARGS', def: '', help: 'extra node options for the Node servers, space-separated (e.g. --max-semi-space-size=16)' },
  'log-level': std.logLevel,
  'keep-temp': std.keepTemp,
} as const;
const parsed = parseCli('handshake/h2-threads.js', TABLE);
if (parsed === undefined) process.exit(0);
const v = parsed;
type Load = 'full-h1' | 'full-h2' | 'keepalive-h2';
const loads = v.loads.split(',') as Load[];
const servers = v.servers.split(',');
const callgrind = v.profiler === 'callgrind';
const speaks = (server: string, load: Load): boolean =>
  server === 'keyedge' || server === 'nginx' || (server.endsWith('-h2') ? load.endsWith('-h2') : load === 'full-h1');

/** h2load: `n` GETs, a new connection each in batches of 8 (full), or on 4 connections × 10 streams. Returns the 2xx count. */
async function h2load(port: number, n: number, load: Load): Promise<number> {
  const full = load !== 'keepalive-h2';
  const batch = full ? 8 : n;
  let served = 0;
  for (let done = 0; done < n; done += batch) {
    const size = Math.min(batch, n - done);
    const shape = full ? ['-n', String(size), '-c', String(size)] : ['-n', String(size), '-c', '4', '-m', '10'];
    const protocol = load === 'full-h1' ? 'http/1.1' : 'h2';
    const args = [...shape, `--npn-list=${protocol}`, `--connect-to=127.0.0.1:${port}`, `https://${SERVER_NAME}:${port}/`];
    const { stdout } = await execFileAsync('h2load', args, { maxBuffer: 1 << 22 });
    served += Number(/status codes: (\d+) 2xx/.exec(stdout)?.[1] ?? 'NaN');
  }
  if (!(served >= n * 0.98)) throw new Error(`h2load ${load}: ${served} of ${n} requests got a 2xx`);
  return served;
}

interface Running {
  readonly name: string;
  readonly proc: ManagedProcess;
  readonly port: number;
  /** The process that serves (the in-memory cluster's worker; nginx's master, its worker a child). */
  readonly pid: number;
}

/** The callgrind wrapper (instrumentation off until the measured window), or nothing. */
function valgrind(name: string): string[] {
  if (!callgrind) return [];
  const out = `--callgrind-out-file=${join(tmp, `cg-${name}.%p`)}`;
  return ['valgrind', '--tool=callgrind', '--trace-children=yes', '--instr-atstart=no', '--dump-instr=no', '--separate-threads=yes', out];
}

async function start(dir: string, name: string, originPort: number, extraNodeArgs: readonly string[]): Promise<Running> {
  const port = await freePort();
  const admin = await freePort();
  const f = (x: string) => join(dir, x);
  const origin = `http://127.0.0.1:${originPort}`;
  if (name === 'nginx') {
    writeFileSync(f('nginx.conf'), nginxConfig(dir, port, originPort, true));
    const proc = spawnManaged(name, [...valgrind(name), 'nginx', '-e', f('nginx-error.log'), '-p', dir, '-c', f('nginx.conf')], f('nginx.log'), undefined, dir);
    await waitFor(name, () => tcpOpen(port), 120_000, proc);
    // Under callgrind its one worker (forked by the master) is the process instrumented and dumped.
    return { name, proc, port, pid: callgrind ? childrenOf(proc.pid)[0]! : proc.pid };
  }
  const certs = [{ name: 'ec', serverName: SERVER_NAME, chain: f('file-chain.pem'), key: f('file.key') }];
  const o = { port, admin, workers: 1, profile: 'intermediate', logLevel: v['log-level'], origin, domain: SERVER_NAME } as const;
  const kind = name === 'keyedge' ? 'inmemory' : 'node-floor';
  const base = fileKeyConfig(kind, certs, o);
  const config =
    name === 'floor-h2'
      ? { ...base, h2: true }
      : name === 'fwd-h1'
        ? { ...base, forward: { origin, client: 'undici' } }
        : name === 'fwd-h2'
          ? { ...base, origin }
          : base;
  writeFileSync(f(`${name}.json`), JSON.stringify(config));
  const file = name === 'keyedge' ? script('inmemory') : name === 'fwd-h2' ? script('h2-forwarder') : script('floor');
  const wrap = callgrind
    ? valgrind(name)
    : v.diagnose
      ? // V8 prints --trace-gc with stdio, which buffers a file fully: line-buffered, each GC is in the log when it happens.
        ['stdbuf', '-oL']
      : [];
  const proc = spawnManaged(name, [...wrap, process.execPath, ...extraNodeArgs, file, '--config', f(`${name}.json`)], f(`${name}.log`), undefined, dir);
  if (name !== 'keyedge') {
    await waitFor(name, () => tcpOpen(admin), 600_000, proc);
    return { name, proc, port, pid: proc.pid };
  }
  return { name, proc, port, pid: await inMemoryWorkerPid(proc) };
}

interface Window {
  readonly round: number;
  readonly server: string;
  readonly load: Load;
  readonly operations: number;
  readonly threads?: Map<string, ThreadTimes>;
  readonly instructions?: { main: number; all: number };
  /** --perf: perf stat's task-clock (ms), page-faults and context-switches over the window. */
  readonly counters?: Record<string, number>;
}

/**
 * `perf stat` attached to the server's processes for one window: its CPU time
 * at nanosecond resolution (task-clock, every thread) and the software
 * events a VM still counts (page faults, context switches); hardware counters
 * are not offered here. Returns a function that stops it and reads the counts.
 */
function startPerf(s: Running, dir: string): () => Promise<Record<string, number>> {
  const out = join(dir, `perf-${s.name}.csv`);
  const pids = s.name === 'nginx' ? [s.pid, ...childrenOf(s.pid)] : [s.pid];
  const events = 'task-clock,page-faults,context-switches';
  const proc = spawnManaged(`perf-${s.name}`, ['perf', 'stat', '-x,', '-e', events, '-o', out, '-p', pids.join(',')], join(dir, 'perf.log'), undefined, dir);
  return async () => {
    proc.child.kill('SIGINT');
    await new Promise<void>((r) => (proc.exited() ? r() : proc.child.once('exit', () => r())));
    const counts: Record<string, number> = {};
    for (const line of readFileSync(out, 'utf8').split('\n')) {
      const [value, , event] = line.split(',');
      if (event !== undefined && value !== undefined && /^[\d.]+$/.test(value)) counts[event] = Number(value);
    }
    return counts;
  };
}

async function measure(round: number, s: Running, load: Load, n: number, dumps: { count: number }, dir: string): Promise<Window> {
  if (callgrind) await execFileAsync('callgrind_control', ['-i', 'on', String(s.pid)]);
  const perf = v.perf ? startPerf(s, dir) : undefined;
  if (perf !== undefined) await new Promise((r) => setTimeout(r, 500));
  const before = threads(s.pid, s.name === 'nginx');
  const operations = await h2load(s.port, n, load);
  const after = threads(s.pid, s.name === 'nginx');
  const counters = perf === undefined ? undefined : await perf();
  if (!callgrind) return { round, server: s.name, load, operations, threads: minus(after, before), counters };
  await execFileAsync('callgrind_control', ['-d', load, String(s.pid)]);
  await execFileAsync('callgrind_control', ['-i', 'off', String(s.pid)]);
  dumps.count++;
  // <name>.<pid>.<dump>-<thread>, thread 01 the main one; a forked nginx worker keeps its master's pid in the name.
  const dump = new RegExp(`^cg-${s.name}\\.\\d+\\.${dumps.count}-(\\d+)$`);
  const files = readdirSync(dir).filter((x) => dump.test(x));
  const mainFile = files.find((x) => x.endsWith('-01'));
  if (mainFile === undefined) throw new Error(`no callgrind dump ${dumps.count} of ${s.name}`);
  const main = callgrindInstructions(join(dir, mainFile));
  const all = files.reduce((sum, x) => sum + callgrindInstructions(join(dir, x)), 0);
  return { round, server: s.name, load, operations, instructions: { main, all } };
}

/** strace -c -f on every process of the server over one window; returns calls per operation by syscall, and GC events from --trace-gc. */
async function diagnose(s: Running, load: Load, n: number, dir: string): Promise<string> {
  const out = join(dir, `strace-${s.name}-${load}.txt`);
  const pids = s.name === 'nginx' ? [s.pid, ...childrenOf(s.pid)] : [s.pid];
  const strace = spawnManaged(
    `strace-${s.name}`,
    ['strace', '-c', '-f', '-o', out, ...pids.flatMap((p) => ['-p', String(p)])],
    join(dir, 'strace.log'),
    undefined,
    dir,
  );
  await new Promise((r) => setTimeout(r, 1500));
  const gcBefore = gcEvents(s);
  const operations = await h2load(s.port, n, load);
  const gcAfter = gcEvents(s);
  strace.child.kill('SIGINT');
  await new Promise<void>((r) => (strace.exited() ? r() : strace.child.once('exit', () => r())));
  const rows = readFileSync(out, 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((c) => c.length >= 5 && /^\d/.test(c[0]!) && c[c.length - 1] !== 'total')
    .map((c) => ({ name: c[c.length - 1]!, calls: Number(c[3]) }))
    .filter((r) => Number.isFinite(r.calls))
    .sort((a, b) => b.calls - a.calls);
  const total = rows.reduce((sum, r) => sum + r.calls, 0);
  const per = (x: number) => (x / operations).toFixed(2);
  const gc =
    s.name === 'nginx'
      ? ''
      : `; GC per op: scavenge ${per(gcAfter.scavenge - gcBefore.scavenge)}, mark-compact ${per(gcAfter.markCompact - gcBefore.markCompact)}`;
  return `| ${s.name} | ${load} | ${operations} | ${per(total)} | ${rows
    .slice(0, 10)
    .map((r) => `${r.name} ${per(r.calls)}`)
    .join(', ')}${gc} |`;
}

function gcEvents(s: Running): { scavenge: number; markCompact: number } {
  const lines = readFileSync(s.proc.logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith(`[${s.pid}:`));
  return { scavenge: lines.filter((l) => l.includes('Scavenge')).length, markCompact: lines.filter((l) => l.includes('Mark-Compact')).length };
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const spread = (xs: readonly number[]): string => {
  const m = median(xs);
  return m === 0 ? '–' : `${Math.round((100 * (Math.max(...xs) - Math.min(...xs))) / m)}%`;
};

/** The figure a window gives per operation: /proc CPU (all threads) or instructions (main thread, all threads). */
function perOp(w: Window, which: 'main' | 'all'): number {
  if (w.instructions !== undefined) return w.instructions[which] / w.operations;
  const ts = [...w.threads!.values()].filter((t) => which === 'all' || t.key.startsWith('main'));
  return ts.reduce((a, t) => a + t.userUs + t.systemUs, 0) / w.operations;
}

/**
 * Ratios taken within each round (the two windows ran minutes apart at most, so the machine's
 * speed cancels), then their median and range: h2 ÷ http/1.1 per server, and each server's h2
 * keep-alive request ÷ nginx's.
 */
function ratios(windows: readonly Window[]): string {
  const rounds = [...new Set(windows.map((w) => w.round))];
  const find = (r: number, server: string, load: Load) => windows.find((w) => w.round === r && w.server === server && w.load === load);
  const lines = ['| ratio, within each round | all threads: median (min–max) | main thread: median (min–max) |', '|---|--:|--:|'];
  const row = (label: string, pairs: [Window | undefined, Window | undefined][]) => {
    const ok = pairs.filter((p): p is [Window, Window] => p[0] !== undefined && p[1] !== undefined);
    if (ok.length === 0) return;
    const cell = (which: 'main' | 'all') => {
      const xs = ok.map(([a, b]) => perOp(a, which) / perOp(b, which));
      return `${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
    };
    lines.push(`| ${label} | ${cell('all')} | ${cell('main')} |`);
  };
  // The bare servers speak one protocol each: node:http2's against node:https's.
  const h1Of = (server: string) => (server === 'floor-h2' ? 'floor' : server === 'fwd-h2' ? 'fwd-h1' : server);
  for (const server of servers)
    if (server !== 'floor' && server !== 'fwd-h1')
      row(
        `${server}: full-h2 ÷ ${h1Of(server)} full-h1`,
        rounds.map((r) => [find(r, server, 'full-h2'), find(r, h1Of(server), 'full-h1')]),
      );
  for (const server of servers)
    if (server !== 'nginx')
      row(
        `${server} ÷ nginx, keepalive-h2`,
        rounds.map((r) => [find(r, server, 'keepalive-h2'), find(r, 'nginx', 'keepalive-h2')]),
      );
  return lines.join('\n');
}

/** --perf: task-clock per operation (µs) and software events, medians; and h2 ÷ http/1.1 by task-clock within rounds. */
function perfReport(windows: readonly Window[]): string {
  const ws = windows.filter((w) => w.counters !== undefined);
  if (ws.length === 0) return '';
  const clock = (w: Window) => ((w.counters!['task-clock'] ?? Number.NaN) * 1000) / w.operations;
  const per = (w: Window, e: string) => (w.counters![e] ?? Number.NaN) / w.operations;
  const lines = ['| server, load (perf stat) | task-clock µs/op (spread) | page faults/op | context switches/op |', '|---|--:|--:|--:|'];
  const keys = [...new Set(ws.map((w) => `${w.server} ${w.load}`))];
  for (const k of keys) {
    const g = ws.filter((w) => `${w.server} ${w.load}` === k);
    const c = g.map(clock);
    lines.push(
      `| ${k} | ${median(c).toFixed(1)} (${spread(c)}) | ${median(g.map((w) => per(w, 'page-faults'))).toFixed(1)} | ${median(g.map((w) => per(w, 'context-switches'))).toFixed(2)} |`,
    );
  }
  lines.push('', '| task-clock ratio within each round | median (min–max) |', '|---|--:|');
  const h1Of = (server: string) => (server === 'floor-h2' ? 'floor' : server === 'fwd-h2' ? 'fwd-h1' : server);
  for (const server of servers) {
    const xs = ws
      .filter((w) => w.server === server && w.load === 'full-h2')
      .map((w) => [w, ws.find((x) => x.round === w.round && x.server === h1Of(server) && x.load === 'full-h1')] as const)
      .filter((p): p is readonly [Window, Window] => p[1] !== undefined)
      .map(([a, b]) => clock(a) / clock(b));
    if (xs.length > 0)
      lines.push(`| ${server} full-h2 ÷ ${h1Of(server)} full-h1 | ${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}) |`);
  }
  return lines.join('\n');
}

function report(windows: readonly Window[]): string {
  const lines: string[] = [];
  const groups = new Map<string, Window[]>();
  for (const w of windows) groups.set(`${w.server} ${w.load}`, [...(groups.get(`${w.server} ${w.load}`) ?? []), w]);
  if (callgrind) {
    lines.push('| server, load | operations | main-thread instructions/op (median, spread) | all threads | ', '|---|--:|--:|--:|');
    for (const [k, ws] of groups) {
      const main = ws.map((w) => w.instructions!.main / w.operations);
      const all = ws.map((w) => w.instructions!.all / w.operations);
      lines.push(
        `| ${k} | ${ws[0]!.operations} × ${ws.length} | ${Math.round(median(main)).toLocaleString('en')} (${spread(main)}) | ${Math.round(median(all)).toLocaleString('en')} (${spread(all)}) |`,
      );
    }
    return lines.join('\n');
  }
  lines.push(
    '| server, load | operations | total µs/op (median, spread) | user | system | by thread (user+system µs/op, median) |',
    '|---|--:|--:|--:|--:|---|',
  );
  for (const [k, ws] of groups) {
    const sum = (w: Window, f: (t: ThreadTimes) => number) => [...w.threads!.values()].reduce((a, t) => a + f(t), 0) / w.operations;
    const total = ws.map((w) => sum(w, (t) => t.userUs + t.systemUs));
    const user = ws.map((w) => sum(w, (t) => t.userUs));
    const system = ws.map((w) => sum(w, (t) => t.systemUs));
    const keys = [...new Set(ws.flatMap((w) => [...w.threads!.keys()]))];
    const byThread = keys
      .map((key) => {
        const u = median(ws.map((w) => (w.threads!.get(key)?.userUs ?? 0) / w.operations));
        const sy = median(ws.map((w) => (w.threads!.get(key)?.systemUs ?? 0) / w.operations));
        return { key, u, sy };
      })
      .filter((t) => t.u + t.sy > 0)
      .sort((a, b) => b.u + b.sy - (a.u + a.sy))
      .map((t) => `${t.key} ${t.u.toFixed(0)}+${t.sy.toFixed(0)}`)
      .join('; ');
    lines.push(
      `| ${k} | ${ws[0]!.operations} × ${ws.length} | ${median(total).toFixed(1)} (${spread(total)}) | ${median(user).toFixed(1)} | ${median(system).toFixed(1)} | ${byThread} |`,
    );
  }
  return lines.join('\n');
}

const tmp = mkdtempSync(join(tmpdir(), 'keyedge-h2-threads-'));

async function main(): Promise<void> {
  const dir = tmp;
  const running: Running[] = [];
  let origin: ManagedProcess | undefined;
  try {
    const pki = new LabPki(dir, 'keyedge h2 CA');
    pki.fileCert('ec-p256', SERVER_NAME, 'file');
    rmSync(join(dir, 'nginx-tmp'), { recursive: true, force: true });
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(dir, 'nginx-tmp'));
    const originPort = await freePort();
    origin = spawnManaged('origin', [process.execPath, KEYEDGE_CLI, 'demo-origin', '--port', String(originPort)], join(dir, 'origin.log'), undefined, dir);
    await waitFor('demo origin', () => tcpOpen(originPort), 30_000, origin);
    const nodeArgs = [...(v.diagnose ? ['--trace-gc'] : []), ...v['node-args'].split(' ').filter(Boolean)];
    for (const name of servers) running.push(await start(dir, name, originPort, nodeArgs));
    const count = (load: Load) => (load === 'keepalive-h2' ? v.keepalive : v.full);
    for (const s of running) for (const load of loads) if (speaks(s.name, load)) await h2load(s.port, load === 'keepalive-h2' ? v.warmup * 10 : v.warmup, load);
    const windows: Window[] = [];
    const dumps = new Map(running.map((s) => [s.name, { count: 0 }]));
    for (let r = 0; r < v.rounds; r++) {
      for (const s of running)
        for (const load of loads) if (speaks(s.name, load)) windows.push(await measure(r, s, load, count(load), dumps.get(s.name)!, dir));
      process.stderr.write(`round ${r + 1} of ${v.rounds} done\n`);
    }
    const lines = [
      `Node ${process.version} ${nodeArgs.join(' ')}; ${v.rounds} interleaved rounds; full ${v.full}, keepalive-h2 ${v.keepalive} per window; ${callgrind ? 'callgrind' : '/proc, 10 ms ticks'}`,
      '',
      report(windows),
      '',
      ratios(windows),
      '',
      perfReport(windows),
    ];
    if (v.diagnose) {
      lines.push('', '| server | load | operations | syscalls/op | top syscalls per op |', '|---|---|--:|--:|---|');
      for (const s of running) for (const load of loads) if (speaks(s.name, load)) lines.push(await diagnose(s, load, count(load), dir));
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    for (const s of running) await s.proc.stop(callgrind ? 120_000 : 10_000).catch(() => s.proc.kill());
    origin?.kill();
    if (v['keep-temp']) process.stderr.write(`kept ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

await main();
