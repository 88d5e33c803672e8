import { BENCH_KEYS } from './keys.js';
import type { describeMachine } from '../harness/machine.js';
import { columnTable, fmt, markdownTable, rangeText } from '../harness/report.js';
import type { WindowResult } from './load.js';
import { median, spread } from '../harness/stats.js';
import { CONTENDED_CORES, cleanRounds } from '../harness/bench.js';
import type { Options, Transport } from './main.js';
import type { BenchScenario, ExploreRow, ScenarioInfo } from './scenarios.js';

// ---------------------------------------------------------------------------
// Summary

export interface IdleLatencyRow {
  readonly key: string;
  readonly path: 'raw' | Transport;
  readonly signsPerSecond: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly errors: number;
}

export interface ScenarioSummary extends ScenarioInfo {
  readonly signsPerSecond: ReturnType<typeof spread>;
  readonly perRound: readonly WindowResult[];
  readonly p50Us: number;
  readonly p99Us: number;
  readonly serverCpuUsPerSign: number | undefined;
  readonly serverMainThreadUsPerSign: number | undefined;
  readonly serverOtherThreadsUsPerSign: number | undefined;
  readonly clientCpuUsPerSign: number;
  /** Server + bench process per sign (for raw: the bench process alone, which then holds the token's work too). */
  readonly totalCpuUsPerSign: number;
  readonly machineBusyCores: number;
  /** CPU used by everything else on the machine during the windows (median), in cores. */
  readonly otherCores: number;
  /** Rounds whose window had at most CONTENDED_CORES of other load. */
  readonly cleanRounds: number;
  /** The medians come from the clean rounds when at least 3 (or all) were clean, else from all rounds. */
  readonly usedRounds: readonly number[];
  readonly errors: number;
  /** Median key server / best raw, and the range of the per-round ratios. */
  readonly vsRaw:
    | {
        readonly ratio: number;
        readonly perRound: readonly number[];
        readonly rawScenario: string;
        /** Ceiling's total CPU per sign / this path's: 1 means signing through the key server costs the machine no more CPU than raw. */
        readonly cpuRatio: number;
      }
    | undefined;
}

export function summarize(
  scenarios: readonly BenchScenario[],
  results: ReadonlyMap<string, readonly WindowResult[]>,
): { summaries: ScenarioSummary[]; ceilings: Map<string, string> } {
  const base = scenarios.map((s) => {
    const all = results.get(s.name) ?? [];
    const { used: perRound, usedRounds, cleanRounds: clean } = cleanRounds(all, (r) => r.machine.otherCores);
    const opt = (f: (r: WindowResult) => number | undefined) => {
      const v = perRound.map(f).filter((x): x is number => x !== undefined);
      return v.length > 0 ? median(v) : undefined;
    };
    return {
      name: s.name,
      key: s.key,
      path: s.path,
      setting: s.setting,
      signsPerSecond: spread(perRound.map((r) => r.signsPerSecond)),
      perRound: all,
      cleanRounds: clean,
      usedRounds,
      p50Us: median(perRound.map((r) => r.latency.p50Us)),
      p99Us: median(perRound.map((r) => r.latency.p99Us)),
      serverCpuUsPerSign: opt((r) => r.server?.cpuUsPerSign),
      serverMainThreadUsPerSign: opt((r) => r.server?.mainThreadUsPerSign),
      serverOtherThreadsUsPerSign: opt((r) => r.server?.otherThreadsUsPerSign),
      clientCpuUsPerSign: median(perRound.map((r) => r.clientCpuUsPerSign)),
      totalCpuUsPerSign: median(perRound.map((r) => (r.server?.cpuUsPerSign ?? 0) + r.clientCpuUsPerSign)),
      machineBusyCores: median(perRound.map((r) => r.machine.busyCores)),
      otherCores: median(perRound.map((r) => r.machine.otherCores)),
      errors: perRound.reduce((n, r) => n + r.errors, 0),
    };
  });
  // The ceiling per key type: the raw setting with the higher median.
  const ceilings = new Map<string, string>();
  for (const key of BENCH_KEYS) {
    const raws = base.filter((s) => s.path === 'raw' && s.key.id === key.id);
    const best = raws.sort((a, b) => b.signsPerSecond.median - a.signsPerSecond.median)[0];
    if (best !== undefined) ceilings.set(key.id, best.name);
  }
  const summaries = base.map((s): ScenarioSummary => {
    if (s.path === 'raw') return { ...s, vsRaw: undefined };
    const raw = base.find((b) => b.name === ceilings.get(s.key.id));
    if (raw === undefined) return { ...s, vsRaw: undefined };
    // Each round against the ceiling's same round (neighbours in time), over rounds both used.
    const both = s.usedRounds.filter((i) => raw.usedRounds.includes(i));
    const pairs = both.length > 0 ? both : s.usedRounds;
    const perRound = pairs.map((i) => (s.perRound[i]?.signsPerSecond ?? Number.NaN) / (raw.perRound[i]?.signsPerSecond ?? Number.NaN));
    return {
      ...s,
      vsRaw: {
        ratio: s.signsPerSecond.median / raw.signsPerSecond.median,
        perRound,
        rawScenario: raw.name,
        cpuRatio: raw.totalCpuUsPerSign / s.totalCpuUsPerSign,
      },
    };
  });
  return { summaries, ceilings };
}

