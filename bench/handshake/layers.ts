/**
 * Where a server's CPU goes for a full TLS 1.3 handshake + one proxied 1 KiB GET and for keep-alive GETs (issues 12,
 * 13), at a fixed number of operations (consumed CPU, not rates: the machine's load moves it little): `--profiler none`
 * /proc CPU per thread; `cpu-prof` that and the main thread's V8 samples (every 50 µs) by layer (layer-split.ts);
 * `callgrind` instructions per operation, main thread apart (with --keep-temp, `callgrind_annotate --inclusive=yes` on
 * the dumps names the functions). Servers and loads: rig.ts. `--rounds N`: the windows in rounds, the server order
 * rotated, ratios within each round (the machine's speed cancels). Usage: node dist/bench/handshake/layers.js --help
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { listOf, parseCli, std } from '../harness/cli.js';
import { fmt, markdownTable, minMax, writeReport } from '../harness/report.js';
import { median, spread } from '../harness/stats.js';
import { LAYERS, type Layer, type LayerSplit, splitProfile } from './layer-split.js';
import { drive, isFull, LOADS, type Load, measure, openRig, type Running, SERVERS, speaks, startServer, type Window } from './rig.js';

const TABLE = {
  profiler: { kind: 'string', arg: 'NAME', def: 'cpu-prof', choices: ['cpu-prof', 'none', 'callgrind'], help: 'cpu-prof: by layer; none: /proc; callgrind' },
  full: { kind: 'number', arg: 'N', def: 3000, min: 1, integer: true, help: 'full handshakes + GET per window' },
  keepalive: { kind: 'number', arg: 'N', def: 30_000, min: 1, integer: true, help: 'keep-alive GETs per window' },
  warmup: { kind: 'number', arg: 'N', def: 3000, min: 0, integer: true, help: 'warm-up: N full handshakes, then 10 N keep-alive GETs' },
  concurrency: { kind: 'number', arg: 'C', def: 8, min: 1, integer: true, help: "ab -c, h2load's full connections at a time" },
  rounds: { kind: 'number', arg: 'N', def: 1, min: 1, integer: true, help: 'rounds of windows, the server order rotated each round' },
  servers: { kind: 'string', arg: 'LIST', def: 'inmemory,floor', help: `${SERVERS.join(', ')}; the first is the ratios' reference` },
  loads: { kind: 'string', arg: 'LIST', def: 'full,keepalive', help: LOADS.join(', ') },
  'node-args': { kind: 'string', arg: 'ARGS', def: '', help: "more flags for the Node servers' node, space-separated (e.g. --trace-gc)" },
  'log-level': std.logLevel,
  out: { kind: 'string', arg: 'DIR', help: 'also write <date>-layers-<profiler>.{md,json} into DIR' },
  'keep-temp': std.keepTemp,
} as const;
const v = parseCli('handshake/layers.js', TABLE) ?? process.exit(0);
const profiler = v.profiler as 'cpu-prof' | 'none' | 'callgrind';
const servers = listOf(v.servers, '--servers', SERVERS);
const loads = listOf(v.loads, '--loads', LOADS);
const R = 'right' as const;

type Measured = Window & { readonly round: number };
const keyOf = (w: Measured) => `${w.server} ${w.load}`;
/** cpu-prof: the split of each "server load" over all its windows (one profile per server, written when it exits). */
const splits = new Map<string, LayerSplit>();

async function start(name: string): Promise<Running> {
  const prof = join(rig.dir, `prof-${name}`);
  mkdirSync(prof, { recursive: true });
  const cpuProf = ['--cpu-prof', '--cpu-prof-dir', prof, '--cpu-prof-interval', '50'];
  const nodeArgs = [...(profiler === 'cpu-prof' ? cpuProf : []), ...v['node-args'].split(' ').filter(Boolean)];
  const s = await startServer(rig, name, { callgrind: profiler === 'callgrind', nodeArgs, logLevel: v['log-level'] });
  for (const load of loads.filter((l) => speaks(name, l))) await drive(load, s.port, isFull(load) ? v.warmup : v.warmup * 10, v.concurrency);
  return s;
}

