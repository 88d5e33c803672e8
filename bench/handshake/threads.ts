/**
 * What a full TLS 1.3 handshake + one proxied GET costs outside the main thread's JavaScript, at a fixed number of
 * handshakes after a warm-up (consumed CPU and counts, not rates: they hold on a loaded machine): CPU per thread of
 * the serving process (the main thread; V8's platform workers: optimizing compiler, concurrent GC; libuv's pool),
 * scavenges, mark-compacts and bytes allocated per handshake (`--trace-gc`), optimisations and deoptimisations
 * (`--trace-opt`, `--trace-deopt`), and with `--heap yes` the window's allocations by function (heap-sampler.ts).
 * The node that runs this script runs the server: run it with another major's binary (harness/install.ts) to
 * measure that one. Servers (rig.ts): `inmemory` (the real cluster, one worker) or `floor` (bare node:https).
 *
 * Usage: node dist/bench/handshake/threads.js --server inmemory|floor [--full N] [--warmup N] [--heap yes] [--trace yes]
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseCli } from '../harness/cli.js';
import { drive, measure, openRig, startServer } from './rig.js';

const TABLE = {
  server: { kind: 'string', arg: 'NAME', def: 'inmemory', choices: ['inmemory', 'floor'], help: 'what serves' },
  full: { kind: 'number', arg: 'N', def: 3000, min: 1, integer: true, help: 'full handshakes + GET measured' },
  warmup: { kind: 'number', arg: 'N', def: 3000, min: 0, integer: true, help: 'full handshakes + GET before' },
  concurrency: { kind: 'number', arg: 'C', def: 4, min: 1, integer: true, help: 'ab -c' },
  heap: { kind: 'string', arg: 'yes|no', def: 'no', choices: ['yes', 'no'], help: 'sample allocations in the window (heap-sampler.ts)' },
  trace: { kind: 'string', arg: 'yes|no', def: 'yes', choices: ['yes', 'no'], help: '--trace-gc --trace-opt --trace-deopt (off: CPU without their printing)' },
  'node-flags': { kind: 'string', arg: 'FLAGS', help: "more flags for the server's node, space-separated (e.g. V8's --no-flush-bytecode)" },
  'keep-log': { kind: 'string', arg: 'FILE', help: "write the window's part of the server's log (the traces) to FILE" },
} as const;
const parsed = parseCli('handshake/threads.js', TABLE);
if (parsed === undefined) process.exit(0);
const o = parsed;
const count = (m: Map<string, number>, key: string) => m.set(key, (m.get(key) ?? 0) + 1);
const top = (m: Map<string, number>, n: number) =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([f, k]) => `${f} ×${k}`)
    .join('; ');

/**
 * `--trace-gc` lines of `pid` ("… Scavenge 10.2 (12.0) -> 9.5 (12.0) MB"): counts, and MB allocated between GCs
 * (before − previous after); `--trace-opt` / `--trace-deopt` lines: optimisations and deoptimisations, by function.
 */
function traceFigures(text: string, pid: number) {
  const g = {
    scavenges: 0,
    markCompacts: 0,
    allocatedMB: 0,
    optimized: 0,
    deopts: 0,
    byOptimized: new Map<string, number>(),
    byDeopt: new Map<string, number>(),
  };
  const fn = (line: string) => /<JSFunction ([^ >]*)/.exec(line)?.[1] ?? '?';
  let lastAfter: number | undefined;
  for (const line of text.split('\n')) {
    if (line.includes(`[${pid}:`)) {
      const m = /: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Sweep)[^\d]*([\d.]+) \(([\d.]+)\) -> ([\d.]+)/.exec(line);
      if (m === null) continue;
      if (m[1] === 'Scavenge' || m[1] === 'Minor Mark-Sweep') g.scavenges++;
      else g.markCompacts++;
      if (lastAfter !== undefined && Number(m[2]) > lastAfter) g.allocatedMB += Number(m[2]) - lastAfter;
      lastAfter = Number(m[4]);
    } else if (/completed (optimizing|compiling)/.test(line)) {
      g.optimized++;
      count(g.byOptimized, `${fn(line)} (${/target ([A-Z]+)/.exec(line)?.[1] ?? '?'})`);
    } else if (line.includes('bailout (kind:')) {
      g.deopts++;
      count(g.byDeopt, `${fn(line)}: ${/reason: ([^)]*)\)/.exec(line)?.[1] ?? '?'}`);
    }
  }
  return g;
}

