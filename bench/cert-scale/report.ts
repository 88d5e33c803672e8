/**
 * The cert-scale bench's reports: the suite's summary rows, the --cpu-prof report and the report of a store that never became ready.
 */
import { readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { LogLine } from '../lab/cert-lab.js';
import { type FunctionCost, type ProfileWindow, summarizeProfile } from '../harness/cpuprofile.js';
import type { describeMachine, MachineInfo } from '../harness/machine.js';
import { dateStamp, fmt, machineLines, markdownTable, writeReport } from '../harness/report.js';
import { median, round } from '../harness/stats.js';
import { durationRow, type SummaryRow } from '../harness/summary.js';
import { cpus, DOMAIN, type listingCost, type ReloadFigure, REPO_ROOT, type Rss, type startupPhases, workersRss } from './steps.js';

/** The suite's one-row-per-scenario shape (harness/summary.ts): durations as p50 (median) and p99 (max); no rate or CPU. */
export function summaryRows(
  figures: {
    startup: { readyMs: number };
    oneEntryReload: readonly { timeToServeMs?: number | undefined }[];
    noChangeRescan: readonly { durationMs: number }[];
  },
  errors: number,
): SummaryRow[] {
  const row = (scenario: string, label: string, values: readonly number[]): SummaryRow =>
    durationRow('cert-scale', scenario, label, round(median(values), 1), round(Math.max(...values), 1), errors);
  return [
    row('startup', 'start-up until /readyz 200', [figures.startup.readyMs]),
    row(
      'one-entry-reload',
      'one entry replaced: rename → served (p99 = max)',
      figures.oneEntryReload.map((r) => r.timeToServeMs ?? Number.NaN),
    ),
    row(
      'rescan',
      'no-change rescan, POST /reload durationMs (p99 = max)',
      figures.noChangeRescan.map((r) => r.durationMs),
    ),
  ];
}

export interface ProfileContext {
  readonly names: number;
  readonly readyMs: number;
  readonly pid: number;
  readonly phases: ReturnType<typeof startupPhases>;
  readonly rssAfterStart: Rss;
  readonly replaced: readonly ReloadFigure[];
  readonly rescans: readonly { durationMs: number; roundTripMs: number }[];
  readonly top: number;
  readonly machine: ReturnType<typeof describeMachine>;
  /** Start-up (spawn → ready) and the one-entry reloads plus rescans. */
  readonly windows: { readonly startup: ProfileWindow; readonly reloads: ProfileWindow };
}

/** Summarises the primary's and one worker's .cpuprofile (written when they exited) and writes the profile report. */
export function writeProfileReport(outDir: string, name: string, profDir: string, ctx: ProfileContext): number {
  const files = readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'));
  const primaryPid = ctx.pid;
  // node names them CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile.
  const pidOf = (f: string): number => Number(f.split('.')[3]);
  const primaryFile = files.find((f) => pidOf(f) === primaryPid);
  const workerFile = files.find((f) => pidOf(f) !== primaryPid);
  const keep = resolve('bench/results/tmp/profiles');
  const kept: string[] = [];
  const summaries: { role: string; window: string; file: string; busyMs: number; functions: readonly FunctionCost[] }[] = [];
  for (const [role, file] of [
    ['primary', primaryFile],
    ['worker', workerFile],
  ] as const) {
    if (file === undefined) continue;
    const target = join(keep, `${dateStamp()}-cert-scale-${ctx.names}-${role}.cpuprofile`);
    renameSync(join(profDir, file), target);
    kept.push(target);
    for (const [window, span] of [
      ['start-up (spawn → /readyz 200)', ctx.windows.startup],
      ['one-entry reloads and no-change rescans', ctx.windows.reloads],
    ] as const) {
      const s = summarizeProfile(target, REPO_ROOT, span);
      summaries.push({ role, window, file: target, busyMs: s.busyUs / 1000, functions: s.functions });
    }
  }
  rmSync(profDir, { recursive: true, force: true });
  const table = (functions: readonly FunctionCost[], by: 'self' | 'inclusive'): string =>
    markdownTable(
      ['function', 'self ms', 'self %', 'inclusive ms', 'incl %'],
      [...functions]
        .sort((a, b) => (by === 'self' ? b.selfUs - a.selfUs : b.inclusiveUs - a.inclusiveUs))
        .slice(0, ctx.top)
        .map((f) => [f.function, fmt(f.selfUs / 1000), fmt(f.selfPct, 1), fmt(f.inclusiveUs / 1000), fmt(f.inclusivePct, 1)]),
      ['left', 'right', 'right', 'right', 'right'],
    );
  const markdown = [
    `# cert-scale profile: ${fmt(ctx.names)} store entries, ${dateStamp()}`,
    '',
    `Primary and workers under \`node --cpu-prof\` (sampling slows them a little): start-up until /readyz 200 ${fmt(ctx.readyMs)} ms (primary started at ${fmt(ctx.phases.primaryStartedMs ?? Number.NaN)} ms, workers listening at ${ctx.phases.workersListeningMs.map((m) => fmt(m)).join(' / ')} ms), ` +
      `then ${ctx.replaced.length} one-entry reloads (primary "reload done" ${ctx.replaced.map((r) => fmt(r.reloadDurationMs ?? Number.NaN)).join(' / ')} ms; new serial served after ${ctx.replaced.map((r) => fmt(r.timeToServeMs ?? Number.NaN)).join(' / ')} ms) ` +
      `and ${ctx.rescans.length} no-change rescans (${ctx.rescans.map((r) => fmt(r.durationMs)).join(' / ')} ms). RSS after start: primary ${fmt(ctx.rssAfterStart.primaryMiB, 1)} MiB, workers ${workersRss(ctx.rssAfterStart)} MiB.`,
    '',
    ...summaries.flatMap((s) => [
      `## ${s.role}, ${s.window}: ${fmt(s.busyMs)} ms sampled busy on the main thread`,
      '',
      '### by self time',
      '',
      table(s.functions, 'self'),
      '',
      '### by inclusive time',
      '',
      table(s.functions, 'inclusive'),
      '',
    ]),
    `Profiles kept: ${kept.map((k) => `\`${k}\``).join(', ')} (bench/results/tmp is not committed).`,
    '',
    `Command: \`${ctx.machine.commandLine}\``,
  ].join('\n');
  const out = writeReport(
    outDir,
    name,
    {
      benchmark: 'cert-scale-profile',
      machine: ctx.machine,
      names: ctx.names,
      readyMs: Math.round(ctx.readyMs),
      phases: ctx.phases,
      rssAfterStart: ctx.rssAfterStart,
      replaced: ctx.replaced,
      rescans: ctx.rescans,
      profiles: summaries.map((s) => ({ role: s.role, window: s.window, file: s.file, busyMs: round(s.busyMs, 1), top: s.functions.slice(0, ctx.top) })),
    },
    markdown,
  );
  process.stdout.write(`${markdown}\n\nwrote ${out.jsonPath} and ${out.markdownPath}\n`);
  return 0;
}

