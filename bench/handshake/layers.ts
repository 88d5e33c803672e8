/**
 * Where a proxy worker's CPU goes, layer by layer (issue 12's per-layer
 * table), for (a) a full TLS 1.3 handshake + one proxied 1 KiB GET and (b) a
 * keep-alive GET, with measures that do not depend on how busy the machine
 * is: a fixed number of operations, and either
 *   --profiler cpu-prof   (default) V8 samples of the worker's main thread,
 *                         split into layers by layer-split.ts: shares (%);
 *   --profiler none       no profiler: /proc CPU time per operation only, main
 *                         thread (user, system) and other threads (the libuv
 *                         pool, V8's GC and compiler): with a profiler its
 *                         sampling thread would be among them;
 *   --profiler callgrind  the worker under valgrind's callgrind, switched on
 *                         for the measured operations only: instructions per
 *                         operation (exact, whatever else runs), and the
 *                         native functions with the most inclusive instructions.
 *
 * Servers (`--servers`, rig.ts, one after the other, with the demo origin):
 * the in-memory proxy (inmemory.ts: the real cluster and worker, one worker,
 * key files), the node:https and node:http2 floors (floor.ts: fixed answer, no
 * origin; `floor-h2` offers only h2), floor.ts as a bare forwarder to the same
 * origin through undici's dispatch (`bare-undici`), node:http's native-llhttp
 * client (`bare-node-http`) or the leanest llhttp forwarder (`bare-llhttp`,
 * `bare-llhttp-consume`: lean-forwarder.ts), what the origin hop costs with
 * nothing of keyedge's, and `nginx`. Loads (`--loads`, rig.ts's `drive`), each
 * after a warm-up: `full` (ab, a new connection per GET), `keepalive` (ab -k,
 * `--concurrency` connections), `full-h1` / `full-h2` (h2load, a new
 * connection per GET: the same client, what h2 costs at the handshake, issue
 * 13), `keepalive-h2` (h2load, 10 streams on each of 4 connections),
 * `alpn-h1` / `alpn-h2` (the handshake bench's ALPN client). A server is given
 * only the loads of the protocols it speaks.
 *
 * Usage: node dist/bench/handshake/layers.js [--profiler cpu-prof|none|callgrind] [--loads LIST] [options]   (--help)
 * Prints Markdown; --out writes it (and the JSON) as <date>-layers-<profiler>.{md,json}.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { delta, type ThreadCpu, threadCpu } from '../harness/proc-cpu.js';
import { fmt, markdownTable, writeReport } from '../harness/report.js';
import { LAYERS, type LayerSplit, splitProfile } from './layer-split.js';
import { callgrind, callgrindControl, callgrindDump, drive, isFull, LOADS, type Load, openRig, type Rig, speaks, startServer } from './rig.js';

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
  /** cpu-prof: the split; callgrind: instructions and the top native functions. */
  readonly split?: LayerSplit;
  readonly instructions?: number;
  /** callgrind: the main thread's part of `instructions` (the rest: libuv's pool, V8's compiler and GC threads). */
  readonly mainInstructions?: number;
  readonly topFunctions?: readonly { fn: string; inclusive: number }[];
  /** CPU time the serving process used over the window (/proc, 10 ms ticks): consumed, not a rate, so load moves it little. */
  readonly cpu?: ThreadCpu;
}

/** Instructions of a callgrind dump, and its native functions by inclusive instructions. */
function topFunctions(file: string, instructions: number): { fn: string; inclusive: number }[] {
  const out = execFileSync('callgrind_annotate', ['--inclusive=yes', '--threshold=100', file], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const top: { fn: string; inclusive: number }[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$/.exec(line);
    if (m === null || top.length >= 80) continue;
    const inclusive = Number(m[1]!.replaceAll(',', ''));
    if (inclusive <= instructions) top.push({ inclusive, fn: m[2]!.replace(/ \[[^\]]*\]$/, '') });
  }
  return top;
}