export const TARGET_RATIO = 0.85;

export function markdownReport(
  machine: ReturnType<typeof describeMachine>,
  options: Options,
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
    ['clean rounds', 'right', (s) => `${s.cleanRounds}/${s.perRound.length}`],
    [
      'vs raw (rounds)',
      'right',
      (s) => (s.vsRaw === undefined ? '–' : `**${fmt(s.vsRaw.ratio, 2)}** (${fmt(Math.min(...s.vsRaw.perRound), 2)}–${fmt(Math.max(...s.vsRaw.perRound), 2)})`),
    ],
    ['CPU vs raw', 'right', (s) => (s.vsRaw === undefined ? '–' : fmt(s.vsRaw.cpuRatio, 2))],
    ['p50 µs', 'right', (s) => fmt(s.p50Us)],
    ['p99 µs', 'right', (s) => fmt(s.p99Us)],
    [
      'server µs/sign (main + other)',
      'right',
      (s) =>
        s.serverCpuUsPerSign === undefined
          ? '–'
          : `${fmt(s.serverCpuUsPerSign, 0)} (${fmt(s.serverMainThreadUsPerSign ?? Number.NaN, 0)} + ${fmt(s.serverOtherThreadsUsPerSign ?? Number.NaN, 0)})`,
    ],
    ['bench µs/sign', 'right', (s) => fmt(s.clientCpuUsPerSign, 0)],
    ['total µs/sign', 'right', (s) => fmt(s.totalCpuUsPerSign, 0)],
    ['machine busy / others (cores)', 'right', (s) => `${fmt(s.machineBusyCores, 2)} / ${fmt(s.otherCores, 2)}`],
  ]);
  const verdicts = summaries
    .filter((s) => s.vsRaw !== undefined)
    .map((s) => `${s.key.title} ${s.path}: ${fmt(s.vsRaw!.ratio, 2)} ${s.vsRaw!.ratio >= TARGET_RATIO ? '≥' : '<'} ${TARGET_RATIO}`);
  const exploreTable =
    explore.length === 0
      ? '(skipped: --pipeline given)'
      : markdownTable(
          ['Key', 'CxD', 'signs/s (mean of passes)', 'passes', 'p99 µs'],
          explore.map((r) => [r.key, r.pipeline, fmt(r.meanSignsPerSecond), r.signsPerSecond.map((v) => fmt(v)).join(', '), fmt(r.p99Us)]),
          ['left', 'left', 'right', 'right', 'right'],
        );
  return [
    `# keyserver-sign, ${date}${options.quick ? ' (quick)' : ''}`,
    '',
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB; ${machine.kernel}; load average at start ${machine.loadAverageAtStart.join(' ')}`,
    `Software: Node ${machine.node}, OpenSSL ${machine.openssl}, ${machine.softhsm2 !== undefined ? `SoftHSM2 ${machine.softhsm2}` : 'SoftHSM2 (version unknown)'}`,
    `Command: \`${machine.commandLine}\``,
    `Method: ${roundsRun} interleaved rounds of ${options.measureMs / 1000} s per scenario after ${options.warmupMs / 1000} s warm-up each; window opens ${options.rampMs} ms after the load starts. Client: ${options.client}. Settings: ${Object.entries(
      settings,
    )
      .map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
      .join('; ')}.`,
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

// ---------------------------------------------------------------------------
// Main