/** Stops `s`; under cpu-prof, splits its profile over its windows among `windows`, load by load. */
async function finish(s: Running, windows: readonly Measured[]): Promise<void> {
  await s.proc.stop(s.graceMs);
  if (profiler !== 'cpu-prof' || s.name === 'nginx') return;
  const dir = join(rig.dir, `prof-${s.name}`);
  const profile = readdirSync(dir).find((x) => x.includes(`.${s.pid}.`));
  if (profile === undefined) throw new Error(`no profile of pid ${s.pid} in ${dir}`);
  for (const load of loads) {
    const mine = windows.filter((w) => w.server === s.name && w.load === load);
    if (mine.length > 0) splits.set(`${s.name} ${load}`, splitProfile(join(dir, profile), mine));
  }
}

/** µs per operation over a window (/proc, 10 ms ticks), of the main thread or all threads; user, system or both. */
function cpuUs(w: Measured, which: 'main' | 'all', field?: 'userUs' | 'systemUs'): number {
  let us = 0;
  for (const t of w.threads.values()) if (which === 'all' || t.key.startsWith('main (')) us += field ? t[field] : t.userUs + t.systemUs;
  return us / w.operations;
}
/** The figure compared: instructions under callgrind, else /proc CPU. */
const figure = (w: Measured, which: 'main' | 'all') => (w.instructions ? w.instructions[which] / w.operations : cpuUs(w, which));
/** The median over a group's windows, with their spread when there are several. */
function cell(ws: readonly Measured[], f: (w: Measured) => number, decimals = 0): string {
  const xs = ws.map(f);
  return xs.length > 1 ? `${fmt(median(xs), decimals)} (${fmt(spread(xs).spreadPct)}%)` : fmt(xs[0]!, decimals);
}

/** Each thread's (or group of like-named threads') user+system µs per operation, medians, busiest first. */
function byThread(ws: readonly Measured[]): string {
  const per = (k: string, f: 'userUs' | 'systemUs') => median(ws.map((w) => (w.threads.get(k)?.[f] ?? 0) / w.operations));
  const rows = [...new Set(ws.flatMap((w) => [...w.threads.keys()]))].map((k) => ({ k, u: per(k, 'userUs'), s: per(k, 'systemUs') }));
  const busy = rows.filter((t) => t.u + t.s > 0).sort((a, b) => b.u + b.s - (a.u + a.s));
  return busy.map((t) => `${t.k} ${fmt(t.u)}+${fmt(t.s)}`).join('; ');
}

/** Per "server load": CPU per operation and by thread, or instructions per operation. */
function groupTable(groups: Map<string, Measured[]>): string {
  const cg = profiler === 'callgrind';
  const figures = cg ? ['instructions/op (spread)', 'main thread'] : ['µs/op (spread)', 'user', 'system', 'by thread: user+system µs/op'];
  const rows = [...groups].map(([key, ws]) => {
    const cpu = (field?: 'userUs' | 'systemUs') => cell(ws, (w) => cpuUs(w, 'all', field), 1);
    const cells = cg ? [cell(ws, (w) => figure(w, 'all')), cell(ws, (w) => figure(w, 'main'))] : [cpu(), cpu('userUs'), cpu('systemUs'), byThread(ws)];
    return [key, `${ws[0]!.operations} × ${ws.length}`, ...cells];
  });
  const note = cg
    ? "Instructions per operation (threads other than main: V8's compiler and GC, libuv's pool)."
    : "CPU of the serving process per operation (/proc utime + stime, 10 ms ticks; `node` threads other than main: V8's GC and compiler, libuv's pool; with cpu-prof its sampler). The floors have no origin; the in-memory cluster's idle primary is not counted.";
  return `${note}\n\n${markdownTable(['server, load', 'operations', ...figures], rows, ['left', R, R, R, R, 'left'])}`;
}

function layerTable(groups: Map<string, Measured[]>): string {
  const ops = (key: string) => groups.get(key)!.reduce((n, w) => n + w.operations, 0);
  const entries = [...groups.keys()].flatMap((key) => (splits.has(key) ? [[key, splits.get(key)!] as const] : []));
  const share = (layer: Layer) =>
    entries.map(([k, s]) => `${fmt((100 * s.byLayer[layer]) / s.busyUs, 1)}% · ${fmt(s.byLayer[layer] / ops(k))} · ${s.topFrame[layer]}`);
  const busy = ['**sampled busy µs per operation**', ...entries.map(([k, s]) => `**${fmt(s.busyUs / ops(k))}**`)];
  const rows = [...LAYERS.map((layer) => [layer, ...share(layer)]), busy];
  const note = "Share of the worker main thread's sampled busy time · sampled µs per operation · the layer's costliest frame (self)";
  const table = markdownTable(['layer', ...entries.map(([k]) => k)], rows, ['left', ...entries.map(() => R)]);
  return `${note}\n(wall-clock sampling: the µs move with the machine's load, the shares much less).\n\n${table}`;
}