/** A .heapprofile's self bytes by function (name url:line), biggest first. */
function heapTop(file: string): { fn: string; bytes: number }[] {
  interface Node {
    callFrame: { functionName: string; url: string; lineNumber: number };
    selfSize: number;
    children: Node[];
  }
  const by = new Map<string, number>();
  const walk = ({ callFrame: f, selfSize, children }: Node): void => {
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(dist|lib|node_modules)\//, '$1/')}:${f.lineNumber + 1}`;
    by.set(key, (by.get(key) ?? 0) + selfSize);
    for (const c of children) walk(c);
  };
  walk((JSON.parse(readFileSync(file, 'utf8')) as { head: Node }).head);
  return [...by].map(([fn, bytes]) => ({ fn, bytes })).sort((a, b) => b.bytes - a.bytes);
}

const rig = await openRig('threads');
try {
  const flags = o.trace === 'yes' ? ['--trace-gc', '--trace-opt', '--trace-deopt'] : [];
  if (o['node-flags'] !== undefined) flags.push(...o['node-flags'].split(' ').filter((f) => f !== ''));
  if (o.heap === 'yes') flags.push('--import', pathToFileURL(fileURLToPath(new URL('./heap-sampler.js', import.meta.url))).href);
  const s = await startServer(rig, o.server, { nodeArgs: flags, ...(o.heap === 'yes' && { env: { HEAP_SAMPLE_DIR: rig.dir } }) });
  await drive('full', s.port, o.warmup, o.concurrency, rig.ca);
  await new Promise((r) => setTimeout(r, 1000));
  const from = statSync(s.proc.logFile).size;
  if (o.heap === 'yes') process.kill(s.pid, 'SIGUSR2');
  const w = await measure(rig, s, 'full', o.full, o.concurrency);
  if (o.heap === 'yes') process.kill(s.pid, 'SIGUSR2');
  await new Promise((r) => setTimeout(r, 1500));
  const text = readFileSync(s.proc.logFile, 'utf8').slice(from);
  if (o['keep-log'] !== undefined) writeFileSync(o['keep-log'], text);
  const per = (us: number, digits = 1) => (us / o.full).toFixed(digits);
  const threads = [...w.threads.values()].sort((a, b) => b.userUs + b.systemUs - a.userUs - a.systemUs);
  const sum = (f: 'userUs' | 'systemUs') => threads.reduce((a, t) => a + t[f], 0);
  const lines = [
    `## ${o.server}, Node ${process.version}: ${o.full} full TLS 1.3 handshakes + GET (ab -c ${o.concurrency}) after ${o.warmup}; flags ${flags.filter((f) => f.startsWith('--') && f !== '--import').join(' ') || 'none'}`,
    '',
    '| thread | user µs per handshake | system µs per handshake |',
    '|---|--:|--:|',
    ...threads.map((t) => `| ${t.key} | ${per(t.userUs)} | ${per(t.systemUs)} |`),
    `| all | ${per(sum('userUs'))} | ${per(sum('systemUs'))} |`,
    '',
  ];
  if (o.trace === 'yes') {
    const g = traceFigures(text, s.pid);
    lines.push(
      `GC and JIT per handshake: scavenges ${per(g.scavenges, 4)}, mark-compacts ${per(g.markCompacts, 5)}, ` +
        `allocated ${per(g.allocatedMB * 1048576, 0)} bytes (from --trace-gc heap sizes), ` +
        `optimisations ${per(g.optimized, 4)}, deoptimisations ${per(g.deopts, 4)} (${g.scavenges} scavenges, ${g.markCompacts} mark-compacts, ${g.optimized} optimised, ${g.deopts} deopts in the window)`,
      '',
      `Optimised most often in the window: ${top(g.byOptimized, 12) || 'none'}`,
      '',
      `Deoptimised in the window: ${top(g.byDeopt, 12) || 'none'}`,
      '',
    );
  }
  if (o.heap === 'yes') {
    const heap = heapTop(join(rig.dir, `${s.pid}.heapprofile`));
    const total = heap.reduce((a, b) => a + b.bytes, 0);
    lines.push(
      `Sampled allocations in the window: ${per(total, 0)} bytes per handshake; by function (self, bytes per handshake):`,
      '',
      '| function | bytes |',
      '|---|--:|',
    );
    lines.push(...heap.slice(0, 40).map((t) => `| \`${t.fn}\` | ${per(t.bytes, 0)} |`), '');
  }
  process.stdout.write(`${lines.join('\n')}\n`);
} finally {
  await rig.close();
}
