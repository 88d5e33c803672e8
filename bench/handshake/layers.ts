/**
 * Where a proxy worker's CPU goes, layer by layer (issue 12's per-layer table), for a full TLS 1.3 handshake + one
 * proxied 1 KiB GET and a keep-alive GET, at a fixed number of operations (figures the machine's load moves little):
 *   --profiler cpu-prof   (default) V8 samples of the worker's main thread, split by layer-split.ts: shares;
 *   --profiler none       /proc CPU per operation only: main thread (user, system) and the other threads (libuv's
 *                         pool, V8's GC and compiler; with a profiler on, its sampling thread is among them);
 *   --profiler callgrind  the worker under callgrind for the measured operations only: instructions per operation
 *                         (exact, whatever else runs), and the native functions with the most inclusive instructions.
 * Servers (`--servers`) and loads (`--loads`) are rig.ts's: one server after the other, with the demo origin, each
 * given only the loads of the protocols it speaks, after a warm-up.
 *
 * Usage: node dist/bench/handshake/layers.js [--profiler cpu-prof|none|callgrind] [--loads LIST] [options]   (--help)
 * Prints Markdown; --out writes it (and the JSON) as <date>-layers-<profiler>.{md,json}.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { add, type CpuTimes, type ThreadCpu } from '../harness/proc-cpu.js';
import { fmt, markdownTable, writeReport } from '../harness/report.js';
import { LAYERS, type LayerSplit, splitProfile } from './layer-split.js';
import { drive, isFull, LOADS, type Load, measure, openRig, type Rig, speaks, startServer } from './rig.js';

const TABLE = {
  profiler: { kind: 'string', arg: 'NAME', def: 'cpu-prof', choices: ['cpu-prof', 'none', 'callgrind'], help: 'what measures the worker (see above)' },
  full: { kind: 'number', arg: 'N', def: 3000, min: 1, integer: true, help: '(a) full handshakes + GET measured' },
  keepalive: { kind: 'number', arg: 'N', def: 30_000, min: 1, integer: true, help: '(b) keep-alive GETs measured' },
  warmup: { kind: 'number', arg: 'N', def: 3000, min: 0, integer: true, help: 'warm-up: N full handshakes, then 10 N keep-alive GETs' },
  concurrency: { kind: 'number', arg: 'C', def: 8, min: 1, integer: true, help: 'ab -c' },
  servers: {
    kind: 'string',
    arg: 'LIST',
    def: 'inmemory,floor',
    help: 'inmemory, floor, floor-h2, bare-undici, bare-node-http, bare-llhttp, nginx, in this order',
  },
  loads: { kind: 'string', arg: 'LIST', def: 'full,keepalive', help: 'full, keepalive, full-h1, full-h2, keepalive-h2, alpn-h1, alpn-h2 (see above)' },
  'log-level': std.logLevel,
  interval: { kind: 'number', arg: 'US', def: 50, min: 1, integer: true, help: 'node --cpu-prof-interval' },
  out: { kind: 'string', arg: 'DIR', help: 'also write <date>-layers-<profiler>.{md,json} into DIR' },
  'keep-temp': std.keepTemp,
} as const;
const parsed = parseCli('handshake/layers.js', TABLE);
if (parsed === undefined) process.exit(0);
const v = parsed;
const profiler = v.profiler as 'cpu-prof' | 'none' | 'callgrind';
const counts = { full: v.full, keepalive: v.keepalive, warmup: v.warmup, concurrency: v.concurrency };
const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);
const loads = v.loads.split(',') as Load[];
for (const l of loads) if (!LOADS.includes(l)) throw new Error(`--loads: '${l}' is not one of ${LOADS.join(', ')}`);

interface Measured {
  readonly server: string;
  readonly load: Load;
  readonly operations: number;
  /** CPU time the serving process used over the window (/proc, 10 ms ticks): consumed, not a rate, so load moves it little. */
  readonly cpu: ThreadCpu;
  /** cpu-prof: the split. */
  readonly split?: LayerSplit;
  /** callgrind: instructions, the main thread's part of them (the rest: libuv's pool, V8's compiler and GC threads), its top native functions. */
  readonly instructions?: number;
  readonly mainInstructions?: number;
  readonly topFunctions?: readonly { fn: string; inclusive: number }[];
}

