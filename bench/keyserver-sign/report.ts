/**
 * The keyserver-sign bench's figures and Markdown: per scenario the medians over the clean rounds (harness/runner.ts),
 * the ratios to the ceiling (the faster raw setting per key), the one-in-flight latencies (bench/README.md explains).
 */
import { columnTable, fmt, machineLines, minMax, rangeText } from '../harness/report.js';
import { CLEAN_ROUNDS_NOTE, type MeasuringBench, overRounds, roundColumns } from '../harness/runner.js';
import type { Lab, Options } from './main.js';
import { type BenchScenario, idleLatency, pipelineName, RAW_SESSION_COUNTS, type WindowResult } from './load.js';

const TARGET_RATIO = 0.85;

/** Raw runs have no client: the bench process is the signer. */
const common = (r: WindowResult) => ({
  clientCores: r.server === undefined ? 0 : r.clientCpuCores,
  serverSideCores: r.server?.cpuCores ?? 0,
  machineBusyCores: r.machine.busyCores,
  otherCores: r.machine.otherCores,
});

/** Per scenario (the JSON's `scenarios`, which the suite reads), its medians; `vsRaw` against the key's ceiling. */
function summarize(scenarios: readonly BenchScenario[], results: ReadonlyMap<string, readonly WindowResult[]>) {
  const base = scenarios.map((s) => {
    const all = results.get(s.name) ?? [];
    const { med, spreadOf, common: rounds } = overRounds(all, common, 1, 0);
    const server = (f: (v: NonNullable<WindowResult['server']>) => number) => (all.some((r) => r.server) ? med((r) => f(r.server!)) : undefined);
    return {
      name: s.name,
      key: s.key.id,
      title: s.key.title,
      path: s.path,
      setting: s.setting,
      signsPerSecond: spreadOf((r) => r.signsPerSecond),
      p50Us: med((r) => r.latency.p50Us),
      p99Us: med((r) => r.latency.p99Us),
      serverCpuUsPerSign: server((v) => v.cpuUsPerSign),
      serverMainThreadUsPerSign: server((v) => v.mainThreadUsPerSign),
      serverOtherThreadsUsPerSign: server((v) => v.otherThreadsUsPerSign),
      /** The bench process per sign: raw, the whole sign (token included); key server, the client. */
      benchProcessCpuUsPerSign: med((r) => r.clientCpuUsPerSign),
      totalCpuUsPerSign: med((r) => (r.server?.cpuUsPerSign ?? 0) + r.clientCpuUsPerSign),
      errors: all.reduce((n, r) => n + r.errors, 0),
      ...rounds,
    };
  });
  const raws = base.filter((b) => b.path === 'raw').sort((a, b) => b.signsPerSecond.median - a.signsPerSecond.median);
  return base.map((s) => {
    const raw = raws.find((r) => r.key === s.key);
    if (s.path === 'raw' || raw === undefined) return { ...s, ceiling: s === raw, vsRaw: undefined };
    // Each round against the ceiling's same round (neighbours in time), over the rounds both used.
    const both = s.usedRounds.filter((i) => raw.usedRounds.includes(i));
    const rate = (x: typeof s, i: number) => x.perRound[i]?.signsPerSecond ?? Number.NaN;
    const perRound = (both.length > 0 ? both : s.usedRounds).map((i) => rate(s, i) / rate(raw, i));
    const [ratio, cpuRatio] = [s.signsPerSecond.median / raw.signsPerSecond.median, raw.totalCpuUsPerSign / s.totalCpuUsPerSign];
    return { ...s, ceiling: false, vsRaw: { ratio, perRound, rawScenario: raw.name, cpuRatio } };
  });
}

type ScenarioSummary = ReturnType<typeof summarize>[number];

const us = (v: number | undefined) => fmt(v ?? Number.NaN, 0);
const serverCell = (s: ScenarioSummary) =>
  s.serverCpuUsPerSign === undefined ? '–' : `${us(s.serverCpuUsPerSign)} (${us(s.serverMainThreadUsPerSign)} + ${us(s.serverOtherThreadsUsPerSign)})`;
const ratio = (s: ScenarioSummary, f: (v: NonNullable<ScenarioSummary['vsRaw']>) => string) => (s.vsRaw === undefined ? '–' : f(s.vsRaw));

