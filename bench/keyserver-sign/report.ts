/**
 * The keyserver-sign bench's figures and result files: per scenario the medians over the clean rounds (harness/runner.ts
 * cleanRounds), the ratios to the ceiling (the faster raw setting per key), the Markdown report and the JSON
 * (bench/README.md, "What the figures mean").
 */
import type { MachineInfo } from '../harness/report.js';
import { CONTENDED_CORES, cleanRounds } from '../harness/runner.js';
import { columnTable, fmt, machineLines, markdownTable, minMax, rangeText, specTable } from '../harness/report.js';
import { median, spread } from '../harness/stats.js';
import type { WindowResult } from './load.js';
import type { BenchScenario, ExploreRow, IdleLatencyRow } from './scenarios.js';

export const TARGET_RATIO = 0.85;

/** Per scenario, the medians over the rounds cleanRounds picks, in the JSON's shape; `vsRaw` against the key's ceiling. */
export function summarize(scenarios: readonly BenchScenario[], results: ReadonlyMap<string, readonly WindowResult[]>) {
  const base = scenarios.map((s) => {
    const all = results.get(s.name) ?? [];
    const { used, usedRounds, cleanRounds: clean } = cleanRounds(all, (r) => r.machine.otherCores);
    const med = (f: (r: WindowResult) => number) => median(used.map(f));
    const server = (f: (server: NonNullable<WindowResult['server']>) => number) => (used.some((r) => r.server) ? med((r) => f(r.server!)) : undefined);
    return {
      name: s.name,
      key: s.key,
      path: s.path,
      setting: s.setting,
      signsPerSecond: spread(used.map((r) => r.signsPerSecond)),
      p50Us: med((r) => r.latency.p50Us),
      p99Us: med((r) => r.latency.p99Us),
      serverCpuUsPerSign: server((v) => v.cpuUsPerSign),
      serverMainThreadUsPerSign: server((v) => v.mainThreadUsPerSign),
      serverOtherThreadsUsPerSign: server((v) => v.otherThreadsUsPerSign),
      /** The bench process per sign: raw, the whole sign (token included); key server, the client. */
      benchProcessCpuUsPerSign: med((r) => r.clientCpuUsPerSign),
      totalCpuUsPerSign: med((r) => (r.server?.cpuUsPerSign ?? 0) + r.clientCpuUsPerSign),
      machineBusyCores: med((r) => r.machine.busyCores),
      otherCores: med((r) => r.machine.otherCores),
      errors: used.reduce((n, r) => n + r.errors, 0),
      cleanRounds: clean,
      usedRounds,
      rounds: all,
    };
  });
  const ceilings = new Map<string, string>();
  for (const s of base.filter((b) => b.path === 'raw').sort((a, b) => a.signsPerSecond.median - b.signsPerSecond.median)) ceilings.set(s.key.id, s.name);
  const summaries = base.map((s) => {
    const raw = s.path === 'raw' ? undefined : base.find((b) => b.name === ceilings.get(s.key.id));
    if (raw === undefined) return { ...s, vsRaw: undefined };
    // Each round against the ceiling's same round (neighbours in time), over the rounds both used.
    const both = s.usedRounds.filter((i) => raw.usedRounds.includes(i));
    const perRound = (both.length > 0 ? both : s.usedRounds).map(
      (i) => (s.rounds[i]?.signsPerSecond ?? Number.NaN) / (raw.rounds[i]?.signsPerSecond ?? Number.NaN),
    );
    const ratio = s.signsPerSecond.median / raw.signsPerSecond.median;
    return { ...s, vsRaw: { ratio, perRound, rawScenario: raw.name, cpuRatio: raw.totalCpuUsPerSign / s.totalCpuUsPerSign } };
  });
  return { summaries, ceilings };
}

export type ScenarioSummary = ReturnType<typeof summarize>['summaries'][number];

const serverCell = (s: ScenarioSummary) =>
  `${fmt(s.serverCpuUsPerSign ?? Number.NaN, 0)} (${fmt(s.serverMainThreadUsPerSign ?? Number.NaN, 0)} + ${fmt(s.serverOtherThreadsUsPerSign ?? Number.NaN, 0)})`;