/** The native functions of a callgrind dump by inclusive instructions (at most `instructions`: the rest are entered before the window). */
function topFunctions(file: string, instructions: number): { fn: string; inclusive: number }[] {
  const out = execFileSync('callgrind_annotate', ['--inclusive=yes', '--threshold=100', file], { encoding: 'utf8', maxBuffer: 1 << 26 });
  return [...out.matchAll(/^[ \t]*([\d,]+)[ \t]+\([^)]*\)[ \t]+(.*)$/gm)]
    .map((m) => ({ inclusive: Number(m[1]!.replaceAll(',', '')), fn: m[2]!.replace(/ \[[^\]]*\]$/, '') }))
    .filter((t) => t.inclusive <= instructions)
    .slice(0, 80);
}

async function measureServer(rig: Rig, name: string): Promise<Measured[]> {
  const prof = join(rig.dir, `prof-${name}`);
  mkdirSync(prof, { recursive: true });
  const s = await startServer(rig, name, {
    callgrind: profiler === 'callgrind',
    nodeArgs: profiler === 'cpu-prof' ? ['--cpu-prof', '--cpu-prof-dir', prof, '--cpu-prof-interval', String(v.interval)] : [],
    logLevel: v['log-level'],
    accessLog: ['trace', 'debug', 'info'].includes(v['log-level']),
  });
  const mine = loads.filter((l) => speaks(name, l));
  const out: Measured[] = [];
  try {
    for (const load of mine) await drive(load, s.port, isFull(load) ? counts.warmup : counts.warmup * 10, counts.concurrency, rig.ca);
    const windows: { load: Load; fromUs: number; toUs: number; w: Awaited<ReturnType<typeof measure>> }[] = [];
    for (const load of mine) {
      const fromUs = nowUs();
      const w = await measure(rig, s, load, isFull(load) ? counts.full : counts.keepalive, counts.concurrency);
      windows.push({ load, fromUs, toUs: nowUs(), w });
    }
    await s.proc.stop(s.graceMs);
    // The profile is written when the worker exits.
    const profile = profiler === 'cpu-prof' ? readdirSync(prof).find((x) => x.includes(`.${s.pid}.`)) : undefined;
    if (profiler === 'cpu-prof' && profile === undefined) throw new Error(`no profile of pid ${s.pid} in ${prof}`);
    for (const { load, fromUs, toUs, w } of windows) {
      const ts = [...w.threads.values()];
      const sum = (xs: CpuTimes[]) => xs.reduce<CpuTimes>(add, { userUs: 0, systemUs: 0 });
      const cpu = { main: sum(ts.filter((t) => t.key.startsWith('main ('))), others: sum(ts.filter((t) => !t.key.startsWith('main ('))) };
      const i = w.instructions;
      out.push({
        server: name,
        load,
        operations: w.operations,
        cpu,
        ...(profile && { split: splitProfile(join(prof, profile), { fromUs, toUs }) }),
        ...(i && { instructions: i.all, mainInstructions: i.main, topFunctions: topFunctions(i.mainFile, i.main) }),
      });
    }
  } finally {
    s.proc.kill();
  }
  return out;
}

/** CPU time of the serving process over the measured operations, µs per operation, from /proc. */
function cpuTable(results: readonly Measured[], note: string): string {
  const rows = results.map(({ cpu: c, operations, server, load }) => {
    const per = (us: number) => fmt(us / operations);
    const others = c.others.userUs + c.others.systemUs;
    return [`${server} ${load}`, per(c.main.userUs), per(c.main.systemUs), per(others), per(c.main.userUs + c.main.systemUs + others)];
  });
  const header = ['server, load', 'main thread user', 'main thread system', 'other threads (libuv pool, V8 GC and JIT)', 'total'];
  return [
    `CPU time of the serving process over the same operations (/proc utime + stime, 10 ms ticks, µs per operation; ${note}).`,
    'The floor has no origin connection; the in-memory cluster primary, idle here, is not counted.',
    '',
    markdownTable(header, rows, ['left', 'right', 'right', 'right', 'right']),
  ].join('\n');
}

