/**
 * `perf record` of server processes during a measurement window, and the report bench/handshake/main.ts --perf makes
 * of it: where the CPU of a handshake goes, per process, per binary (node = V8 + OpenSSL, which node links statically;
 * the kernel; the keyless addon), per native symbol, and per JavaScript function (inclusive).
 *
 * Sampling is on-CPU (cpu-clock), so unlike `node --cpu-prof` (which samples the main thread by wall clock) a worker
 * blocked in the keyless RPC's poll() costs nothing here, and native code (OpenSSL, libuv, the kernel) is seen.
 * JavaScript names need the servers started with `--perf-basic-prof`, which makes V8 write /tmp/perf-<pid>.map;
 * `removePerfMaps` deletes them.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export function havePerf(): boolean {
  try {
    execFileSync('perf', ['--version'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

export interface PerfRecording {
  /** Resolves when perf has written its file. */
  readonly done: Promise<void>;
}

/** `perf record -F hz -g -p pids -o file -- sleep seconds`. */
export function perfRecord(pids: readonly number[], file: string, seconds: number, hz: number): PerfRecording {
  const child = spawn('perf', ['record', '-q', '-F', String(hz), '-g', '-p', pids.join(','), '-o', file, '--', 'sleep', String(seconds)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (t: string) => (stderr += t));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`perf record exited with ${code}: ${stderr.trim()}`))));
  });
  return { done };
}

export interface PerfLine {
  /** Share of all samples, percent (self; inclusive for `children`). */
  readonly pct: number;
  readonly samples: number;
  readonly name: string;
}

async function report(file: string, args: readonly string[]): Promise<string> {
  const { stdout } = await execFileAsync('perf', ['report', '-i', file, '--stdio', '-g', 'none', '-n', ...args], { maxBuffer: 64 * 2 ** 20, timeout: 120_000 });
  return stdout;
}

function parseSelf(text: string): PerfLine[] {
  const out: PerfLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s+([\d.]+)%\s+(\d+)\s+(.*\S)\s*$/.exec(line);
    if (m !== null) out.push({ pct: Number(m[1]), samples: Number(m[2]), name: m[3]!.replace(/\s+/g, ' ') });
  }
  return out;
}

/**
 * Labels for every thread of the given processes (perf's "pid" sort key is a thread id): the main thread (tid = pid:
 * JavaScript, OpenSSL, syscalls) apart from the others (V8's GC and compiler threads, libuv's pool).
 */
export function threadLabels(processes: ReadonlyMap<number, string>): Map<number, string> {
  const out = new Map<number, string>();
  for (const [pid, role] of processes) {
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) out.set(Number(tid), Number(tid) === pid ? `${role} ${pid}, main thread` : `${role} ${pid}, other threads`);
  }
  return out;
}

export interface PerfSummary {
  readonly samples: number;
  readonly hz: number;
  /** By thread group (threadLabels), in the order of their share. */
  readonly byProcess: readonly PerfLine[];
  readonly byBinary: readonly PerfLine[];
  readonly bySymbol: readonly PerfLine[];
  /** JavaScript functions by inclusive share (children), at most `limit`. */
  readonly jsInclusive: readonly PerfLine[];
}

export async function summarizePerf(file: string, hz: number, labels: ReadonlyMap<number, string>, limit = 30): Promise<PerfSummary> {
  const byThread = parseSelf(await report(file, ['--no-children', '--sort', 'pid']));
  const byBinary = parseSelf(await report(file, ['--no-children', '--sort', 'dso']));
  const bySymbol = parseSelf(await report(file, ['--no-children', '--sort', 'dso,sym'])).slice(0, limit);
  // Children: "children% self% samples [.] symbol".
  const jsInclusive: PerfLine[] = [];
  for (const line of (await report(file, ['--children', '--sort', 'sym'])).split('\n')) {
    const m = /^\s+([\d.]+)%\s+[\d.]+%\s+(\d+)\s+\[.\]\s+(JS:.*\S)\s*$/.exec(line);
    if (m !== null) jsInclusive.push({ pct: Number(m[1]), samples: Number(m[2]), name: m[3]! });
  }
  return {
    samples: byThread.reduce((n, l) => n + l.samples, 0),
    hz,
    byProcess: merged(byThread, (name) => labels.get(Number(/^(\d+):/.exec(name)?.[1])) ?? `thread ${name}`),
    byBinary,
    bySymbol,
    // The same function appears once per process (and per tier): merged by name without the tier mark.
    jsInclusive: merged(jsInclusive, (name) => name.replace(/^JS:[*^~+]?/, '')).slice(0, limit),
  };
}

/** Lines summed by `nameOf(line.name)`, largest share first. */
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
