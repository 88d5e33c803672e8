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
import { DOMAIN, type handshakeAll, type listingCost, type Rss, type replaceOne, type rescan, type startupPhases, workersRss } from './steps.js';

type Phases = ReturnType<typeof startupPhases>;
type Pass = Awaited<ReturnType<typeof handshakeAll>>;

/** What cert-scale/main.ts measured; the parts after the first start only as far as the run got. */
export interface ScaleRun {
  readonly out: string;
  readonly name: string;
  readonly quick: boolean;
  readonly top: number;
  readonly machine: MachineInfo;
  readonly settings: { readonly names: number; readonly bounded: number; readonly cacheSize: number };
  readonly generateSeconds: number;
  readonly listing: ReturnType<typeof listingCost>;
  /** The first start, which validates every entry and records the verdicts. */
  readonly firstStart: { readonly readyMs: number | undefined; readonly phases: Phases; readonly rss: Rss };
  readonly notReady?: { readonly readyTimeoutMs: number; readonly phases: Phases; readonly rss: Rss; readonly pids: unknown; readonly lastLogLines: unknown };
  readonly startup?: { readyMs: number; phases: Phases; rssAfterStart: Rss; settled: { waitedMs: number; settled: boolean }; rssSettled: Rss };
  readonly replaced?: readonly Awaited<ReturnType<typeof replaceOne>>[];
  readonly rescans?: readonly Awaited<ReturnType<typeof rescan>>[];
  readonly bounded?: { readonly rssBefore: Rss; readonly passes: readonly (Pass & { readonly rss: Rss })[] };
  readonly contextRuns?: readonly (Pass & { cacheSize: number; readyMs: number; afterStart: Rss; afterHandshakes: Rss })[];
  /** --cpu-prof: where node wrote the profiles, the primary's pid, start-up (spawn → ready) and the reloads plus rescans. */
  readonly profile?: { readonly dir: string; readonly primaryPid: number; readonly windows: Record<'startup' | 'reloads', ProfileWindow> };
}

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ms = (v: number | undefined, decimals = 0) => fmt(v ?? Number.NaN, decimals);
const list = (values: readonly (number | undefined)[]) => values.map((v) => ms(v)).join(' / ');
const mib = (r: Rss) => `${fmt(r.primaryMiB, 1)} / ${workersRss(r)} MiB`;
const cpus = (r: Rss): string => [r.primaryCpuMs, ...r.workersCpuMs].map((m) => fmt(m)).join(' / ');
const meanWorkers = (r: Rss): number => r.workersMiB.reduce((a, b) => a + b, 0) / r.workersMiB.length;

