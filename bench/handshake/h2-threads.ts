/**
 * What HTTP/2 costs a server, thread by thread (issue 13, must-show 3): a full TLS 1.3 handshake + one GET negotiating
 * h2 against one negotiating http/1.1, and a keep-alive GET over h2 (10 streams on each of 4 connections): CPU at a
 * fixed number of operations, by thread (`comm`), user and system apart, from /proc of every process of the server
 * (the in-memory proxy's worker only: its primary idles). The servers (rig.ts: `keyedge`, `floor`, `floor-h2`, `fwd-h1`,
 * `fwd-h2`, `nginx`, all to the same demo origin) run at once; rounds interleave server × load, and each figure is
 * the median with its spread (max − min over the median); ratios are taken within each round.
 *
 * `--diagnose`: one more window per server and load under `strace -c -f` (system calls per operation) with Node's
 * `--trace-gc` (scavenges and mark-compacts per operation); its CPU is not counted. `--perf`: `perf stat` on each
 * window too (task-clock: CPU time at ns resolution; page faults; context switches). `--profiler callgrind`: the
 * servers under callgrind for the windows: instructions per operation instead of /proc (nginx: user space only).
 *
 * Usage: node dist/bench/handshake/h2-threads.js [--full N] [--keepalive N] [--rounds R] [--servers LIST] [--loads LIST] [--diagnose] [--perf] [--profiler none|callgrind] [--node-args ARGS]
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { processTree, type ThreadTimes } from '../harness/proc-cpu.js';
import { fmt, markdownTable } from '../harness/report.js';
import { spawnManaged } from '../harness/spawn.js';
import { median, spread } from '../harness/stats.js';
import { drive, interrupt, type Load, measure, openRig, type Rig, type Running, speaks, startServer, type Window as Measured } from './rig.js';

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
const loads = v.loads.split(',') as Load[];
const servers = v.servers.split(',');
const withCallgrind = v.profiler === 'callgrind';
/** h2load's full loads go 8 connections at a time. */
const CONCURRENCY = 8;
const count = (load: Load) => (load === 'keepalive-h2' ? v.keepalive : v.full);
/** nginx's figures include any process it forks. */
const pidsOf = (s: Running) => (s.name === 'nginx' ? processTree(s.pid) : [s.pid]);
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Window extends Measured {
  readonly round: number;
  readonly server: string;
  readonly load: Load;
  /** --perf: perf stat's task-clock (ms), page-faults and context-switches over the window. */
  readonly counters?: Record<string, number>;
}

/**
 * `perf stat` attached to the server's processes for one window: its CPU time at nanosecond resolution (task-clock,
 * every thread) and the software events a VM still counts (page faults, context switches; hardware counters are not
 * offered here). Returns a function that stops it and reads the counts.
 */
function startPerf(s: Running, dir: string): () => Promise<Record<string, number>> {
  const out = join(dir, `perf-${s.name}.csv`);
  const command = ['perf', 'stat', '-x,', '-e', 'task-clock,page-faults,context-switches', '-o', out, '-p', pidsOf(s).join(',')];
  const proc = spawnManaged(`perf-${s.name}`, command, join(dir, 'perf.log'), undefined, dir);
  return async () => {
    await interrupt(proc);
    const rows = readFileSync(out, 'utf8')
      .split('\n')
      .map((line) => line.split(','));
    return Object.fromEntries(
      rows.flatMap(([value, , event]) => (event !== undefined && value !== undefined && /^[\d.]+$/.test(value) ? [[event, Number(value)]] : [])),
    );
  };
}

