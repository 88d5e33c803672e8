/**
 * The cert-scale bench's reports: the suite's summary rows, the --cpu-prof report and the report of a store that never became ready.
 */
import { readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { LogLine } from '../lab/cert-lab.js';
import { type FunctionCost, type ProfileWindow, summarizeProfile } from '../harness/cpuprofile.js';
import type { describeMachine } from '../harness/machine.js';
import { dateStamp, fmt, markdownTable, writeReport } from '../harness/report.js';
import { median, round } from '../harness/stats.js';
import type { SummaryRow } from '../harness/summary.js';
import { REPO_ROOT, DOMAIN, type Rss, workersRss, type listingCost, type startupPhases, type ReloadFigure } from './main.js';

/** The suite's one-row-per-scenario shape (harness/summary.ts): durations as p50 (median) and p99 (max); no rate or CPU. */
export function summaryRows(
  figures: {
    startup: { readyMs: number };
    oneEntryReload: readonly { timeToServeMs?: number | undefined }[];
    noChangeRescan: readonly { durationMs: number }[];
  },
  errors: number,
): SummaryRow[] {
  const row = (scenario: string, label: string, values: readonly number[]): SummaryRow => ({
    bench: 'cert-scale',
    scenario,
    label,
    unit: 'request',
    rate: Number.NaN,
    serverCpuUs: Number.NaN,
    p50Ms: round(median(values), 1),
    p99Ms: round(Math.max(...values), 1),
    clientSaturated: false,
    errors,
    spreadPct: Number.NaN,
    otherCores: Number.NaN,
  });
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
        [
          '… primary validated every entry and forked ("proxy primary started")',
          notReady.phases.primaryStartedMs === undefined ? 'not yet' : `${fmt(notReady.phases.primaryStartedMs)} ms`,
        ],
        [
          '… workers listening',
          notReady.phases.workersListeningMs.length === 0 ? 'none yet' : `${notReady.phases.workersListeningMs.map((m) => fmt(m)).join(' / ')} ms`,
        ],
        ['RSS when given up: primary', `${fmt(notReady.rss.primaryMiB, 1)} MiB`],
        ['RSS when given up: workers', `${workersRss(notReady.rss)} MiB`],
      ],
      ['left', 'right'],
    ),
    '',
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB, ${machine.kernel}; Node ${machine.node}, OpenSSL ${machine.openssl}; ${machine.softhsm2 === undefined ? '' : `SoftHSM2 ${machine.softhsm2}; `}load average at start ${machine.loadAverageAtStart.join(' ')}.`,
    '',
    `Command: \`${machine.commandLine}\``,
  ].join('\n');
  const out = writeReport(
    outDir,
    name,
    {
      benchmark: 'cert-scale',
      summary: [
        {
          bench: 'cert-scale',
          scenario: 'startup',
          label: 'start-up until /readyz 200',
          unit: 'request',
          rate: Number.NaN,
          serverCpuUs: Number.NaN,
          p50Ms: Number.NaN,
          p99Ms: Number.NaN,
          clientSaturated: false,
          errors: 1,
          spreadPct: Number.NaN,
          otherCores: Number.NaN,
          skipped: `not ready within ${notReady.readyTimeoutMs / 1000} s`,
        } satisfies SummaryRow,
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
