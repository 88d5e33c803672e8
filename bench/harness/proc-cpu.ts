/**
 * CPU time of processes, threads and the machine, process trees and CPU affinity, from /proc (Linux only); snapshots of
 * named process groups and the machine, whose difference is a window's usage. /proc stat fields 14 and 15 (utime,
 * stime) count clock ticks, usually 100 a second: measure windows of a second or more.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';

type CpuTimes = { readonly userUs: number; readonly systemUs: number };
export type ThreadTimes = CpuTimes & { readonly key: string };
const ZERO: CpuTimes = { userUs: 0, systemUs: 0 };
const add = (a: CpuTimes, b: CpuTimes): CpuTimes => ({ userUs: a.userUs + b.userUs, systemUs: a.systemUs + b.systemUs });
export const delta = (before: CpuTimes, after: CpuTimes): CpuTimes => ({ userUs: after.userUs - before.userUs, systemUs: after.systemUs - before.systemUs });
export const totalUs = (t: CpuTimes): number => t.userUs + t.systemUs;

const ONLINE = '/sys/devices/system/cpu/online';
let usPerTick: number | undefined;

/** 1e6 / sysconf(_SC_CLK_TCK), asked of `getconf` once; 100 ticks a second if that fails (the Linux value in practice). */
function tickUs(): number {
  usPerTick ??= 1e6 / (Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).stdout?.trim()) || 100);
  return usPerTick;
}

/** Fields 3.. of a /proc stat file (field n is at n - 3): the command name may hold spaces and ')', so after the last ')'. */
const statFields = (text: string): string[] => text.slice(text.lastIndexOf(')') + 2).split(' ');