/** Writes the result files; exit status 1 when the proxy was not ready, a handshake failed or a new certificate was never served. */
export function scaleReport(run: ScaleRun, log: Log): number {
  const { settings, listing, firstStart, notReady, startup, replaced = [], rescans = [], bounded, contextRuns = [], profile } = run;
  const phases = startup?.phases ?? notReady!.phases;
  const passes = bounded?.passes ?? [];
  const notServed = replaced.filter((r) => r.timeToServeMs === undefined).length;
  const failed = [...passes, ...contextRuns].reduce((n, p) => n + p.failed, notServed + (notReady === undefined ? 0 : 1));
  const [small, large] = contextRuns;
  // (mean worker RSS with every entry's context − with one) / (entries − 1); the larger cache holds the whole store.
  const perContextKiB = (at: 'afterStart' | 'afterHandshakes') =>
    small && large ? round(((meanWorkers(large[at]) - meanWorkers(small[at])) * 1024) / (large.cacheSize - 1), 1) : undefined;
  const trail = bounded && [bounded.rssBefore, ...passes.map((p) => p.rss)].map(workersRss).join(' → ');
  const rows: (readonly [string, string])[] = [
    ['listing the store once (readdir + stat of each file), CPU / wall', `${fmt(listing.cpuMs, 1)} / ${fmt(listing.wallMs, 1)} ms`],
    ['first start (every entry validated, verdicts recorded): spawn → /readyz 200', `${ms(firstStart.readyMs)} ms`],
    ['… RSS, CPU used: primary / workers', `${mib(firstStart.rss)}, ${cpus(firstStart.rss)} ms`],
    [
      'start-up (verdicts known, as every start after the first): spawn → /readyz 200',
      `${startup ? fmt(startup.readyMs) : `not within ${fmt(notReady!.readyTimeoutMs)}`} ms`,
    ],
    ['… primary listed the store (unchanged entries from the kept state), forked', `${ms(phases.primaryStartedMs)} ms`],
    ['… workers listening (the kept pack received, indexed)', `${list(phases.workersListeningMs) || 'none'} ms`],
    ...(notReady ? [['RSS, CPU used when given up: primary / workers', `${mib(notReady.rss)}, ${cpus(notReady.rss)} ms`] as const] : []),
  ];
  if (startup) {
    const { settled } = startup;
    rows.push(
      ['… CPU consumed until 1 s after ready (utime + stime): primary / workers', `${cpus(startup.rssAfterStart)} ms`],
      ['RSS after start: primary / workers', mib(startup.rssAfterStart)],
      ['workers busy after ready (background work) until idle', `${settled.settled ? '' : 'still busy after '}${fmt(settled.waitedMs)} ms`],
      ['RSS once idle: primary / workers', mib(startup.rssSettled)],
      [`one-entry reload (rename → new serial on a new connection), ${replaced.length}×`, `${list(replaced.map((r) => r.timeToServeMs))} ms`],
      ['… primary "reload done" durationMs (after the 150 ms watch debounce)', `${list(replaced.map((r) => r.reloadDurationMs))} ms`],
      [`no-change rescan (POST /reload durationMs), ${rescans.length}×`, `${list(rescans.map((r) => r.durationMs))} ms`],
    );
  }
  if (bounded) {
    const boundedRss = `bounded memory: ${fmt(settings.bounded)} distinct names, contextCacheSize ${settings.cacheSize}: workers before → after each pass`;
    const rates = passes.map((p) => fmt(p.ok / p.seconds)).join(' / ');
    rows.push([boundedRss, `${trail} MiB`], ['… handshakes/s per pass, failed', `${rates}, ${passes.reduce((n, p) => n + p.failed, 0)}`]);
  }
  if (large) {
    const perContext = `memory per secure context (${fmt(large.cacheSize)} entries, cache ${large.cacheSize} vs 1): after start`;
    rows.push(
      [perContext, `${ms(perContextKiB('afterStart'), 1)} KiB`],
      ['… after a handshake to every name', `${ms(perContextKiB('afterHandshakes'), 1)} KiB`],
    );
  }
  const profiles = profile ? summarizeProfiles(profile, settings.names) : [];
  const contextColumns = ['per-context run', 'ready ms', 'workers RSS after start MiB', 'workers RSS after handshakes MiB', 'handshakes', 'failed'];
  const contextRow = (r: (typeof contextRuns)[number]) => [fmt(r.readyMs), workersRss(r.afterStart), workersRss(r.afterHandshakes), fmt(r.ok), fmt(r.failed)];
  const contextRows = contextRuns.map((r) => [`contextCacheSize ${r.cacheSize}`, ...contextRow(r)]);
  const title = `cert-scale${profile ? ' profile' : ''}${run.quick ? ' (quick)' : ''}: ${fmt(settings.names)} store entries, ${dateStamp()}`;
  const markdown = [
    `# ${title}${notReady ? `: NOT READY within ${fmt(notReady.readyTimeoutMs / 1000)} s` : ''}`,
    '',
    `\`keyedge proxy\`, 2 workers, contextCacheSize ${settings.cacheSize}; a store of ${fmt(settings.names)} entries (one name each, n<i>.${DOMAIN}, ` +
      `all on one ECDSA P-256 key of the key server, SoftHSM2), issued and written in ${fmt(run.generateSeconds, 1)} s by the bench.` +
      (profile ? ' Primary and workers under `node --cpu-prof` (sampling slows them a little).' : '') +
      (notReady ? ' The proxy did not answer /readyz 200 in time: the later figures could not be taken. See bench/README.md, "cert-scale".' : ''),
    '',
    markdownTable(['Figure', 'Value'], rows, ['left', 'right']),
    '',
    ...(contextRuns.length === 0 ? [] : [markdownTable(contextColumns, contextRows, ['left', ...contextColumns.slice(1).map(() => 'right' as const)]), '']),
    ...profiles.flatMap((s) => [
      `## ${s.role}, ${s.window}: ${fmt(s.busyMs)} ms sampled busy on the main thread`,
      '',
      ...topFunctionsTables(s.functions, '###', { top: run.top, unit: 'ms', per: (us) => us / 1000, decimals: 0 }),
    ]),
    ...(profile ? [`Profiles kept: ${[...new Set(profiles.map((s) => `\`${s.file}\``))].join(', ')} (bench/results/tmp is not committed).`, ''] : []),
    ...machineLines(run.machine),
  ].join('\n');
  // The suite's one-row-per-scenario shape (harness/summary.ts): durations as p50 (median) and p99 (max); no rate or CPU.
  const row = (scenario: string, label: string, values: readonly number[]) =>
    durationRow('cert-scale', scenario, label, round(median(values), 1), round(Math.max(...values), 1), failed, notReady && 'not ready in time');
  const summary = [row('startup', 'start-up until /readyz 200', [startup?.readyMs ?? Number.NaN])];
  if (startup) {
    summary.push(
      row(
        'one-entry-reload',
        'one entry replaced: rename → served (p99 = max)',
        replaced.map((r) => r.timeToServeMs ?? Number.NaN),
      ),
    );
    summary.push(
      row(
        'rescan',
        'no-change rescan, POST /reload durationMs (p99 = max)',
        rescans.map((r) => r.durationMs),
      ),
    );
  }
  const { out, name, machine, top: _top, settings: _settings, ...figures } = run;
  const kib = { kibPerContextAfterStart: perContextKiB('afterStart'), kibPerContextAfterHandshakes: perContextKiB('afterHandshakes') };
  const profileFigures = profiles.map(({ functions, ...s }) => ({ ...s, busyMs: round(s.busyMs, 1), top: functions.slice(0, run.top) }));
  const json = {
    benchmark: profile ? 'cert-scale-profile' : 'cert-scale',
    machine,
    settings,
    ...(profile ? {} : { summary }),
    figures: { ...figures, ...kib },
  };
  publish(out, name, profile ? { ...json, profiles: profileFigures } : json, markdown, dateStamp(), log);
  return failed > 0 ? 1 : 0;
}

/** The primary's and one worker's .cpuprofile (written as they exited), each cut to the start-up and the reload window. */
function summarizeProfiles(profile: NonNullable<ScaleRun['profile']>, names: number) {
  // node names them CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile.
  const files = readdirSync(profile.dir).filter((f) => f.endsWith('.cpuprofile'));
  const isPrimary = (f: string): boolean => Number(f.split('.')[3]) === profile.primaryPid;
  const byRole = [['primary', files.find(isPrimary)] as const, ['worker', files.find((f) => !isPrimary(f))] as const];
  const windows = [
    ['start-up (spawn → /readyz 200)', profile.windows.startup],
    ['one-entry reloads and no-change rescans', profile.windows.reloads],
  ] as const;
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
