/**
 * The cert-scale bench's result files, as far as the run got: the store and both starts always; a proxy that was not
 * ready in time stops there; --cpu-prof adds the reloads and where the primary's and a worker's time went; a full
 * run the reloads, bounded memory and memory per secure context, and the suite's summary rows.
 */
import { readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ProfileWindow, summarizeProfile } from '../harness/cpuprofile.js';
import { topFunctionsTables } from '../harness/profile-table.js';
import { dateStamp, fmt, type MachineInfo, machineLines, markdownTable } from '../harness/report.js';
import { type Log, publish } from '../harness/runner.js';
import { median, round } from '../harness/stats.js';
import { durationRow } from '../harness/summary.js';
import type { handshakeAll, replaceOne, rssOf, startupPhases } from './main.js';

type Rss = ReturnType<typeof rssOf>;
type Pass = Awaited<ReturnType<typeof handshakeAll>>;
type Phases = ReturnType<typeof startupPhases>;

/** What cert-scale/main.ts measured; the parts after the first start only as far as the run got. */
type ScaleRun = {
  out: string;
  name: string;
  quick: boolean;
  machine: MachineInfo;
  settings: { names: number; bounded: number; cacheSize: number; readyTimeoutMs: number };
  generateSeconds: number;
  /** The first start, which validates every entry and records the verdicts. */
  firstStart: { readyMs: number | undefined; rss: Rss };
  /** The start measured; `rss` 1 s after ready, or when given up (readyMs undefined, the log's last lines kept). */
  startup: { readyMs: number | undefined; phases: Phases; rss: Rss; lastLogLines?: unknown };
  replaced?: Awaited<ReturnType<typeof replaceOne>>[];
  /** No-change rescans: POST /reload's durationMs. */
  rescans?: number[];
  bounded?: { rssBefore: Rss; passes: (Pass & { rss: Rss })[] };
  contextRuns?: (Pass & { cacheSize: number; readyMs: number; afterStart: Rss; afterHandshakes: Rss })[];
  /** --cpu-prof: where node wrote the profiles, the primary's pid, start-up (spawn → ready) and the reloads plus rescans. */
  profile?: { dir: string; primaryPid: number; windows: Record<'startup' | 'reloads', ProfileWindow> };
};

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const TOP = 25; // functions listed per profile
const ms = (v: number | undefined, decimals = 0) => fmt(v ?? Number.NaN, decimals);
const list = (values: readonly (number | undefined)[], decimals = 0) => values.map((v) => ms(v, decimals)).join(' / ');
export const workersRss = (r: Rss): string => list(r.workersMiB, 1) || 'none';
/** RSS, then CPU used: primary / workers. */
export const rssText = (r: Rss) => `${fmt(r.primaryMiB, 1)} / ${workersRss(r)} MiB, CPU ${list([r.primaryCpuMs, ...r.workersCpuMs])} ms`;
const meanWorkers = (r: Rss): number => r.workersMiB.reduce((a, b) => a + b, 0) / r.workersMiB.length;