function parseStat(text: string): CpuTimes {
  const rest = statFields(text);
  const [utime, stime] = [Number(rest[14 - 3]), Number(rest[15 - 3])];
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unexpected /proc stat format: ${text.slice(0, 80)}`);
  return { userUs: utime * tickUs(), systemUs: stime * tickUs() };
}

/** The whole process's CPU time (all threads, living and exited). */
export const procCpu = (pid: number): CpuTimes => parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));

/** `root` and its living descendants (parent pids from field 4; /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN). */
export function processTree(root: number): number[] {
  const ppids = new Map<number, number>();
  for (const name of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      ppids.set(Number(name), Number(statFields(readFileSync(`/proc/${name}/stat`, 'utf8'))[1]));
    } catch {} // exited while we looked
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) for (const [pid, ppid] of ppids) if (ppid === tree[i]) tree.push(pid);
  return tree;
}

/** Every live thread of `pid` (and its descendants), summed by key: `main (<comm>)`, the others by name (a trailing number as N). */
export function threads(pid: number, withChildren = false): Map<string, ThreadTimes> {
  const out = new Map<string, ThreadTimes>();
  for (const p of withChildren ? processTree(pid) : [pid]) {
    let tids: number[] = [];
    try {
      tids = readdirSync(`/proc/${p}/task`).map(Number);
    } catch {} // the process exited
    for (const tid of tids) {
      let text: string;
      try {
        text = readFileSync(`/proc/${p}/task/${tid}/stat`, 'utf8');
      } catch {
        continue; // the thread exited while we looked
      }
      const comm = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
      const key = tid === p ? `main (${comm})` : comm.replace(/\d+$/, 'N');
      out.set(key, { key, ...add(out.get(key) ?? ZERO, parseStat(text)) });
    }
  }
  return out;
}

export const minus = (after: Map<string, ThreadTimes>, before: Map<string, ThreadTimes>): Map<string, ThreadTimes> =>
  new Map([...after].map(([key, a]) => [key, { key, ...delta(before.get(key) ?? ZERO, a) }]));

export function threadCpu(pid: number): { main: CpuTimes; others: CpuTimes } {
  const all = [...threads(pid).values()];
  const main = all.find((t) => t.key.startsWith('main (')) ?? { ...ZERO, key: '' };
  return { main: { userUs: main.userUs, systemUs: main.systemUs }, others: all.filter((t) => t !== main).reduce<CpuTimes>(add, ZERO) };
}

/** Whole-machine µs over all CPUs from /proc/stat: busy (not idle or iowait), steal (the hypervisor ran someone else). */
function machineCpu(): { readonly busyUs: number; readonly stealUs: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  const us = (...ticks: (number | undefined)[]) => ticks.reduce<number>((n, t) => n + (t ?? 0), 0) * tickUs();
  return { busyUs: us(user, nice, system, irq, softirq), stealUs: us(steal) };
}

/** Restricts `pid` and all its threads (and, by inheritance, the children it forks later) to `cpus` (taskset list syntax). */
export const setAffinity = (pid: number, cpus: string): void =>
  void execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore', timeout: 5000 });

/** The online CPUs' numbers (a list such as "0-3,6"); all of os.cpus() where /sys does not say. */
export function onlineCpus(): number[] {
  const online = existsSync(ONLINE) ? readFileSync(ONLINE, 'utf8').trim() : `0-${os.cpus().length - 1}`;
  return online.split(',').flatMap((range) => {
    const [a, b = a] = range.split('-').map(Number);
    return Array.from({ length: b! - a! + 1 }, (_, i) => a! + i);
  });
}

/** A named group of processes measured together (e.g. "proxy": the primary and its workers): each root and its descendants. */
export type TrackedGroup = { readonly name: string; readonly roots: () => readonly number[] };

export function snapshot(groups: readonly TrackedGroup[]) {
  const byGroup = new Map<string, Map<number, CpuTimes>>();
  for (const group of groups) {
    const byPid = new Map<number, CpuTimes>();
    for (const pid of group.roots().flatMap((root) => (root > 0 ? processTree(root) : []))) {
      try {
        byPid.set(pid, procCpu(pid));
      } catch {} // exited
    }
    byGroup.set(group.name, byPid);
  }
  const self = process.cpuUsage();
  return { atNs: process.hrtime.bigint(), groups: byGroup, machine: machineCpu(), self: { userUs: self.user, systemUs: self.system } };
}

/** `changedPids`: present at one end only (a worker died: incomplete). */
type GroupUsage = { cpuUs: number; userUs: number; systemUs: number; byPid: Record<string, number>; changedPids: number[] };

export function usageBetween(a: ReturnType<typeof snapshot>, b: ReturnType<typeof snapshot>) {
  const seconds = Number(b.atNs - a.atNs) / 1e9;
  const groups: Record<string, GroupUsage> = {};
  for (const [name, end] of b.groups) {
    const start = a.groups.get(name) ?? new Map<number, CpuTimes>();
    let sum = ZERO;
    const byPid: Record<string, number> = {};
    const changedPids = [...[...end.keys()].filter((pid) => !start.has(pid)), ...[...start.keys()].filter((pid) => !end.has(pid))];
    for (const [pid, times] of end) {
      const from = start.get(pid);
      if (from === undefined) continue;
      sum = add(sum, delta(from, times));
      byPid[String(pid)] = totalUs(delta(from, times));
    }
    groups[name] = { cpuUs: totalUs(sum), ...sum, byPid, changedPids };
  }
  const cores = (from: number, to: number) => (to - from) / 1e6 / seconds;
  return {
    seconds,
    groups,
    machineBusyCores: cores(a.machine.busyUs, b.machine.busyUs),
    stealCores: cores(a.machine.stealUs, b.machine.stealUs),
    selfCores: cores(totalUs(a.self), totalUs(b.self)),
  };
}

/** A window's `per(...groups)` CPU µs per unit, `cores(...groups)`, and `otherCores`: busy cores not ours (contention). */
export function perUnit(usage: ReturnType<typeof usageBetween>, units: number) {
  const us = (names: readonly (string | undefined)[]) => names.reduce((n, name) => n + (name === undefined ? 0 : (usage.groups[name]?.cpuUs ?? 0)), 0);
  const ours = Object.values(usage.groups).reduce((n, x) => n + x.cpuUs, 0) / 1e6 / usage.seconds;
  return {
    per: (...names: (string | undefined)[]) => (units > 0 ? us(names) / units : Number.NaN),
    cores: (...names: (string | undefined)[]) => us(names) / 1e6 / usage.seconds,
    otherCores: Math.max(0, usage.machineBusyCores - ours - usage.selfCores),
  };
}