/** Ratios within each round: each h2 load ÷ its http/1.1 twin (the floors' and forwarders' h2 servers ÷ their h1 ones), each server ÷ the reference. */
function ratioTable(windows: readonly Measured[]): string {
  const pairs = new Map<string, [Measured, Measured][]>();
  const pair = (label: string, a: Measured, server: string, load: Load) => {
    const b = windows.find((x) => x.round === a.round && x.server === server && x.load === load);
    if (b !== undefined && b !== a) pairs.set(label, [...(pairs.get(label) ?? []), [a, b]]);
  };
  const h1Of = (s: string) => ({ 'floor-h2': 'floor', 'fwd-h2': 'fwd-h1' })[s] ?? s;
  for (const w of windows) {
    const h1 = w.load.replace(/-h2$/, '-h1') as Load;
    if (isFull(w.load) && h1 !== w.load) pair(`${keyOf(w)} ÷ ${h1Of(w.server)} ${h1}`, w, h1Of(w.server), h1);
    pair(`${keyOf(w)} ÷ ${servers[0]}`, w, servers[0]!, w.load);
  }
  const range = (xs: number[]) => `${fmt(median(xs), 3)} (${minMax(xs, 2)})`;
  const rows = [...pairs].map(([label, ps]) => [label, ...(['all', 'main'] as const).map((t) => range(ps.map(([a, b]) => figure(a, t) / figure(b, t))))]);
  return markdownTable(['ratio within each round', 'all threads: median (min–max)', 'main thread'], rows, ['left', R, R]);
}

const rig = await openRig('layers');
try {
  const windows: Measured[] = [];
  for (let round = 0; round < v.rounds; round++) {
    for (const name of [...servers.slice(round % servers.length), ...servers.slice(0, round % servers.length)]) {
      const s = rig.servers.find((x) => x.name === name) ?? (await start(name));
      const n = (load: Load) => (isFull(load) ? v.full : v.keepalive);
      for (const load of loads.filter((l) => speaks(name, l))) windows.push({ ...(await measure(rig, s, load, n(load), v.concurrency)), round });
      // The last round: the server is done (with one round, one server runs at a time).
      if (round === v.rounds - 1) await finish(s, windows);
    }
    process.stderr.write(`round ${round + 1} of ${v.rounds} done\n`);
  }
  // Windows by "server load", in --servers order.
  const groups = new Map<string, Measured[]>();
  for (const name of servers) for (const w of windows.filter((x) => x.server === name)) groups.set(keyOf(w), [...(groups.get(keyOf(w)) ?? []), w]);
  const markdown = [
    `# Per-layer CPU (${profiler}), ${new Date().toISOString().slice(0, 10)}\n`,
    `Command: \`node dist/bench/handshake/layers.js ${process.argv.slice(2).join(' ')}\``,
    `Node ${process.version}; ECDSA P-256; ${v.rounds} round(s); warm-up ${v.warmup} full + ${v.warmup * 10} keep-alive; ` +
      `full* ${v.full} × (new connection, full TLS 1.3 handshake, one GET), ${v.concurrency} at a time; keepalive ${v.keepalive} GETs on ` +
      `${v.concurrency} connections, keepalive-h2 on 4 connections × 10 streams.\n`,
    `${groupTable(groups)}\n`,
    ...(profiler === 'cpu-prof' ? [`${layerTable(groups)}\n`] : []),
    ratioTable(windows),
  ].join('\n');
  process.stdout.write(`${markdown}\n`);
  const json = { profiler, options: v, windows: windows.map((w) => ({ ...w, threads: Object.fromEntries(w.threads) })), splits: Object.fromEntries(splits) };
  if (v.out !== undefined) writeReport(v.out, `layers-${profiler}`, json, markdown);
} finally {
  await rig.close(v['keep-temp']);
}
