/**
 * CPU time of processes and of the machine, and process trees, read from /proc (Linux only).
 *
 * `/proc/<pid>/stat` fields 14 and 15 (utime, stime) are the whole process's user and system time, all threads
 * included, in clock ticks (usually 100 per second, so 10 ms resolution: measure windows of a second or more).
 * `/proc/<pid>/task/<tid>/stat` gives the same per thread, which separates a Node process's main thread (tid = pid:
 * JavaScript, syscalls) from its other threads (libuv pool: PKCS#11 calls; V8 helpers: GC, compilation). For the
 * calling process itself `selfCpu()` uses process.cpuUsage() (µs resolution).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Microseconds of user and of system (kernel) time. */
export interface CpuTimes {
  readonly userUs: number;
  readonly systemUs: number;
}

let usPerTick: number | undefined;

/** 1e6 / sysconf(_SC_CLK_TCK), asked of `getconf` once; 100 ticks a second if that fails (the Linux value in practice). */
function tickUs(): number {
  if (usPerTick === undefined) {
    let ticks = 100;
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).trim());
    } catch {
      // keep 100
    }
    usPerTick = 1e6 / (Number.isInteger(ticks) && ticks > 0 ? ticks : 100);
  }
  return usPerTick;
}

/** utime and stime from a /proc stat file. The command name may hold spaces and ')': fields count from the last ')'. */
export function parseStat(text: string): CpuTimes {
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' '); // rest[0] is field 3 (state): field n is rest[n - 3]
  const [utime, stime] = [Number(rest[14 - 3]), Number(rest[15 - 3])];
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unexpected /proc stat format: ${text.slice(0, 80)}`);
  return { userUs: utime * tickUs(), systemUs: stime * tickUs() };
}

/** The whole process's CPU time (all threads, living and exited). */
export function procCpu(pid: number): CpuTimes {
  return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
}

/** CPU of one thread: its process's role, its name, user and system µs. */
export interface ThreadTimes extends CpuTimes {
  readonly key: string;
}

/**
 * `root` and all its living descendants (parent pids from /proc/<pid>/stat field 4; not /proc/<pid>/task/<tid>/children,
 * which kernels without CONFIG_PROC_CHILDREN lack).
 */
export function processTree(root: number): number[] {
  const ppids = new Map<number, number>();
  for (const name of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'utf8');
      ppids.set(Number(name), Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // exited while we looked
    }
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) for (const [pid, ppid] of ppids) if (ppid === tree[i]) tree.push(pid);
  return tree;
}

/**
 * Every live thread of `pid` (and with `withChildren` of its descendants), summed by key: the main thread of each process
 * as `main (<comm>)` (tid = pid), the others by name with a trailing number as N. Node names its helper threads (V8's
 * platform workers: GC and compiler; libuv's pool) `node` like its main thread, so they are told apart by tid only.
 * Threads that exit between two readings drop out: read before and after a window and subtract (`minus`).
 */
export function threads(pid: number, withChildren = false): Map<string, ThreadTimes> {
  const out = new Map<string, ThreadTimes>();
  for (const p of withChildren ? processTree(pid) : [pid]) {
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      let text: string;
      try {
        text = readFileSync(`/proc/${p}/task/${tid}/stat`, 'utf8');
      } catch {
        continue; // the thread exited while we looked
      }
      const comm = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
      const key = Number(tid) === p ? `main (${comm})` : comm.replace(/\d+$/, 'N');
      out.set(key, { key, ...add(out.get(key) ?? { userUs: 0, systemUs: 0 }, parseStat(text)) });
    }
  }
  return out;
}

export function minus(after: Map<string, ThreadTimes>, before: Map<string, ThreadTimes>): Map<string, ThreadTimes> {
  return new Map([...after].map(([key, a]) => [key, { key, ...delta(before.get(key) ?? { userUs: 0, systemUs: 0 }, a) }]));
}

/** The main thread (tid = pid) and all other threads currently alive, summed. */
export interface ThreadCpu {
  readonly main: CpuTimes;
  readonly others: CpuTimes;
}

/** CPU time of the main thread and of the other live threads of `pid`. */
export function threadCpu(pid: number): ThreadCpu {
  const all = [...threads(pid).values()];
  const main = all.find((t) => t.key.startsWith('main ('));
  const others = all.filter((t) => t !== main).reduce<CpuTimes>(add, { userUs: 0, systemUs: 0 });
  return { main: { userUs: main?.userUs ?? 0, systemUs: main?.systemUs ?? 0 }, others };
}

/** This process, from process.cpuUsage() (all threads, microseconds). */
export function selfCpu(): CpuTimes {
  const u = process.cpuUsage();
  return { userUs: u.user, systemUs: u.system };
}

export const add = (a: CpuTimes, b: CpuTimes): CpuTimes => ({ userUs: a.userUs + b.userUs, systemUs: a.systemUs + b.systemUs });
export const delta = (before: CpuTimes, after: CpuTimes): CpuTimes => ({ userUs: after.userUs - before.userUs, systemUs: after.systemUs - before.systemUs });
export const totalUs = (t: CpuTimes): number => t.userUs + t.systemUs;

/** µs of CPU, summed over all CPUs: busy (anything but idle and iowait), idle, and steal (the hypervisor ran something else; 0 where not accounted). */
export interface MachineCpu {
  readonly busyUs: number;
  readonly idleUs: number;
  readonly stealUs: number;
}

/** Whole-machine CPU time from the first line of /proc/stat. */
export function machineCpu(): MachineCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  const us = (...ticks: (number | undefined)[]) => ticks.reduce<number>((n, t) => n + (t ?? 0), 0) * tickUs();
  return { busyUs: us(user, nice, system, irq, softirq), idleUs: us(idle, iowait), stealUs: us(steal) };
}
