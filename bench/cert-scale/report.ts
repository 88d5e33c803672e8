/**
 * The cert-scale bench's result files: a full run's (figures, the suite's summary rows, the per-context table), the
 * --cpu-prof run's (where the primary's and a worker's time went) and that of a store that never became ready.
 */
import { readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { publish } from '../harness/runner.js';
import { type ProfileWindow, summarizeProfile } from '../harness/cpuprofile.js';
import { topFunctionsTables } from '../harness/profile-table.js';
import type { MachineInfo } from '../harness/report.js';
import { dateStamp, fmt, machineLines, markdownTable } from '../harness/report.js';
import { median, round } from '../harness/stats.js';
import { durationRow } from '../harness/summary.js';
import type { LogLine } from '../lab/cert-lab.js';
import {
  cpus,
  DOMAIN,
  type handshakeAll,
  type listingCost,
  type ReloadFigure,
  REPO_ROOT,
  type Rss,
  type rescan,
  type startupPhases,
  workersRss,
} from './steps.js';

type Log = (line: string) => void;
type Phases = ReturnType<typeof startupPhases>;
type Pass = Awaited<ReturnType<typeof handshakeAll>>;
type Rescan = Awaited<ReturnType<typeof rescan>>;
/** What every report says of the store. */
interface Store {
  readonly names: number;
  readonly cacheSize: number;
  readonly generateSeconds: number;
  readonly listing: ReturnType<typeof listingCost>;
  readonly machine: MachineInfo;
}

const figureTable = (rows: readonly (readonly string[])[]) => markdownTable(['Figure', 'Value'], rows, ['left', 'right']);
const ms = (v: number | undefined) => fmt(v ?? Number.NaN);
const list = (values: readonly (number | undefined)[]) => values.map(ms).join(' / ');
const mib = (r: Rss) => `${fmt(r.primaryMiB, 1)} / ${workersRss(r)} MiB`;
const storeText = (s: Store, keyText: string) =>
  `\`keyedge proxy\`, 2 workers, contextCacheSize ${s.cacheSize}; a store of ${fmt(s.names)} entries (one name each, n<i>.${DOMAIN}, ${keyText}), issued and written in ${fmt(s.generateSeconds, 1)} s`;

export interface ScaleRun extends Store {
  readonly quick: boolean;
  readonly settings: { readonly bounded: number } & Record<string, number>;
  /** The first start, which validates every entry and records the verdicts. */
  readonly firstStart: { readonly readyMs: number | undefined; readonly phases: Phases; readonly rss: Rss };
  readonly readyMs: number;
  readonly phases: Phases;
  readonly rssAfterStart: Rss;
  readonly settled: { readonly waitedMs: number; readonly settled: boolean };
  readonly rssSettled: Rss;
  readonly replaced: readonly ReloadFigure[];
  readonly rescans: readonly Rescan[];
  readonly rssBeforeBounded: Rss;
  readonly passes: readonly (Pass & { readonly rss: Rss })[];
  readonly contextRuns: readonly (Pass & { cacheSize: number; readyMs: number; afterStart: Rss; afterHandshakes: Rss })[];
}

/** A full run's files; exit status 1 when a handshake failed or a new certificate was never served. */
export function scaleReport(outDir: string, name: string, run: ScaleRun, log: Log): number {
  const { names, cacheSize, listing, firstStart, phases, rssAfterStart, settled, replaced, rescans, passes, contextRuns } = run;
  const [small, large] = contextRuns as [ScaleRun['contextRuns'][0], ScaleRun['contextRuns'][0]];
  const contextEntries = large.cacheSize; // the store's entries: the larger cache holds them all
  const meanWorkers = (r: Rss): number => r.workersMiB.reduce((a, b) => a + b, 0) / r.workersMiB.length;
  const perContextKiB = (at: 'afterStart' | 'afterHandshakes') => ((meanWorkers(large[at]) - meanWorkers(small[at])) * 1024) / (contextEntries - 1);
  const boundedFailed = passes.reduce((n, p) => n + p.failed, 0);
  const failed = boundedFailed + small.failed + large.failed + replaced.filter((r) => r.timeToServeMs === undefined).length;
  const serveTimes = replaced.map((r) => r.timeToServeMs ?? Number.NaN);
  const rescanTimes = rescans.map((r) => r.durationMs);
  const figures = {
    names,
    generateSeconds: round(run.generateSeconds, 1),
    listing,
    firstStart,
    startup: { readyMs: Math.round(run.readyMs), primaryStartedMs: phases.primaryStartedMs, workersListeningMs: phases.workersListeningMs },
    rssAfterStart,
    settle: { waitedMs: Math.round(settled.waitedMs), settled: settled.settled, rss: run.rssSettled },
    oneEntryReload: replaced.map((r) => ({ ...r, timeToServeMs: r.timeToServeMs === undefined ? undefined : round(r.timeToServeMs, 1) })),
    oneEntryReloadMedian: { timeToServeMs: round(median(serveTimes), 1), reloadDurationMs: median(replaced.map((r) => r.reloadDurationMs ?? Number.NaN)) },
    noChangeRescan: rescans.map((r) => ({ durationMs: round(r.durationMs, 1), roundTripMs: round(r.roundTripMs, 1), changed: r.changed })),
    noChangeRescanMedianMs: round(median(rescanTimes), 1),
    bounded: {
      distinctNames: run.settings.bounded,
      contextCacheSize: cacheSize,
      before: run.rssBeforeBounded,
      passes: passes.map((p) => ({ rssAfter: p.rss, ok: p.ok, failed: p.failed, handshakesPerSecond: round(p.ok / p.seconds, 1), errors: p.errors })),
    },
    perContext: {
      entries: contextEntries,
      runs: contextRuns.map((r) => ({ ...r, readyMs: Math.round(r.readyMs), seconds: round(r.seconds, 1) })),
      kibPerContextAfterStart: round(perContextKiB('afterStart'), 1),
      kibPerContextAfterHandshakes: round(perContextKiB('afterHandshakes'), 1),
    },
  };
  // The suite's one-row-per-scenario shape (harness/summary.ts): durations as p50 (median) and p99 (max); no rate or CPU.
  const row = (scenario: string, label: string, values: readonly number[]) =>
    durationRow('cert-scale', scenario, label, round(median(values), 1), round(Math.max(...values), 1), failed);
  const summary = [
    row('startup', 'start-up until /readyz 200', [figures.startup.readyMs]),
    row(
      'one-entry-reload',
      'one entry replaced: rename → served (p99 = max)',
      serveTimes.map((v) => round(v, 1)),
    ),
    row(
      'rescan',
      'no-change rescan, POST /reload durationMs (p99 = max)',
      figures.noChangeRescan.map((r) => r.durationMs),
    ),
  ];
  const trail = [run.rssBeforeBounded, ...passes.map((p) => p.rss)].map(workersRss).join(' → ');
  const markdown = [
    `# cert-scale${run.quick ? ' (quick)' : ''}: ${fmt(names)} store entries, ${dateStamp()}`,
    '',
    `${storeText(run, 'all on one ECDSA P-256 key of the key server, SoftHSM2')} by the bench.`,
    '',
    figureTable([
      ['listing the store once (readdir + stat of each file), CPU', `${fmt(listing.cpuMs, 1)} ms`],
      ['first start (every entry validated, verdicts recorded): spawn → /readyz 200', `${ms(firstStart.readyMs)} ms`],
      ['… RSS, CPU used: primary / workers', `${mib(firstStart.rss)}, ${cpus(firstStart.rss)} ms`],
      ['start-up (verdicts known, as every start after the first): spawn → /readyz 200', `${fmt(run.readyMs)} ms`],
      ['… primary listed the store (unchanged entries from the kept state), forked', `${ms(phases.primaryStartedMs)} ms`],
      ['… workers listening (the kept pack received, indexed)', `${list(phases.workersListeningMs)} ms`],
      ['… CPU consumed until 1 s after ready (utime + stime): primary / workers', `${cpus(rssAfterStart)} ms`],
      ['RSS after start: primary / workers', mib(rssAfterStart)],
      ['workers busy after ready (background work) until idle', `${settled.settled ? '' : 'still busy after '}${fmt(settled.waitedMs)} ms`],
      ['RSS once idle: primary / workers', mib(run.rssSettled)],
      [
        `one-entry reload (rename → new serial on a new connection), ${replaced.length}×`,
        `${list(serveTimes)} ms (median ${fmt(figures.oneEntryReloadMedian.timeToServeMs)})`,
      ],
      ['… primary "reload done" durationMs (after the 150 ms watch debounce)', `${list(replaced.map((r) => r.reloadDurationMs))} ms`],
      [`no-change rescan (POST /reload durationMs), ${rescans.length}×`, `${list(rescanTimes)} ms`],
      [
        `bounded memory: ${fmt(run.settings.bounded)} distinct names, contextCacheSize ${cacheSize}: workers before → after each of ${passes.length} passes`,
        `${trail} MiB`,
      ],
      ['… handshakes/s per pass, failed', `${passes.map((p) => fmt(p.ok / p.seconds)).join(' / ')}, ${boundedFailed}`],
      [`memory per secure context (${fmt(contextEntries)} entries, cache ${contextEntries} vs 1): after start`, `${fmt(perContextKiB('afterStart'), 1)} KiB`],
      ['… after a handshake to every name', `${fmt(perContextKiB('afterHandshakes'), 1)} KiB`],
    ]),
    '',
    markdownTable(
      ['per-context run', 'ready ms', 'workers RSS after start MiB', 'workers RSS after handshakes MiB', 'handshakes', 'failed'],
      contextRuns.map((r) => [
        `contextCacheSize ${r.cacheSize}`,
        fmt(r.readyMs),
        workersRss(r.afterStart),
        workersRss(r.afterHandshakes),
        fmt(r.ok),
        fmt(r.failed),
      ]),
      ['left', 'right', 'right', 'right', 'right', 'right'],
    ),
    '',
    ...machineLines(run.machine),
  ].join('\n');
  publish(outDir, name, { benchmark: 'cert-scale', machine: run.machine, settings: run.settings, summary, figures }, markdown, dateStamp(), log);
  return failed > 0 ? 1 : 0;
}

export interface ProfileRun {
  readonly names: number;
  readonly readyMs: number;
  readonly pid: number;
  readonly phases: Phases;
  readonly rssAfterStart: Rss;
  readonly replaced: readonly ReloadFigure[];
  readonly rescans: readonly Rescan[];
  readonly top: number;
  readonly machine: MachineInfo;
  /** Start-up (spawn → ready) and the one-entry reloads plus rescans. */
  readonly windows: { readonly startup: ProfileWindow; readonly reloads: ProfileWindow };
}

/** Summarises the primary's and one worker's .cpuprofile (written when they exited) and writes the profile report. */
export function profileReport(outDir: string, name: string, profDir: string, run: ProfileRun, log: Log): number {
  const { names, machine, phases, replaced, rescans, rssAfterStart, top } = run;
  // node names them CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile.
  const files = readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'));
  const isPrimary = (f: string): boolean => Number(f.split('.')[3]) === run.pid;
  const byRole = [['primary', files.find(isPrimary)] as const, ['worker', files.find((f) => !isPrimary(f))] as const];
  const windows = [['start-up (spawn → /readyz 200)', run.windows.startup] as const, ['one-entry reloads and no-change rescans', run.windows.reloads] as const];
  const summaries = byRole.flatMap(([role, file]) => {
    if (file === undefined) return [];
    const target = join(resolve('bench/results/tmp/profiles'), `${dateStamp()}-cert-scale-${names}-${role}.cpuprofile`);
    renameSync(join(profDir, file), target);
    return windows.map(([window, span]) => {
      const s = summarizeProfile(target, REPO_ROOT, span);
      return { role, window, file: target, busyMs: s.busyUs / 1000, functions: s.functions };
    });
  });
  rmSync(profDir, { recursive: true, force: true });
  const markdown = [
    `# cert-scale profile: ${fmt(names)} store entries, ${dateStamp()}`,
    '',
    `Primary and workers under \`node --cpu-prof\` (sampling slows them a little): start-up until /readyz 200 ${fmt(run.readyMs)} ms (primary started at ${ms(phases.primaryStartedMs)} ms, workers listening at ${list(phases.workersListeningMs)} ms), ` +
      `then ${replaced.length} one-entry reloads (primary "reload done" ${list(replaced.map((r) => r.reloadDurationMs))} ms; new serial served after ${list(replaced.map((r) => r.timeToServeMs))} ms) ` +
      `and ${rescans.length} no-change rescans (${list(rescans.map((r) => r.durationMs))} ms). RSS after start: primary ${fmt(rssAfterStart.primaryMiB, 1)} MiB, workers ${workersRss(rssAfterStart)} MiB.`,
    '',
    ...summaries.flatMap((s) => [
      `## ${s.role}, ${s.window}: ${fmt(s.busyMs)} ms sampled busy on the main thread`,
      '',
      ...topFunctionsTables(s.functions, '###', { top, unit: 'ms', per: (us) => us / 1000, decimals: 0 }),
    ]),
    `Profiles kept: ${[...new Set(summaries.map((s) => `\`${s.file}\``))].join(', ')} (bench/results/tmp is not committed).`,
    '',
    `Command: \`${machine.commandLine}\``,
  ].join('\n');
  const profiles = summaries.map((s) => ({ role: s.role, window: s.window, file: s.file, busyMs: round(s.busyMs, 1), top: s.functions.slice(0, top) }));
  const json = { benchmark: 'cert-scale-profile', machine, names, readyMs: Math.round(run.readyMs), phases, rssAfterStart, replaced, rescans, profiles };
  publish(outDir, name, json, markdown, dateStamp(), log);
  return 0;
}