export function markdownReport(
  machine: MachineInfo,
  options: { readonly quick: boolean; readonly measureMs: number; readonly warmupMs: number; readonly rampMs: number; readonly client: string },
  settings: Record<string, unknown>,
  summaries: readonly ScenarioSummary[],
  ceilings: Map<string, string>,
  explore: readonly ExploreRow[],
  idle: readonly IdleLatencyRow[],
  roundsRun: number,
  date: string,
): string {
  const table = columnTable(summaries, [
    ['Key', 'left', (s) => s.key.title],
    ['Path', 'left', (s) => s.path + (ceilings.get(s.key.id) === s.name ? ' (ceiling)' : '')],
    ['Setting', 'left', (s) => s.setting],
    ['signs/s', 'right', (s) => `${fmt(s.signsPerSecond.median)}${s.usedRounds.length > s.cleanRounds ? ' †' : ''}`],
    ['min–max (spread)', 'right', (s) => rangeText(s.signsPerSecond)],
    ['clean rounds', 'right', (s) => `${s.cleanRounds}/${s.rounds.length}`],
    ['vs raw (rounds)', 'right', (s) => (s.vsRaw === undefined ? '–' : `**${fmt(s.vsRaw.ratio, 2)}** (${minMax(s.vsRaw.perRound, 2)})`)],
    ['CPU vs raw', 'right', (s) => (s.vsRaw === undefined ? '–' : fmt(s.vsRaw.cpuRatio, 2))],
    ['p50 µs', 'right', (s) => fmt(s.p50Us)],
    ['p99 µs', 'right', (s) => fmt(s.p99Us)],
    ['server µs/sign (main + other)', 'right', (s) => (s.serverCpuUsPerSign === undefined ? '–' : serverCell(s))],
    ['bench µs/sign', 'right', (s) => fmt(s.benchProcessCpuUsPerSign, 0)],
    ['total µs/sign', 'right', (s) => fmt(s.totalCpuUsPerSign, 0)],
    ['machine busy / others (cores)', 'right', (s) => `${fmt(s.machineBusyCores, 2)} / ${fmt(s.otherCores, 2)}`],
  ]);
  const verdicts = summaries
    .filter((s) => s.vsRaw !== undefined)
    .map((s) => `${s.key.title} ${s.path}: ${fmt(s.vsRaw!.ratio, 2)} ${s.vsRaw!.ratio >= TARGET_RATIO ? '≥' : '<'} ${TARGET_RATIO}`);
  const settingsText = Object.entries(settings).map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`);
  const exploreTable = specTable(
    explore,
    [
      ['Key', 'left', (r) => r.key],
      ['CxD', 'left', (r) => r.pipeline],
      ['signs/s (mean of passes)', 'right', (r) => fmt(r.meanSignsPerSecond)],
      ['passes', 'right', (r) => r.signsPerSecond.map((v) => fmt(v)).join(', ')],
      ['p99 µs', 'right', (r) => fmt(r.p99Us)],
    ],
    '(skipped: --pipeline given)',
  );
  return [
    `# keyserver-sign, ${date}${options.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(machine),
    `Method: ${roundsRun} interleaved rounds of ${options.measureMs / 1000} s per scenario after ${options.warmupMs / 1000} s warm-up each; window opens ${options.rampMs} ms after the load starts. Client: ${options.client}. Settings: ${settingsText.join('; ')}.`,
    '',
    table,
    '',
    `Target keyserver/raw ≥ ${TARGET_RATIO}: ${verdicts.join('; ')}.`,
    '',
    `Rounds: a round is clean when other processes used at most ${CONTENDED_CORES} cores during its window; medians, ranges and ratios`,
    'use the clean rounds when at least 3 are clean (else all rounds, marked †). Every round is in the JSON.',
    '',
    'Columns: signs/s is the median over rounds; min–max and spread ((max−min)/median) show the rounds. "vs raw" divides by',
    'the ceiling (the faster raw setting for that key); in brackets each round divided by the ceiling\'s same round. "CPU vs raw"',
    "is the ceiling's total CPU per sign divided by this path's (1.00 = no CPU overhead), which the machine's varying",
    'capacity disturbs less than throughput. p50/p99: per-request latency, median over rounds (raw: one C_SignInit + C_Sign;',
    "key server: the client's round trip with the pipeline full). Server: utime+stime of the key server process per sign",
    '(main thread = JavaScript, framing, socket syscalls; other = the signing worker threads running C_SignInit + C_Sign, V8 helpers). Bench:',
    'process.cpuUsage() of the bench process per sign (raw: the whole sign, token included; key server: the client).',
    'Total = server + bench. Machine busy / others: cores busy on the whole machine (/proc/stat) and, of those, the ones',
    'used by neither the bench nor the key server: other load sharing the machine, which the figures cannot see past.',
    '',
    '## Latency with one request in flight',
    '',
    idle.length === 0
      ? '(not measured)'
      : markdownTable(
          ['Key', 'Path', 'p50 µs', 'p99 µs', 'signs/s'],
          idle.map((r) => [r.key, r.path, fmt(r.p50Us), fmt(r.p99Us), fmt(r.signsPerSecond)]),
          ['left', 'left', 'right', 'right', 'right'],
        ),
    '',
    `One raw session, or one connection with one request outstanding, for ${options.quick ? 0.3 : 2} s after the rounds: the`,
    'round trip one TLS handshake waits for when the key server is idle (the table above has it at saturation).',
    '',
    '## Pipeline exploration (unix socket)',
    '',
    exploreTable,
    '',
  ].join('\n');
}

/** The JSON's `scenarios` (the suite reads its medians from here). */
export function scenariosJson(summaries: readonly ScenarioSummary[], ceilings: ReadonlyMap<string, string>) {
  return summaries.map((s) => ({ ...s, key: s.key.id, ceiling: ceilings.get(s.key.id) === s.name }));
}