export interface NotReadyContext {
  readonly names: number;
  readonly generateSeconds: number;
  readonly listing: ReturnType<typeof listingCost>;
  readonly notReady: {
    readonly readyTimeoutMs: number;
    readonly phases: ReturnType<typeof startupPhases>;
    readonly rss: Rss;
    readonly lastLogLines: readonly LogLine[];
  };
  readonly machine: ReturnType<typeof describeMachine>;
  readonly cacheSize: number;
}

/** The report of a run whose proxy did not become ready in time: how far it got. Exit status 1. */
export function writeNotReadyReport(outDir: string, name: string, ctx: NotReadyContext): number {
  const { notReady, machine } = ctx;
  const markdown = [
    `# cert-scale: ${fmt(ctx.names)} store entries, ${dateStamp()}: NOT READY within ${fmt(notReady.readyTimeoutMs / 1000)} s`,
    '',
    `\`keyedge proxy\`, 2 workers, contextCacheSize ${ctx.cacheSize}; a store of ${fmt(ctx.names)} entries (one name each, n<i>.${DOMAIN}, one ECDSA P-256 key), issued and written in ${fmt(ctx.generateSeconds, 1)} s. ` +
      'The proxy did not answer /readyz 200 within the time allowed, so reload, rescan and memory figures could not be taken. See bench/README.md, section "cert-scale".',
    '',
    markdownTable(
      ['Figure', 'Value'],
      [
        ['listing the store once (readdir + stat of each file), CPU / wall', `${fmt(ctx.listing.cpuMs, 1)} / ${fmt(ctx.listing.wallMs, 1)} ms`],
        ['start-up: spawn → /readyz 200', `not within ${fmt(notReady.readyTimeoutMs)} ms`],
        ['… primary forked ("proxy primary started")', `${fmt(notReady.phases.primaryStartedMs ?? Number.NaN)} ms`],
        ['… workers listening', `${notReady.phases.workersListeningMs.map((m) => fmt(m)).join(' / ') || 'none'} ms`],
        ['RSS, CPU used when given up: primary / workers', `${fmt(notReady.rss.primaryMiB, 1)} / ${workersRss(notReady.rss)} MiB, ${cpus(notReady.rss)} ms`],
      ],
      ['left', 'right'],
    ),
    '',
    ...machineLines(machine),
  ].join('\n');
  const out = writeReport(
    outDir,
    name,
    {
      benchmark: 'cert-scale',
      summary: [
        durationRow('cert-scale', 'startup', 'start-up until /readyz 200', Number.NaN, Number.NaN, 1, `not ready within ${notReady.readyTimeoutMs / 1000} s`),
      ],
      machine,
      names: ctx.names,
      generateSeconds: round(ctx.generateSeconds, 1),
      listing: ctx.listing,
      cacheSize: ctx.cacheSize,
      notReady,
    },
    markdown,
  );
  process.stdout.write(`${markdown}\n\nwrote ${out.jsonPath} and ${out.markdownPath}\n`);
  return 1;
}

