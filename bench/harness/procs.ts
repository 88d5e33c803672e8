/**
 * Process trees for bench/handshake/main.ts: the CPU time of a server that is more than one process (a cluster primary
 * and its workers, found by proc-cpu.ts processTree), CPU affinity, and CPU snapshots of several such trees plus the
 * whole machine at one instant.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { add, type CpuTimes, delta, machineCpu, type MachineCpu, processTree, procCpu, selfCpu, totalUs } from './proc-cpu.js';

/** Restricts `pid` and all its threads (and, by inheritance, the children it forks later) to `cpus` (taskset list syntax). */
export function setAffinity(pid: number, cpus: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore', timeout: 5000 });
}

/** Online CPU ids of the machine, e.g. [0, 1]. */
export function onlineCpus(): number[] {
  try {
    const text = readFileSync('/sys/devices/system/cpu/online', 'utf8').trim();
    const cpus: number[] = [];
    for (const part of text.split(',')) {
      const [a, b] = part.split('-').map(Number);
      for (let c = a!; c <= (b ?? a!); c++) cpus.push(c);
    }
    return cpus;
  } catch {
    return os.cpus().map((_, i) => i);
  }
}

/** A named group of processes measured together (e.g. "proxy": the primary and its workers). */
export interface TrackedGroup {
  readonly name: string;
  /** Root pids; the group is each root and its descendants, found again at every snapshot. */
  readonly roots: () => readonly number[];
}

export interface GroupSnapshot {
  readonly pids: readonly number[];
  /** Per pid, CPU so far. */
  readonly byPid: ReadonlyMap<number, CpuTimes>;
}

export interface CpuSnapshot {
  readonly atNs: bigint;
  readonly groups: ReadonlyMap<string, GroupSnapshot>;
  readonly machine: MachineCpu;
  readonly self: CpuTimes;
}

export function snapshot(groups: readonly TrackedGroup[]): CpuSnapshot {
  const out = new Map<string, GroupSnapshot>();
  for (const group of groups) {
    const pids = group.roots().flatMap((root) => (root > 0 ? processTree(root) : []));
    const byPid = new Map<number, CpuTimes>();
    for (const pid of pids) {
      try {
        byPid.set(pid, procCpu(pid));
      } catch {
        // exited
      }
    }
    out.set(group.name, { pids: [...byPid.keys()], byPid });
  }
  return { atNs: process.hrtime.bigint(), groups: out, machine: machineCpu(), self: selfCpu() };
}

export interface GroupUsage {
  /** µs of CPU (user + system) over the window, all the group's processes. */
  readonly cpuUs: number;
  readonly userUs: number;
  readonly systemUs: number;
  /** Per pid, µs over the window. */
  readonly byPid: Readonly<Record<string, number>>;
  /** Processes present at one end of the window only (a worker died or was replaced: the figure is incomplete). */
  readonly changedPids: readonly number[];
}

export interface WindowUsage {
  readonly seconds: number;
  readonly groups: Readonly<Record<string, GroupUsage>>;
  /** Cores busy on the whole machine during the window (/proc/stat). */
  readonly machineBusyCores: number;
  readonly stealCores: number;
  /** Cores used by this bench process. */
  readonly selfCores: number;
}

export function usageBetween(a: CpuSnapshot, b: CpuSnapshot): WindowUsage {
  const seconds = Number(b.atNs - a.atNs) / 1e9;
  const groups: Record<string, GroupUsage> = {};
  for (const [name, gb] of b.groups) {
    const ga = a.groups.get(name);
    let sum: CpuTimes = { userUs: 0, systemUs: 0 };
    const byPid: Record<string, number> = {};
    const changed: number[] = [];
    for (const [pid, end] of gb.byPid) {
      const start = ga?.byPid.get(pid);
      if (start === undefined) {
        changed.push(pid);
        continue;
      }
      const d = delta(start, end);
      sum = add(sum, d);
      byPid[String(pid)] = totalUs(d);
    }
    for (const pid of ga?.pids ?? []) if (!gb.byPid.has(pid)) changed.push(pid);
    groups[name] = { cpuUs: totalUs(sum), userUs: sum.userUs, systemUs: sum.systemUs, byPid, changedPids: changed };
  }
  return {
    seconds,
    groups,
    machineBusyCores: (b.machine.busyUs - a.machine.busyUs) / 1e6 / seconds,
    stealCores: (b.machine.stealUs - a.machine.stealUs) / 1e6 / seconds,
    selfCores: totalUs(delta(a.self, b.self)) / 1e6 / seconds,
  };
}

/**
 * Per-unit figures of a window: `per(...groups)` = their CPU µs ÷ units (NaN without units), `cores(...groups)`, and
 * the cores other processes used (the machine's busy cores less every tracked group and this bench): contention.
 */
export function perUnit(usage: WindowUsage, units: number) {
  const us = (names: readonly (string | undefined)[]) => names.reduce((n, name) => n + (name === undefined ? 0 : (usage.groups[name]?.cpuUs ?? 0)), 0);
  const ours = Object.values(usage.groups).reduce((n, x) => n + x.cpuUs, 0) / 1e6 / usage.seconds;
  return {
    per: (...names: (string | undefined)[]) => (units > 0 ? us(names) / units : Number.NaN),
    cores: (...names: (string | undefined)[]) => us(names) / 1e6 / usage.seconds,
    otherCores: Math.max(0, usage.machineBusyCores - ours - usage.selfCores),
  };
}
