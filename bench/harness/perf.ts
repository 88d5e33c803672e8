/**
 * `perf record` of server processes during a measurement window, and the report bench/handshake/main.ts --perf makes
 * of it: where a handshake's CPU goes, per process, binary (node = V8 + statically linked OpenSSL; the kernel; the
 * keyless addon), native symbol and JavaScript function (inclusive). Sampling is on-CPU, so unlike `node --cpu-prof` a
 * worker blocked in poll() costs nothing, and native code is seen. JavaScript names need `--perf-basic-prof` (V8
 * writes /tmp/perf-<pid>.map; `removePerfMaps` deletes them).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { taskIds } from './proc-cpu.js';

export function havePerf(): boolean {
  return spawnSync('perf', ['--version'], { stdio: 'ignore', timeout: 5000 }).status === 0;
}

/** `perf record -F hz -g -p pids -o file -- sleep seconds`; `done` resolves when perf has written its file. */
export function perfRecord(pids: readonly number[], file: string, seconds: number, hz: number): { readonly done: Promise<void> } {
  const args = ['record', '-q', '-F', String(hz), '-g', '-p', pids.join(','), '-o', file, '--', 'sleep', String(seconds)];
  const child = spawn('perf', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (t: string) => (stderr += t));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`perf record exited with ${code}: ${stderr.trim()}`))));
  });
  return { done };
}

/** One line of a report: share of all samples in percent (self; inclusive for `jsInclusive`), samples, name. */
type PerfLine = { readonly pct: number; readonly samples: number; readonly name: string };

/** `perf report` lines matching `pattern` (groups: percent, samples, name). */
async function report(file: string, args: readonly string[], pattern: RegExp): Promise<PerfLine[]> {
  const options = { maxBuffer: 64 * 2 ** 20, timeout: 120_000 };
  const { stdout } = await promisify(execFile)('perf', ['report', '-i', file, '--stdio', '-g', 'none', '-n', ...args], options);
  return stdout.split('\n').flatMap((line) => {
    const m = pattern.exec(line);
    return m === null ? [] : [{ pct: Number(m[1]), samples: Number(m[2]), name: m[3]!.replace(/\s+/g, ' ') }];
  });
}

/** Labels for every thread of the processes (perf's "pid" sort key is a thread id): the main thread apart from the others. */
export function threadLabels(processes: ReadonlyMap<number, string>): Map<number, string> {
  const out = new Map<number, string>();
  for (const [pid, role] of processes) for (const tid of taskIds(pid)) out.set(tid, `${role} ${pid}, ${tid === pid ? 'main thread' : 'other threads'}`);
  return out;
}

export type PerfSummary = Awaited<ReturnType<typeof summarizePerf>>;

/** By thread group (threadLabels), binary, symbol (at most `limit`) and JavaScript function (inclusive, at most `limit`), largest first. */
export async function summarizePerf(file: string, hz: number, labels: ReadonlyMap<number, string>, limit = 30) {
  const self = /^\s+([\d.]+)%\s+(\d+)\s+(.*\S)\s*$/;
  const byThread = await report(file, ['--no-children', '--sort', 'pid'], self);
  const bySymbol = await report(file, ['--no-children', '--sort', 'dso,sym'], self);
  // Children: "children% self% samples [.] symbol".
  const jsInclusive = await report(file, ['--children', '--sort', 'sym'], /^\s+([\d.]+)%\s+[\d.]+%\s+(\d+)\s+\[.\]\s+(JS:.*\S)\s*$/);
  return {
    samples: byThread.reduce((n, l) => n + l.samples, 0),
    hz,
    byProcess: merged(byThread, (name) => labels.get(Number(/^(\d+):/.exec(name)?.[1])) ?? `thread ${name}`),
    byBinary: await report(file, ['--no-children', '--sort', 'dso'], self),
    bySymbol: bySymbol.slice(0, limit),
    // The same function appears once per process (and per tier): merged by name without the tier mark.
    jsInclusive: merged(jsInclusive, (name) => name.replace(/^JS:[*^~+]?/, '')).slice(0, limit),
  };
}

function merged(lines: readonly PerfLine[], nameOf: (name: string) => string): PerfLine[] {
  const out = new Map<string, PerfLine>();
  for (const l of lines) {
    const name = nameOf(l.name);
    const prev = out.get(name);
    out.set(name, { name, pct: (prev?.pct ?? 0) + l.pct, samples: (prev?.samples ?? 0) + l.samples });
  }
  return [...out.values()].sort((a, b) => b.pct - a.pct);
}

/** Deletes the /tmp/perf-<pid>.map files V8 wrote for `--perf-basic-prof`. */
export function removePerfMaps(pids: Iterable<number>): void {
  for (const pid of pids) rmSync(`/tmp/perf-${pid}.map`, { force: true });
}