/** strace -c -f on every process of the server over one window: calls per operation by syscall, and GC events from --trace-gc. */
async function diagnose(rig: Rig, s: Running, load: Load): Promise<string[]> {
  const out = join(rig.dir, `strace-${s.name}-${load}.txt`);
  const command = ['strace', '-c', '-f', '-o', out, ...pidsOf(s).flatMap((p) => ['-p', String(p)])];
  const strace = spawnManaged(`strace-${s.name}`, command, join(rig.dir, 'strace.log'), undefined, rig.dir);
  await pause(1500);
  const gc = () => {
    const lines = readFileSync(s.proc.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith(`[${s.pid}:`));
    return { scavenge: lines.filter((l) => l.includes('Scavenge')).length, markCompact: lines.filter((l) => l.includes('Mark-Compact')).length };
  };
  const gcBefore = gc();
  const operations = await drive(load, s.port, count(load), CONCURRENCY, rig.ca);
  const gcAfter = gc();
  await interrupt(strace);
  const rows = readFileSync(out, 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((c) => c.length >= 5 && /^\d/.test(c[0]!) && c.at(-1) !== 'total' && Number.isFinite(Number(c[3])))
    .map((c) => ({ name: c.at(-1)!, calls: Number(c[3]) }))
    .sort((a, b) => b.calls - a.calls);
  const per = (x: number) => (x / operations).toFixed(2);
  const top = rows.slice(0, 10).map((r) => `${r.name} ${per(r.calls)}`);
  const gcText = `; GC per op: scavenge ${per(gcAfter.scavenge - gcBefore.scavenge)}, mark-compact ${per(gcAfter.markCompact - gcBefore.markCompact)}`;
  return [s.name, load, String(operations), per(rows.reduce((sum, r) => sum + r.calls, 0)), `${top.join(', ')}${s.name === 'nginx' ? '' : gcText}`];
}

const spreadText = (xs: readonly number[]): string => (median(xs) === 0 ? '–' : `${Math.round(spread(xs).spreadPct)}%`);
const range = (xs: readonly number[]) => `${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
const R = 'right' as const;

/** The figure a window gives per operation: /proc CPU or instructions, of the main thread or all threads. */
function perOp(w: Window, which: 'main' | 'all'): number {
  if (w.instructions !== undefined) return w.instructions[which] / w.operations;
  const ts = [...w.threads.values()].filter((t) => which === 'all' || t.key.startsWith('main'));
  return ts.reduce((a, t) => a + t.userUs + t.systemUs, 0) / w.operations;
}

/**
 * Ratios of `figures` taken within each round (the two windows ran minutes apart at most, so the machine's speed
 * cancels): h2 ÷ http/1.1 per server (the bare servers speak one protocol each: node:http2's against node:https's)
 * and, with `vsNginx`, each server's h2 keep-alive request ÷ nginx's. Rows: label, then a median (min–max) per figure.
 */
function ratioRows(windows: readonly Window[], figures: readonly ((w: Window) => number)[], vsNginx: boolean): string[][] {
  const rows: string[][] = [];
  const row = (label: string, server: string, load: Load, other: string, otherLoad: Load) => {
    const pairs = windows.flatMap((w) => {
      const b = w.server === server && w.load === load ? windows.find((x) => x.round === w.round && x.server === other && x.load === otherLoad) : undefined;
      return b === undefined ? [] : [[w, b] as const];
    });
    if (pairs.length > 0) rows.push([label, ...figures.map((f) => range(pairs.map(([a, b]) => f(a) / f(b))))]);
  };
  const h1Of = (server: string) => (server === 'floor-h2' ? 'floor' : server === 'fwd-h2' ? 'fwd-h1' : server);
  for (const s of servers) if (s !== 'floor' && s !== 'fwd-h1') row(`${s}: full-h2 ÷ ${h1Of(s)} full-h1`, s, 'full-h2', h1Of(s), 'full-h1');
  if (vsNginx) for (const s of servers) if (s !== 'nginx') row(`${s} ÷ nginx, keepalive-h2`, s, 'keepalive-h2', 'nginx', 'keepalive-h2');
  return rows;
}

/** Windows by "server load", in the order they ran. */
function groups(windows: readonly Window[]): Map<string, Window[]> {
  const out = new Map<string, Window[]>();
  for (const w of windows) out.set(`${w.server} ${w.load}`, [...(out.get(`${w.server} ${w.load}`) ?? []), w]);
  return out;
}

/** --perf: task-clock per operation (µs) and software events, medians; and h2 ÷ http/1.1 by task-clock within rounds. */
function perfReport(windows: readonly Window[]): string {
  const ws = windows.filter((w) => w.counters !== undefined);
  if (ws.length === 0) return '';
  const per = (w: Window, e: string) => (w.counters![e] ?? Number.NaN) / w.operations;
  const clock = (w: Window) => per(w, 'task-clock') * 1000;
  const rows = [...groups(ws)].map(([k, g]) => [
    k,
    `${median(g.map(clock)).toFixed(1)} (${spreadText(g.map(clock))})`,
    median(g.map((w) => per(w, 'page-faults'))).toFixed(1),
    median(g.map((w) => per(w, 'context-switches'))).toFixed(2),
  ]);
  return [
    markdownTable(['server, load (perf stat)', 'task-clock µs/op (spread)', 'page faults/op', 'context switches/op'], rows, ['left', R, R, R]),
    '',
    markdownTable(['task-clock ratio within each round', 'median (min–max)'], ratioRows(ws, [clock], false), ['left', R]),
  ].join('\n');
}

function report(windows: readonly Window[]): string {
  const cell = (xs: number[], f: (x: number) => string) => `${f(median(xs))} (${spreadText(xs)})`;
  if (withCallgrind) {
    const rows = [...groups(windows)].map(([k, ws]) => {
      const [main, all] = (['main', 'all'] as const).map((t) => ws.map((w) => w.instructions![t] / w.operations));
      return [k, `${ws[0]!.operations} × ${ws.length}`, cell(main!, fmt), cell(all!, fmt)];
    });
    return markdownTable(['server, load', 'operations', 'main-thread instructions/op (median, spread)', 'all threads'], rows, ['left', R, R, R]);
  }
  const rows = [...groups(windows)].map(([k, ws]) => {
    const sum = (w: Window, f: (t: ThreadTimes) => number) => [...w.threads.values()].reduce((a, t) => a + f(t), 0) / w.operations;
    const byThread = [...new Set(ws.flatMap((w) => [...w.threads.keys()]))]
      .map((key) => {
        const [u, sy] = (['userUs', 'systemUs'] as const).map((f) => median(ws.map((w) => (w.threads.get(key)?.[f] ?? 0) / w.operations)));
        return { key, u: u!, sy: sy! };
      })
      .filter((t) => t.u + t.sy > 0)
      .sort((a, b) => b.u + b.sy - (a.u + a.sy))
      .map((t) => `${t.key} ${t.u.toFixed(0)}+${t.sy.toFixed(0)}`)
      .join('; ');
    const total = cell(
      ws.map((w) => sum(w, (t) => t.userUs + t.systemUs)),
      (x) => x.toFixed(1),
    );
    const [user, system] = (['userUs', 'systemUs'] as const).map((f) => median(ws.map((w) => sum(w, (t) => t[f]))).toFixed(1));
    return [k, `${ws[0]!.operations} × ${ws.length}`, total, user!, system!, byThread];
  });
  const header = ['server, load', 'operations', 'total µs/op (median, spread)', 'user', 'system', 'by thread (user+system µs/op, median)'];
  return markdownTable(header, rows, ['left', R, R, R, R, 'left']);
}

const rig = await openRig('h2-threads');
try {
  const nodeArgs = [...(v.diagnose ? ['--trace-gc'] : []), ...v['node-args'].split(' ').filter(Boolean)];
  // V8 prints --trace-gc with stdio, which buffers a file fully: line-buffered, each GC is in the log when it happens.
  const wrap = (name: string) => (v.diagnose && name !== 'nginx' ? ['stdbuf', '-oL'] : []);
  const running: Running[] = [];
  for (const name of servers) running.push(await startServer(rig, name, { callgrind: withCallgrind, wrap: wrap(name), nodeArgs, logLevel: v['log-level'] }));
  const mine = (s: Running) => loads.filter((load) => speaks(s.name, load));
  for (const s of running) for (const load of mine(s)) await drive(load, s.port, load === 'keepalive-h2' ? v.warmup * 10 : v.warmup, CONCURRENCY, rig.ca);
  const windows: Window[] = [];
  for (let round = 0; round < v.rounds; round++) {
    for (const s of running) {
      for (const load of mine(s)) {
        const perf = v.perf ? startPerf(s, rig.dir) : undefined;
        if (perf !== undefined) await pause(500);
        const w = await measure(rig, s, load, count(load), CONCURRENCY);
        windows.push({ ...w, round, server: s.name, load, ...(perf && { counters: await perf() }) });
      }
    }
    process.stderr.write(`round ${round + 1} of ${v.rounds} done\n`);
  }
  const ratioHeader = ['ratio, within each round', 'all threads: median (min–max)', 'main thread: median (min–max)'];
  const lines = [
    `Node ${process.version} ${nodeArgs.join(' ')}; ${v.rounds} interleaved rounds; full ${v.full}, keepalive-h2 ${v.keepalive} per window; ${withCallgrind ? 'callgrind' : '/proc, 10 ms ticks'}`,
    '',
    report(windows),
    '',
    markdownTable(ratioHeader, ratioRows(windows, [(w) => perOp(w, 'all'), (w) => perOp(w, 'main')], true), ['left', R, R]),
    '',
    perfReport(windows),
  ];
  if (v.diagnose) {
    const rows: string[][] = [];
    for (const s of running) for (const load of mine(s)) rows.push(await diagnose(rig, s, load));
    lines.push('', markdownTable(['server', 'load', 'operations', 'syscalls/op', 'top syscalls per op'], rows, ['left', 'left', R, R, 'left']));
  }
  process.stdout.write(`${lines.join('\n')}\n`);
} finally {
  await rig.close(v['keep-temp']);
}
