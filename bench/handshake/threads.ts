/**
 * What a full TLS 1.3 handshake + one proxied GET costs outside the main
 * thread's JavaScript: CPU per thread of the serving process (by thread name:
 * the main thread, V8's platform workers that run the optimizing compiler and
 * the concurrent GC, libuv's pool), scavenges and mark-compacts per handshake
 * and bytes allocated per handshake (`--trace-gc` lines of the serving pid),
 * optimisations and deoptimisations per handshake under steady load
 * (`--trace-opt`, `--trace-deopt`), and with `--heap yes` the window's
 * allocations by function (heap-sampler.ts: V8's sampling heap profiler with
 * collected objects kept). All at a fixed number of handshakes after a
 * warm-up, so the figures are consumed CPU and counts, not rates: they hold on
 * a loaded machine. The Node that runs this script runs the server: run it
 * with another major's binary (harness/node-versions.ts) to measure that one.
 *
 * Servers (rig.ts): `inmemory` (the real cluster, one worker, key in memory)
 * or `floor` (floor.ts: bare node:https, fixed answer, no origin).
 *
 * Usage: node dist/bench/handshake/threads.js --server inmemory|floor [--full N] [--warmup N] [--heap yes] [--trace yes]
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseCli } from '../harness/cli.js';
import { minus, threads } from '../harness/proc-cpu.js';
import { drive, openRig, startServer } from './rig.js';

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
const v = parseCli('handshake/threads.js', TABLE);
if (v === undefined) process.exit(0);

/** `--trace-gc` lines of `pid`: "… Scavenge 10.2 (12.0) -> 9.5 (12.0) MB": counts and MB allocated between GCs (before − previous after). */
function gcFigures(text: string, pid: number, byFunction: { optimized: Map<string, number>; deopts: Map<string, number> }): Record<string, number> {
  const out: Record<string, number> = { scavenges: 0, markCompacts: 0, allocatedMB: 0, optimized: 0, deopts: 0 };
  const count = (m: Map<string, number>, line: string, why = ''): void => {
    const name = `${/<JSFunction ([^ >]*)/.exec(line)?.[1] ?? '?'}${why}`;
    m.set(name, (m.get(name) ?? 0) + 1);
  };
  let lastAfter: number | undefined;
  for (const line of text.split('\n')) {
    if (line.includes(`[${pid}:`)) {
      const m = /: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Sweep)[^\d]*([\d.]+) \(([\d.]+)\) -> ([\d.]+)/.exec(line);
      if (m === null) continue;
      if (m[1] === 'Scavenge' || m[1] === 'Minor Mark-Sweep') out.scavenges!++;
      else out.markCompacts!++;
      const before = Number(m[2]);
      if (lastAfter !== undefined && before > lastAfter) out.allocatedMB! += before - lastAfter;
      lastAfter = Number(m[4]);
    } else if (/completed (optimizing|compiling)/.test(line)) {
      out.optimized!++;
      count(byFunction.optimized, line, ` (${/target ([A-Z]+)/.exec(line)?.[1] ?? '?'})`);
    } else if (line.includes('bailout (kind:')) {
      out.deopts!++;
      count(byFunction.deopts, line, `: ${/reason: ([^)]*)\)/.exec(line)?.[1] ?? '?'}`);
    }
  }
  return out;
}

/** A .heapprofile's self bytes by function (name url:line), biggest first. */
function heapTop(file: string): { fn: string; bytes: number }[] {
  interface Node {
    callFrame: { functionName: string; url: string; lineNumber: number };
    selfSize: number;
    children: Node[];
  }
  const by = new Map<string, number>();
  const walk = (n: Node): void => {
    const f = n.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(dist|lib|node_modules)\//, '$1/')}:${f.lineNumber + 1}`;
    by.set(key, (by.get(key) ?? 0) + n.selfSize);
    for (const c of n.children) walk(c);
  };
  walk((JSON.parse(readFileSync(file, 'utf8')) as { head: Node }).head);
  return [...by].map(([fn, bytes]) => ({ fn, bytes })).sort((a, b) => b.bytes - a.bytes);
}