export interface ScaleFigures {
  readonly quick: boolean;
  readonly names: number;
  readonly cacheSize: number;
  readonly generateSeconds: number;
  readonly listing: ReturnType<typeof listingCost>;
  /** The first start, which validates every entry and records the verdicts. */
  readonly firstStart: { readonly readyMs: number | undefined; readonly rss: Rss };
  readonly readyMs: number;
  readonly phases: ReturnType<typeof startupPhases>;
  readonly rssAfterStart: Rss;
  readonly settled: { readonly waitedMs: number; readonly settled: boolean };
  readonly rssSettled: Rss;
  readonly replaced: readonly ReloadFigure[];
  readonly medianTimeToServeMs: number;
  readonly rescans: readonly { readonly durationMs: number }[];
  readonly bounded: number;
  readonly boundedPasses: number;
  /** Worker RSS before and after each bounded pass. */
  readonly rssTrail: string;
  readonly passes: readonly { readonly ok: number; readonly seconds: number }[];
  readonly boundedFailed: number;
  readonly contextEntries: number;
  readonly perContextKiB: { readonly afterStart: number; readonly afterHandshakes: number };
  readonly contextRuns: readonly { cacheSize: number; readyMs: number; afterStart: Rss; afterHandshakes: Rss; ok: number; failed: number }[];
  readonly machine: MachineInfo;
}

/** The Markdown of a full run. */
export function scaleMarkdown({
  quick,
  names,
  cacheSize,
  generateSeconds,
  listing,
  firstStart,
  readyMs,
  phases,
  rssAfterStart,
  settled,
  rssSettled,
  replaced,
  medianTimeToServeMs,
  rescans,
  bounded,
  boundedPasses,
  rssTrail,
  passes,
  boundedFailed,
  contextEntries,
  perContextKiB,
  contextRuns,
  machine,
}: ScaleFigures): string {
  return [
    `# cert-scale${quick ? ' (quick)' : ''}: ${fmt(names)} store entries, ${dateStamp()}`,
    '',
    `\`keyedge proxy\`, 2 workers, contextCacheSize ${cacheSize}; a store of ${fmt(names)} entries (one name each, n<i>.${DOMAIN}, all on one ECDSA P-256 key of the key server, SoftHSM2), issued and written in ${fmt(generateSeconds, 1)} s by the bench.`,
    '',
    markdownTable(
      ['Figure', 'Value'],
      [
        ['listing the store once (readdir + stat of each file), CPU', `${fmt(listing.cpuMs, 1)} ms`],
        ['first start (every entry validated, verdicts recorded): spawn → /readyz 200', `${fmt(firstStart.readyMs ?? Number.NaN)} ms`],
        ['… RSS, CPU used: primary / workers', `${fmt(firstStart.rss.primaryMiB, 1)} / ${workersRss(firstStart.rss)} MiB, ${cpus(firstStart.rss)} ms`],
        ['start-up (verdicts known, as every start after the first): spawn → /readyz 200', `${fmt(readyMs)} ms`],
        ['… primary listed the store (unchanged entries from the kept state), forked', `${fmt(phases.primaryStartedMs ?? Number.NaN)} ms`],
        ['… workers listening (the kept pack received, indexed)', `${phases.workersListeningMs.map((m) => fmt(m)).join(' / ')} ms`],
        ['… CPU consumed until 1 s after ready (utime + stime): primary / workers', `${cpus(rssAfterStart)} ms`],
        ['RSS after start: primary / workers', `${fmt(rssAfterStart.primaryMiB, 1)} / ${workersRss(rssAfterStart)} MiB`],
        ['workers busy after ready (background work) until idle', `${settled.settled ? '' : 'still busy after '}${fmt(settled.waitedMs)} ms`],
        ['RSS once idle: primary / workers', `${fmt(rssSettled.primaryMiB, 1)} / ${workersRss(rssSettled)} MiB`],
        [
          `one-entry reload (rename → new serial on a new connection), ${replaced.length}×`,
          `${replaced.map((r) => fmt(r.timeToServeMs ?? Number.NaN)).join(' / ')} ms (median ${fmt(medianTimeToServeMs)})`,
        ],
        [
          '… primary "reload done" durationMs (after the 150 ms watch debounce)',
          `${replaced.map((r) => fmt(r.reloadDurationMs ?? Number.NaN)).join(' / ')} ms`,
        ],
        [`no-change rescan (POST /reload durationMs), ${rescans.length}×`, `${rescans.map((r) => fmt(r.durationMs)).join(' / ')} ms`],
        [
          `bounded memory: ${fmt(bounded)} distinct names, contextCacheSize ${cacheSize}: workers before → after each of ${boundedPasses} passes`,
          `${rssTrail} MiB`,
        ],
        ['… handshakes/s per pass, failed', `${passes.map((p) => fmt(p.ok / p.seconds)).join(' / ')}, ${boundedFailed}`],
        [`memory per secure context (${fmt(contextEntries)} entries, cache ${contextEntries} vs 1): after start`, `${fmt(perContextKiB.afterStart, 1)} KiB`],
        ['… after a handshake to every name', `${fmt(perContextKiB.afterHandshakes, 1)} KiB`],
      ],
      ['left', 'right'],
    ),
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
    ...machineLines(machine),
  ].join('\n');
}
