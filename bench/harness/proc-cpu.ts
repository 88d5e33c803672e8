/**
 * CPU time of other processes, read from /proc (Linux only).
 *
 * `/proc/<pid>/stat` fields 14 and 15 (utime, stime) are the whole process's
 * user and system time, all threads included, in clock ticks (usually 100 per
 * second, so 10 ms resolution: measure windows of a second or more).
 * `/proc/<pid>/task/<tid>/stat` gives the same per thread, which separates a
 * Node process's main thread (tid = pid: JavaScript, syscalls) from its other
 * threads (libuv pool: PKCS#11 calls; V8 helpers: GC, compilation).
 *
 * For the calling process itself use `process.cpuUsage()` (microsecond
 * resolution); `selfCpu()` wraps it in the same shape.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export interface CpuTimes {
  /** Microseconds of user time. */
  readonly userUs: number;
  /** Microseconds of system (kernel) time. */
  readonly systemUs: number;
}

let ticksPerSecond: number | undefined;

/** sysconf(_SC_CLK_TCK), asked of `getconf` once; 100 if that fails (the Linux value everywhere in practice). */
export function clockTicksPerSecond(): number {
  if (ticksPerSecond === undefined) {
    try {
      const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).trim());
      ticksPerSecond = Number.isInteger(n) && n > 0 ? n : 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** utime and stime from the text of a /proc stat file. The command name may hold spaces and ')', so fields are counted from the last ')'. */
export function parseStat(text: string): CpuTimes {
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so field n is rest[n - 3].
  const utime = Number(rest[14 - 3]);
  const stime = Number(rest[15 - 3]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unexpected /proc stat format: ${text.slice(0, 80)}`);
  const usPerTick = 1e6 / clockTicksPerSecond();
  return { userUs: utime * usPerTick, systemUs: stime * usPerTick };
}

/** The whole process's CPU time (all threads, living and exited). */
export function procCpu(pid: number): CpuTimes {
  return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
}

export interface ThreadCpu {
  /** The main thread (tid = pid). */
  readonly main: CpuTimes;
  /** All other threads currently alive, summed. */
  readonly others: CpuTimes;
}

/** CPU time of the main thread and of the other live threads of `pid`. Threads that exit between two readings drop out of `others`. */
export function threadCpu(pid: number): ThreadCpu {
  let main: CpuTimes = { userUs: 0, systemUs: 0 };
  let others: CpuTimes = { userUs: 0, systemUs: 0 };
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let times: CpuTimes;
    try {
      times = parseStat(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
    } catch {
      continue; // the thread exited while we looked
    }
    if (Number(tid) === pid) main = times;
    else others = add(others, times);
  }
  return { main, others };
}

/** This process, from process.cpuUsage() (all threads, microseconds). */
export function selfCpu(): CpuTimes {
  const u = process.cpuUsage();
  return { userUs: u.user, systemUs: u.system };
}

export function add(a: CpuTimes, b: CpuTimes): CpuTimes {
  return { userUs: a.userUs + b.userUs, systemUs: a.systemUs + b.systemUs };
}

export function delta(before: CpuTimes, after: CpuTimes): CpuTimes {
  return { userUs: after.userUs - before.userUs, systemUs: after.systemUs - before.systemUs };
}

export function totalUs(t: CpuTimes): number {
  return t.userUs + t.systemUs;
}

export interface MachineCpu {
  /** Microseconds of CPU time spent on anything but idle and iowait, summed over all CPUs. */
  readonly busyUs: number;
  readonly idleUs: number;
  /** Time the hypervisor ran something else (0 where the kernel does not account it). */
  readonly stealUs: number;
}

/** Whole-machine CPU time from the first line of /proc/stat (all CPUs summed). */
export function machineCpu(): MachineCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const [, user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
  const usPerTick = 1e6 / clockTicksPerSecond();
  return {
    busyUs: ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0)) * usPerTick,
    idleUs: ((idle ?? 0) + (iowait ?? 0)) * usPerTick,
    stealUs: (steal ?? 0) * usPerTick,
  };
}
