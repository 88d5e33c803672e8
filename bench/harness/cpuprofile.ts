/**
 * Reading a V8 CPU profile (`node --cpu-prof`, a .cpuprofile JSON file): self and inclusive time per function, so a
 * benchmark can say which source lines cost what per operation.
 *
 * Time per sample is taken from `timeDeltas` (the gap before the next sample), not from hit counts times the nominal
 * interval, so a stalled sampler does not skew the shares. "(idle)" is excluded from the totals; "(program)" (native
 * code V8 cannot attribute: libuv, syscalls, native addons without JS frames above them) and "(garbage collector)" are
 * kept.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

export interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
  readonly columnNumber: number;
}

export type ProfileNode = { readonly id: number; readonly callFrame: CallFrame; readonly children?: readonly number[] };

/** `startTime` is µs on V8's monotonic clock: on Linux CLOCK_MONOTONIC, the clock of process.hrtime() in any process. */
export type CpuProfile = {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
};

/** A span of time on the monotonic clock, µs (`process.hrtime.bigint() / 1000n` in any process of the machine, Linux). */
export type ProfileWindow = { readonly fromUs: number; readonly toUs: number };

/** One function ("name file:line", the file relative to `root` when given): self and inclusive time, µs and % of busy. */
export interface FunctionCost {
  readonly function: string;
  readonly selfUs: number;
  readonly inclusiveUs: number;
  readonly selfPct: number;
  readonly inclusivePct: number;
}

/** Non-idle and idle sampled time, µs, and the cost of every function. */
export type ProfileSummary = { readonly busyUs: number; readonly idleUs: number; readonly functions: readonly FunctionCost[] };

function frameKey(frame: CallFrame, root: string | undefined): string {
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName;
  if (frame.url === '') return name;
  let file = frame.url.replace(/^file:\/\//, '');
  if (root !== undefined && file.startsWith(root)) file = relative(root, file);
  return `${name} ${file}:${frame.lineNumber + 1}`;
}

/** The profile at `path` with its nodes by id and each node's parent id. */
export function readProfile(path: string): { profile: CpuProfile; byId: Map<number, ProfileNode>; parent: Map<number, number> } {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  return { profile, byId, parent };
}

/** Self and inclusive time per function of the profile at `path`, most expensive (self) first; only samples inside `window` when given. */
export function summarizeProfile(path: string, root?: string, window?: ProfileWindow): ProfileSummary {
  const { profile, byId, parent } = readProfile(path);
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let busyUs = 0;
  let idleUs = 0;
  const n = profile.samples.length;
  let at = profile.startTime;
  for (let i = 0; i < n; i++) {
    // The delta before sample i+1 is how long sample i's stack was current.
    const dt = i + 1 < n ? Math.max(0, profile.timeDeltas[i + 1]!) : 0;
    at += profile.timeDeltas[i] ?? 0;
    if (window !== undefined && (at < window.fromUs || at > window.toUs)) continue;
    const leaf = byId.get(profile.samples[i]!);
    if (leaf === undefined) continue;
    if (leaf.callFrame.functionName === '(idle)') {
      idleUs += dt;
      continue;
    }
    busyUs += dt;
    const leafKey = frameKey(leaf.callFrame, root);
    self.set(leafKey, (self.get(leafKey) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
      const node = byId.get(id)!;
      if (node.callFrame.functionName === '(root)') break;
      const key = frameKey(node.callFrame, root);
      if (seen.has(key)) continue; // recursion: count a sample once per function
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + dt);
    }
  }
  const functions = [...inclusive.keys()].map((key) => {
    const s = self.get(key) ?? 0;
    const inc = inclusive.get(key) ?? 0;
    return { function: key, selfUs: s, inclusiveUs: inc, selfPct: (s / busyUs) * 100, inclusivePct: (inc / busyUs) * 100 };
  });
  functions.sort((a, b) => b.selfUs - a.selfUs);
  return { busyUs, idleUs, functions };
}
