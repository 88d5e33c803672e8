/**
 * CPU time of every thread of a process tree, by thread, from
 * /proc/<pid>/task/<tid>/stat (Linux only; 10 ms ticks): user and system
 * apart, each thread under its name (`comm`), the main thread of each process
 * as `main (<name>)`. Node names its helper threads (V8's platform workers:
 * GC and compiler; libuv's pool) `node` like its main thread, so they are
 * told apart by tid = pid only. Threads that exit between two readings drop
 * out of the sum: read before and after a window of work and subtract.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { parseStat } from './proc-cpu.js';

/** CPU of one thread: its process's role, its name, user and system µs. */
export interface ThreadTimes {
  readonly key: string;
  readonly userUs: number;
  readonly systemUs: number;
}

export function childrenOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number),
    );
  } catch {
    return [];
  }
}

/** Every thread of `pid` and its descendants, keyed `main` (tid = pid) or by thread name. */
export function threads(pid: number, withChildren: boolean): Map<string, ThreadTimes> {
  const out = new Map<string, ThreadTimes>();
  const pids = withChildren ? [pid, ...childrenOf(pid)] : [pid];
  for (const p of pids) {
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
        continue;
      }
      const comm = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
      const t = parseStat(text);
      const key = Number(tid) === p ? `main (${comm})` : comm.replace(/\d+$/, 'N');
      const prev = out.get(key) ?? { key, userUs: 0, systemUs: 0 };
      out.set(key, { key, userUs: prev.userUs + t.userUs, systemUs: prev.systemUs + t.systemUs });
    }
  }
  return out;
}

export function minus(after: Map<string, ThreadTimes>, before: Map<string, ThreadTimes>): Map<string, ThreadTimes> {
  const out = new Map<string, ThreadTimes>();
  for (const [k, a] of after) {
    const b = before.get(k) ?? { key: k, userUs: 0, systemUs: 0 };
    out.set(k, { key: k, userUs: a.userUs - b.userUs, systemUs: a.systemUs - b.systemUs });
  }
  return out;
}