/** The bench's report (harness/runner.ts MeasuringBench), after the one-in-flight latencies. */
export const report: MeasuringBench<Options, Lab, BenchScenario, WindowResult>['report'] = async (held, o, scenarios, measured, env) => {
  const { lab, rig } = held;
  const idle = [];
  for (const key of o.keys) for (const path of o.paths) idle.push(await idleLatency(rig!, key, path, o.idleMs, env.signal, env.log));
  const summaries = summarize(scenarios, measured.results);
  const settings = {
    rawSessions: RAW_SESSION_COUNTS,
    keyserverSessions: rig!.raw!.config.pkcs11.sessions,
    pipeline: Object.fromEntries([...o.pipelines].map(([k, p]) => [k, pipelineName(p)])),
  };
  const json = {
    method: measured.method({ targetRatio: TARGET_RATIO }),
    settings,
    keys: o.keys.map((k) => ({ id: k.id, title: k.title, type: k.type, algorithm: k.algorithm, keyId: rig!.keyIds.get(k.id) })),
    keyserverConfig: lab.config,
    idleLatency: idle,
    scenarios: summaries,
  };
  const settingsText = Object.entries(settings).map(([k, v]) => `${k} ${JSON.stringify(v)}`);
  const table = columnTable(summaries, [
    ['Key', 'left', (s) => s.title],
    ['Path', 'left', (s) => s.path + (s.ceiling ? ' (ceiling)' : '')],
    ['Setting', 'left', (s) => s.setting],
    ['signs/s', 'right', (s) => `${fmt(s.signsPerSecond.median)}${s.usedRounds.length > s.cleanRounds ? ' †' : ''}`],
    ['min–max (spread)', 'right', (s) => rangeText(s.signsPerSecond)],
    ['vs raw (rounds)', 'right', (s) => ratio(s, (v) => `**${fmt(v.ratio, 2)}** (${minMax(v.perRound, 2)})`)],
    ['CPU vs raw', 'right', (s) => ratio(s, (v) => fmt(v.cpuRatio, 2))],
    ['p50 µs', 'right', (s) => fmt(s.p50Us)],
    ['p99 µs', 'right', (s) => fmt(s.p99Us)],
    ['server µs/sign (main + other)', 'right', serverCell],
    ['bench µs/sign', 'right', (s) => us(s.benchProcessCpuUsPerSign)],
    ['total µs/sign', 'right', (s) => us(s.totalCpuUsPerSign)],
    ...roundColumns<ScenarioSummary>('machine busy / others (cores)'),
  ]);
  const verdicts = summaries.map((s) => ratio(s, (v) => `${s.title} ${s.path}: ${fmt(v.ratio, 2)} ${v.ratio >= TARGET_RATIO ? '≥' : '<'} ${TARGET_RATIO}`));
  const idleTable = columnTable(idle, [
    ['Key', 'left', (r) => r.key],
    ['Path', 'left', (r) => r.path],
    ['p50 µs', 'right', (r) => fmt(r.p50Us)],
    ['p99 µs', 'right', (r) => fmt(r.p99Us)],
    ['signs/s', 'right', (r) => fmt(r.signsPerSecond)],
  ]);
  const markdown = [
    `# keyserver-sign, ${env.date}${o.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(env.machine),
    `Method: ${measured.order.length} interleaved rounds of ${o.measureMs / 1000} s per scenario after ${o.warmupMs / 1000} s warm-up each; window opens ` +
      `${o.rampMs} ms after the load starts. Settings: ${settingsText.join('; ')}.`,
    '',
    table,
    '',
    `Target keyserver/raw ≥ ${TARGET_RATIO}: ${verdicts.filter((v) => v !== '–').join('; ')}.`,
    '',
    `${CLEAN_ROUNDS_NOTE} rounds when at least 3 are (else all, marked †).`,
    '"vs raw": ÷ the ceiling (the faster raw setting), in brackets each round ÷ the ceiling\'s same round; "CPU vs raw": the',
    "ceiling's total CPU per sign ÷ this path's. Server: the key server's CPU per sign (main thread + signing workers and V8",
    'helpers); bench: this process (raw: the whole sign; key server: the client). Every figure: bench/README.md, "keyserver-sign".',
    '',
    '## Latency with one request in flight',
    '',
    idleTable,
    '',
    `One raw session, or one connection with one request outstanding, for ${o.idleMs / 1000} s after the rounds: the`,
    'round trip one TLS handshake waits for when the key server is idle (the table above has it at saturation).',
    '',
  ].join('\n');
  return { json, markdown, errors: summaries.reduce((n, s) => n + s.errors, 0), what: 'requests' };
};