async function measureServer(rig: Rig, name: string): Promise<Measured[]> {
  const prof = join(rig.dir, `prof-${name}`);
  mkdirSync(prof, { recursive: true });
  const cpuProf = ['--cpu-prof', '--cpu-prof-dir', prof, '--cpu-prof-interval', String(v.interval)];
  const { proc, pid, port } = await startServer(rig, name, {
    wrap: profiler === 'callgrind' ? callgrind(rig.dir, name) : [],
    nodeArgs: profiler === 'cpu-prof' ? cpuProf : [],
    logLevel: v['log-level'],
    accessLog: ['trace', 'debug', 'info'].includes(v['log-level']),
  });
  const run = (load: Load, n: number) => drive(load, port, n, counts.concurrency, rig.ca);
  const out: Measured[] = [];
  try {
    const mine = loads.filter((l) => speaks(name, l));
    for (const load of mine) await run(load, isFull(load) ? counts.warmup : counts.warmup * 10);
    const windows: { load: Load; operations: number; fromUs: number; toUs: number; cpu: ThreadCpu }[] = [];
    for (const load of mine) {
      const wanted = isFull(load) ? counts.full : counts.keepalive;
      if (profiler === 'callgrind') await callgrindControl(pid, '-i', 'on');
      const fromUs = nowUs();
      const cpu0 = threadCpu(pid);
      const operations = await run(load, wanted);
      const cpu1 = threadCpu(pid);
      const toUs = nowUs();
      if (profiler === 'callgrind') {
        await callgrindControl(pid, '-d', load);
        await callgrindControl(pid, '-i', 'off');
      }
      windows.push({ load, operations, fromUs, toUs, cpu: { main: delta(cpu0.main, cpu1.main), others: delta(cpu0.others, cpu1.others) } });
    }
    await proc.stop(profiler === 'callgrind' ? 300_000 : 30_000);
    for (const [i, w] of windows.entries()) {
      if (profiler === 'none') out.push({ server: name, load: w.load, operations: w.operations, cpu: w.cpu });
      else if (profiler === 'cpu-prof') {
        const profile = readdirSync(prof).find((x) => x.includes(`.${pid}.`));
        if (profile === undefined) throw new Error(`no profile of pid ${pid} in ${prof}`);
        out.push({ server: name, load: w.load, operations: w.operations, split: splitProfile(join(prof, profile), w), cpu: w.cpu });
      } else {
        const { mainFile, main, all } = callgrindDump(rig.dir, name, pid, i + 1);
        out.push({
          server: name,
          load: w.load,
          operations: w.operations,
          instructions: all,
          mainInstructions: main,
          topFunctions: topFunctions(mainFile, main),
        });
      }
    }
  } finally {
    proc.kill();
  }
  return out;
}

/** CPU time of the serving process over the measured operations, µs per operation, from /proc. */
function cpuTable(results: readonly Measured[], note: string): string {
  const table = markdownTable(
    ['server, load', 'main thread user', 'main thread system', 'other threads (libuv pool, V8 GC and JIT)', 'total'],
    results.map((r) => {
      const per = (us: number) => fmt(us / r.operations);
      const c = r.cpu!;
      const total = c.main.userUs + c.main.systemUs + c.others.userUs + c.others.systemUs;
      return [`${r.server} ${r.load}`, per(c.main.userUs), per(c.main.systemUs), per(c.others.userUs + c.others.systemUs), per(total)];
    }),
    ['left', 'right', 'right', 'right', 'right'],
  );
  return [
    `CPU time of the serving process over the same operations (/proc utime + stime, 10 ms ticks, µs per operation; ${note}).`,
    'The floor has no origin connection; the in-memory cluster primary, idle here, is not counted.',
    '',
    table,
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
      lines.push(`### ${r.server}, ${r.load}`, '');
      const frameRows = LAYERS.flatMap((layer) => r.split!.topFrames[layer].slice(0, 3).map((t) => [layer, t.frame, fmt(t.us / r.operations, 1)]));
      lines.push(markdownTable(['layer', 'frame', 'µs/op'], frameRows, ['left', 'left', 'right']), '');
    }
  } else {
    // The other threads (V8's optimizing compiler, concurrent marking and sweeping, libuv's pool) apart: a short warm-up under valgrind leaves compiling to do.
    const rows = results.map((r) => [
      r.server,
      r.load,
      fmt(r.operations),
      fmt(r.instructions! / r.operations),
      fmt(r.mainInstructions! / r.operations),
      fmt((r.instructions! - r.mainInstructions!) / r.operations),
    ]);
    const header = ['server', 'load', 'operations', 'instructions per operation', 'main thread', 'other threads (V8 JIT and GC, libuv pool)'];
    lines.push(markdownTable(header, rows, ['left', 'left', 'right', 'right', 'right', 'right']), '');
    for (const r of results) {
      lines.push(`### ${r.server}, ${r.load}: main thread's native functions by inclusive instructions per operation`, '');
      const top = r.topFunctions!.slice(0, 30).map((t) => [t.fn, fmt(t.inclusive / r.operations)]);
      lines.push(markdownTable(['function', 'instructions/op'], top, ['left', 'right']), '');
    }
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
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
}

await main();