/** The report of a run whose proxy did not become ready in time: how far it got. Exit status 1. */
export function notReadyReport(outDir: string, name: string, run: Store & { notReady: NotReady }, log: Log): number {
  const { notReady, machine, listing } = run;
  const markdown = [
    `# cert-scale: ${fmt(run.names)} store entries, ${dateStamp()}: NOT READY within ${fmt(notReady.readyTimeoutMs / 1000)} s`,
    '',
    `${storeText(run, 'one ECDSA P-256 key')}. ` +
      'The proxy did not answer /readyz 200 within the time allowed, so reload, rescan and memory figures could not be taken. See bench/README.md, section "cert-scale".',
    '',
    figureTable([
      ['listing the store once (readdir + stat of each file), CPU / wall', `${fmt(listing.cpuMs, 1)} / ${fmt(listing.wallMs, 1)} ms`],
      ['start-up: spawn → /readyz 200', `not within ${fmt(notReady.readyTimeoutMs)} ms`],
      ['… primary forked ("proxy primary started")', `${ms(notReady.phases.primaryStartedMs)} ms`],
      ['… workers listening', `${list(notReady.phases.workersListeningMs) || 'none'} ms`],
      ['RSS, CPU used when given up: primary / workers', `${mib(notReady.rss)}, ${cpus(notReady.rss)} ms`],
    ]),
    '',
    ...machineLines(machine),
  ].join('\n');
  const skipped = `not ready within ${notReady.readyTimeoutMs / 1000} s`;
  const summary = [durationRow('cert-scale', 'startup', 'start-up until /readyz 200', Number.NaN, Number.NaN, 1, skipped)];
  const { names, cacheSize } = run;
  const json = { benchmark: 'cert-scale', summary, machine, names, generateSeconds: round(run.generateSeconds, 1), listing, cacheSize, notReady };
  publish(outDir, name, json, markdown, dateStamp(), log);
  return 1;
}

type NotReady = { readyTimeoutMs: number; phases: Phases; rss: Rss; pids: unknown; lastLogLines: readonly LogLine[] };