async function main(): Promise<void> {
  const o = v!;
  const rig = await openRig('threads');
  try {
    const flags = o.trace === 'yes' ? ['--trace-gc', '--trace-opt', '--trace-deopt'] : [];
    if (o['node-flags'] !== undefined) flags.push(...o['node-flags'].split(' ').filter((f) => f !== ''));
    if (o.heap === 'yes') flags.push('--import', pathToFileURL(fileURLToPath(new URL('./heap-sampler.js', import.meta.url))).href);
    const env = o.heap === 'yes' ? { HEAP_SAMPLE_DIR: rig.dir } : undefined;
    const { proc, pid, port } = await startServer(rig, o.server, { nodeArgs: flags, env });
    const ab = (n: number) => drive('full', port, n, o.concurrency, rig.ca);
    await ab(o.warmup);
    await new Promise((r) => setTimeout(r, 1000));
    const from = statSync(proc.logFile).size;
    if (o.heap === 'yes') process.kill(pid, 'SIGUSR2');
    const t0 = threads(pid, false);
    await ab(o.full);
    const t1 = threads(pid, false);
    if (o.heap === 'yes') process.kill(pid, 'SIGUSR2');
    await new Promise((r) => setTimeout(r, 1500));
    const text = readFileSync(proc.logFile, 'utf8').slice(from);
    if (o['keep-log'] !== undefined) writeFileSync(o['keep-log'], text);
    const byName = new Map([...minus(t1, t0)].map(([name, t]) => [name, { user: t.userUs, system: t.systemUs }]));
    const per = (us: number) => (us / o.full).toFixed(1);
    const sum = (f: (x: { user: number; system: number }) => number) => [...byName.values()].reduce((a, b) => a + f(b), 0);
    const lines = [
      `## ${o.server}, Node ${process.version}: ${o.full} full TLS 1.3 handshakes + GET (ab -c ${o.concurrency}) after ${o.warmup}; flags ${flags.filter((f) => f.startsWith('--') && f !== '--import').join(' ') || 'none'}`,
      '',
      '| thread | user µs per handshake | system µs per handshake |',
      '|---|--:|--:|',
      ...[...byName].sort((a, b) => b[1].user + b[1].system - a[1].user - a[1].system).map(([n, t]) => `| ${n} | ${per(t.user)} | ${per(t.system)} |`),
      `| all | ${per(sum((t) => t.user))} | ${per(sum((t) => t.system))} |`,
      '',
    ];
    if (o.trace === 'yes') {
      const byFunction = { optimized: new Map<string, number>(), deopts: new Map<string, number>() };
      const g = gcFigures(text, pid, byFunction);
      const top = (m: Map<string, number>) =>
        [...m]
          .sort((a, b) => b[1] - a[1])
          .slice(0, 12)
          .map(([f, n]) => `${f} ×${n}`)
          .join('; ');
      lines.push(
        `GC and JIT per handshake: scavenges ${(g.scavenges! / o.full).toFixed(4)}, mark-compacts ${(g.markCompacts! / o.full).toFixed(5)}, ` +
          `allocated ${((g.allocatedMB! * 1048576) / o.full).toFixed(0)} bytes (from --trace-gc heap sizes), ` +
          `optimisations ${(g.optimized! / o.full).toFixed(4)}, deoptimisations ${(g.deopts! / o.full).toFixed(4)} (${g.scavenges} scavenges, ${g.markCompacts} mark-compacts, ${g.optimized} optimised, ${g.deopts} deopts in the window)`,
        '',
        `Optimised most often in the window: ${top(byFunction.optimized) || 'none'}`,
        '',
        `Deoptimised in the window: ${top(byFunction.deopts) || 'none'}`,
        '',
      );
    }
    if (o.heap === 'yes') {
      const file = join(rig.dir, `${pid}.heapprofile`);
      const top = heapTop(file);
      const total = top.reduce((a, b) => a + b.bytes, 0);
      lines.push(
        `Sampled allocations in the window: ${(total / o.full).toFixed(0)} bytes per handshake; by function (self, bytes per handshake):`,
        '',
        '| function | bytes |',
        '|---|--:|',
      );
      for (const t of top.slice(0, 40)) lines.push(`| \`${t.fn}\` | ${(t.bytes / o.full).toFixed(0)} |`);
      lines.push('');
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await rig.close();
  }
}

await main();