/** Writes the result files; exit status 1 when the proxy was not ready, a handshake failed or a new certificate was never served. */
export function scaleReport(run: ScaleRun, log: Log): number {
  const { settings, firstStart, startup, replaced = [], rescans = [], bounded, contextRuns = [], profile } = run;
  const { phases, readyMs } = startup;
  const notReady = readyMs === undefined;
  const passes = bounded?.passes ?? [];
  const notServed = replaced.filter((r) => r.timeToServeMs === undefined).length;
  const failed = [...passes, ...contextRuns].reduce((n, p) => n + p.failed, notServed + (notReady ? 1 : 0));
  const [small, large] = contextRuns;
  // (mean worker RSS with every entry's context − with one) / (entries − 1); the larger cache holds the whole store.
  const perContextKiB = (at: 'afterStart' | 'afterHandshakes') =>
    small && large ? round(((meanWorkers(large[at]) - meanWorkers(small[at])) * 1024) / (large.cacheSize - 1), 1) : undefined;
  const rows: (readonly [string, string])[] = [
    ['first start (every entry validated, verdicts recorded): spawn → /readyz 200', `${ms(firstStart.readyMs)} ms`],
    ['… RSS, CPU used: primary / workers', rssText(firstStart.rss)],
    ['start-up (verdicts known, as every later start): spawn → /readyz 200', `${notReady ? 'not within ' : ''}${ms(readyMs ?? settings.readyTimeoutMs)} ms`],
    ['… primary listed the store (unchanged entries from the kept state), forked', `${ms(phases.primaryStartedMs)} ms`],
    ['… workers listening (the kept pack received, indexed)', `${list(phases.workersListeningMs) || 'none'} ms`],
    [`RSS ${notReady ? 'when given up' : '1 s after ready'}, CPU used until then: primary / workers`, rssText(startup.rss)],
  ];
  if (!notReady) {
    rows.push(
      [`one-entry reload (rename → new serial on a new connection), ${replaced.length}×`, `${list(replaced.map((r) => r.timeToServeMs))} ms`],
      ['… primary "reload done" durationMs (after the 150 ms watch debounce)', `${list(replaced.map((r) => r.reloadDurationMs))} ms`],
      [`no-change rescan (POST /reload durationMs), ${rescans.length}×`, `${list(rescans)} ms`],
    );
  }
  if (bounded) {
    const trail = [bounded.rssBefore, ...passes.map((p) => p.rss)].map(workersRss).join(' → ');
    const rates = passes.map((p) => fmt(p.ok / p.seconds)).join(' / ');
    rows.push(
      [`bounded memory: ${fmt(settings.bounded)} distinct names, contextCacheSize ${settings.cacheSize}: workers before → after each pass`, `${trail} MiB`],
      ['… handshakes/s per pass, failed', `${rates}, ${passes.reduce((n, p) => n + p.failed, 0)}`],
    );
  }
  if (small && large) {
    rows.push(
      [`memory per secure context (${fmt(large.cacheSize)} entries, cache ${large.cacheSize} vs 1): after start`, `${ms(perContextKiB('afterStart'), 1)} KiB`],
      ['… after a handshake to every name', `${ms(perContextKiB('afterHandshakes'), 1)} KiB`],
      ['… ready (cache 1 / cache all), handshakes failed', `${list([small.readyMs, large.readyMs])} ms, ${small.failed + large.failed}`],
    );
  }
  const profiles = profile ? summarizeProfiles(profile, settings.names) : [];
  const title = `cert-scale${profile ? ' profile' : ''}${run.quick ? ' (quick)' : ''}: ${fmt(settings.names)} store entries, ${dateStamp()}`;
  const markdown = [
    `# ${title}${notReady ? `: NOT READY within ${fmt(settings.readyTimeoutMs / 1000)} s` : ''}`,
    '',
    `\`keyedge proxy\`, 2 workers, contextCacheSize ${settings.cacheSize}; a store of ${fmt(settings.names)} entries (one name each, n<i>.scale.test, ` +
      `all on one ECDSA P-256 key of the key server, SoftHSM2), issued and written in ${fmt(run.generateSeconds, 1)} s by the bench.` +
      (profile ? ' Primary and workers under `node --cpu-prof` (sampling slows them a little).' : '') +
      (notReady ? ' The proxy did not answer /readyz 200 in time: the later figures could not be taken. See bench/README.md, "cert-scale".' : ''),
    '',
    markdownTable(['Figure', 'Value'], rows, ['left', 'right']),
    '',
    ...profiles.flatMap((s) => [
      `## ${s.role}, ${s.window}: ${fmt(s.busyMs)} ms sampled busy on the main thread`,
      '',
      ...topFunctionsTables(s.functions, '###', { top: TOP, unit: 'ms', per: (us) => us / 1000, decimals: 0 }),
    ]),
    ...(profile ? [`Profiles kept: ${[...new Set(profiles.map((s) => `\`${s.file}\``))].join(', ')} (bench/results/tmp is not committed).`, ''] : []),
    ...machineLines(run.machine),
  ].join('\n');
  // The suite's one-row-per-scenario shape (harness/summary.ts): durations as p50 (median) and p99 (max); no rate or CPU.
  const row = (scenario: string, label: string, values: readonly number[]) =>
    durationRow('cert-scale', scenario, label, round(median(values), 1), round(Math.max(...values), 1), failed, notReady ? 'not ready in time' : undefined);
  // Not ready in time: every row skipped (JSON null figures), the suite still lists the scenarios.
  const summary = [
    row('startup', 'start-up until /readyz 200', [readyMs ?? Number.NaN]),
    row(
      'one-entry-reload',
      'one entry replaced: rename → served (p99 = max)',
      replaced.map((r) => r.timeToServeMs ?? Number.NaN),
    ),
    row('rescan', 'no-change rescan, POST /reload durationMs (p99 = max)', rescans),
  ];
  const { out, name, machine, settings: _settings, ...figures } = run;
  const kib = { kibPerContextAfterStart: perContextKiB('afterStart'), kibPerContextAfterHandshakes: perContextKiB('afterHandshakes') };
  const json = { benchmark: profile ? 'cert-scale-profile' : 'cert-scale', machine, settings, figures: { ...figures, ...kib } };
  const profileFigures = profiles.map(({ functions, ...s }) => ({ ...s, busyMs: round(s.busyMs, 1), top: functions.slice(0, TOP) }));
  publish(out, name, profile ? { ...json, profiles: profileFigures } : { ...json, summary }, markdown, dateStamp(), log);
  return failed > 0 ? 1 : 0;
}

/** The primary's and one worker's .cpuprofile (written as they exited), each cut to the start-up and the reload window. */
function summarizeProfiles(profile: NonNullable<ScaleRun['profile']>, names: number) {
  // node names them CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile.
  const files = readdirSync(profile.dir).filter((f) => f.endsWith('.cpuprofile'));
  const isPrimary = (f: string): boolean => Number(f.split('.')[3]) === profile.primaryPid;
  const byRole = [['primary', files.find(isPrimary)] as const, ['worker', files.find((f) => !isPrimary(f))] as const];
  const { startup, reloads } = profile.windows;
  const windows = [['start-up (spawn → /readyz 200)', startup] as const, ['one-entry reloads and no-change rescans', reloads] as const];
  const summaries = byRole.flatMap(([role, file]) => {
    if (file === undefined) return [];
    const target = join(resolve('bench/results/tmp/profiles'), `${dateStamp()}-cert-scale-${names}-${role}.cpuprofile`);
    renameSync(join(profile.dir, file), target);
    return windows.map(([window, span]) => {
      const s = summarizeProfile(target, REPO_ROOT, span);
      return { role, window, file: target, busyMs: s.busyUs / 1000, functions: s.functions };
    });
  });
  rmSync(profile.dir, { recursive: true, force: true });
  return summaries;
}
