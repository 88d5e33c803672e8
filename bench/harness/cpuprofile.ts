/**
 * Reading a V8 CPU profile (`node --cpu-prof`): self and inclusive time per function. Time per sample comes from
 * `timeDeltas`, not hit counts times the nominal interval, so a stalled sampler does not skew the shares. "(idle)" is
 * left out of the totals; "(program)" (native code V8 cannot attribute) and "(garbage collector)" are kept.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

export type CallFrame = { readonly functionName: string; readonly url: string; readonly lineNumber: number; readonly columnNumber: number };
type ProfileNode = { readonly id: number; readonly callFrame: CallFrame; readonly children?: readonly number[] };
/** `startTime`: µs on CLOCK_MONOTONIC (Linux), the clock of process.hrtime() in any process. */
type CpuProfile = { nodes: readonly ProfileNode[]; startTime: number; samples: readonly number[]; timeDeltas: readonly number[] };
/** A span of time on the monotonic clock, µs (`process.hrtime.bigint() / 1000n`). */
export type ProfileWindow = { readonly fromUs: number; readonly toUs: number };
/** One function ("name file:line", the file relative to `root` when given): self and inclusive time, µs and % of busy. */
export type FunctionCost = ReturnType<typeof summarizeProfile>['functions'][number];

export function readProfile(path: string) {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map(profile.nodes.flatMap((node) => (node.children ?? []).map((child) => [child, node.id] as const)));
  return { profile, byId, parent };
}

/** Self and inclusive time per function of the profile at `path`, most expensive (self) first; only samples inside `window` when given. */
export function summarizeProfile(path: string, root?: string, window?: ProfileWindow) {
  const { profile, byId, parent } = readProfile(path);
  const keyOf = ({ functionName, url, lineNumber }: CallFrame) => {
    const file = url.replace(/^file:\/\//, '');
    const shown = root !== undefined && file.startsWith(root) ? relative(root, file) : file;
    return `${functionName || '(anonymous)'}${url === '' ? '' : ` ${shown}:${lineNumber + 1}`}`;
  };
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const addTo = (map: Map<string, number>, key: string, us: number) => map.set(key, (map.get(key) ?? 0) + us);
  let [busyUs, idleUs, at] = [0, 0, profile.startTime];
  const n = profile.samples.length;
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
    addTo(self, keyOf(leaf.callFrame), dt);
    const seen = new Set<string>(); // recursion: a sample counts once per function
    for (let id: number | undefined = leaf.id; id !== undefined && byId.get(id)!.callFrame.functionName !== '(root)'; id = parent.get(id)) {
      const key = keyOf(byId.get(id)!.callFrame);
      if (!seen.has(key)) addTo(inclusive, key, dt);
      seen.add(key);
    }
  }
  const functions = [...inclusive].map(([key, inc]) => {
    const s = self.get(key) ?? 0;
    return { function: key, selfUs: s, inclusiveUs: inc, selfPct: (s / busyUs) * 100, inclusivePct: (inc / busyUs) * 100 };
  });
  return { busyUs, idleUs, functions: functions.sort((a, b) => b.selfUs - a.selfUs) };
}