function report(results: readonly Measured[]): string {
  const lines = [
    `# Per-layer CPU of a proxy worker (${profiler}), ${new Date().toISOString().slice(0, 10)}`,
    '',
    `Command: \`node dist/bench/handshake/layers.js ${process.argv.slice(2).join(' ')}\``,
    `Node ${process.version}; ECDSA P-256; ab -c ${counts.concurrency}; warm-up ${counts.warmup} full + ${counts.warmup * 10} keep-alive; ` +
      `loads ${loads.join(', ')}: full* ${counts.full} × (new connection, full TLS 1.3 handshake, one GET), keepalive ${counts.keepalive} GETs on ${counts.concurrency} connections, keepalive-h2 ${counts.keepalive} GETs on 4 connections × 10 streams.`,
    '',
  ];
  if (profiler === 'none') lines.push(cpuTable(results, 'no profiler'), '');
  else if (profiler === 'cpu-prof') {
    const cols = results.map((r) => `${r.server} ${r.load}`);
    const rows = LAYERS.map((layer) => [
      layer,
      ...results.map((r) => `${fmt((100 * r.split!.byLayer[layer]) / r.split!.busyUs, 1)}% · ${fmt(r.split!.byLayer[layer] / r.operations)}`),
    ]);
    rows.push(['**sampled busy µs per operation**', ...results.map((r) => `**${fmt(r.split!.busyUs / r.operations)}**`)]);
    lines.push(
      "Share of the worker main thread's sampled busy time · sampled µs per operation (wall-clock sampling: the µs",
      "move with the machine's load, the shares much less).",
      '',
      markdownTable(['layer', ...cols], rows, ['left', ...cols.map(() => 'right' as const)]),
      '',
      cpuTable(results, 'with the profiler on, other threads include its sampling thread: see `--profiler none`'),
      '',
      '## Costliest frames (self) per layer',
      '',
    );
    for (const r of results) {
      const frameRows = LAYERS.flatMap((layer) => r.split!.topFrames[layer].slice(0, 3).map((t) => [layer, t.frame, fmt(t.us / r.operations, 1)]));
      lines.push(`### ${r.server}, ${r.load}`, '', markdownTable(['layer', 'frame', 'µs/op'], frameRows, ['left', 'left', 'right']), '');
    }
  } else {
    // The other threads (V8's optimizing compiler, concurrent marking and sweeping, libuv's pool) apart: a short warm-up under valgrind leaves compiling to do.
    const rows = results.map((r) => {
      const [all, main] = [r.instructions!, r.mainInstructions!];
      return [r.server, r.load, fmt(r.operations), fmt(all / r.operations), fmt(main / r.operations), fmt((all - main) / r.operations)];
    });
    const header = ['server', 'load', 'operations', 'instructions per operation', 'main thread', 'other threads (V8 JIT and GC, libuv pool)'];
    lines.push(markdownTable(header, rows, ['left', 'left', 'right', 'right', 'right', 'right']), '');
    for (const r of results) {
      const top = r.topFunctions!.slice(0, 30).map((t) => [t.fn, fmt(t.inclusive / r.operations)]);
      lines.push(`### ${r.server}, ${r.load}: main thread's native functions by inclusive instructions per operation`, '');
      lines.push(markdownTable(['function', 'instructions/op'], top, ['left', 'right']), '');
    }
  }
  return lines.join('\n');
}

const rig = await openRig('layers');
try {
  const results: Measured[] = [];
  for (const server of v.servers.split(',')) results.push(...(await measureServer(rig, server)));
  const markdown = report(results);
  process.stdout.write(`${markdown}\n`);
  if (v.out !== undefined) writeReport(v.out, `layers-${profiler}`, { profiler, counts, results }, markdown);
} finally {
  await rig.close(v['keep-temp']);
}
