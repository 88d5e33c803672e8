/**
 * The handshake bench's figures and result: each scenario's medians and spread over the clean rounds, its checks, the
 * targets per Node major, the keyless hop; the JSON and the Markdown (bench/README.md, "handshake").
 */
import { OWN_MAJOR, versionOf } from '../harness/install.js';
import { type Column, columnTable, fmt, machineLines, minMax, rangeText, specTable } from '../harness/report.js';
import { CLEAN_ROUNDS_NOTE, CONTENDED_CORES, failureLines, overRounds, rateCell, roundColumns } from '../harness/runner.js';
import { shownCommand } from '../harness/spawn.js';
import { median, round } from '../harness/stats.js';
import { benchRow, skippedBenchRow } from '../harness/summary.js';
import { sumValues } from '../lab/counters.js';
import { abArgs } from './ab.js';
import { HANDSHAKE_KEYS, type HandshakeKey, isKeyless, isNginx, keyHolder, onNode, quietLog, type SetupId, setupProcesses, setupTitle } from './lab.js';
import type { BenchScenario, HandshakeBench, RunResult } from './main.js';
import { KEY_NAME, KINDS, type Kind, kindLabel, kindTitle, type ScenarioSpec } from './scenarios.js';

/** TLS 1.3 RSA signs RSA-PSS; TLS 1.2 ECDHE-ECDSA signs ECDSA: the key server sees the same algorithms. */
const ALGORITHM: Record<HandshakeKey['id'], string> = { ec: 'ECDSA_SHA256', rsa: 'RSA_PSS_SHA256' };

type Sum = (f: (r: RunResult) => number) => number;

/**
 * Full keyless kinds, every run idle to idle: key server signs ÷ (full + failed handshakes: ab abandons up to -c signed
 * connections at SIGINT). Should be 1, every sign the proxy's, of the key's algorithm, nothing resumed.
 */
function signCheckOf(spec: ScenarioSpec, sum: Sum) {
  if (!isKeyless(spec.setup) || (spec.kind !== 'full-tls13' && spec.kind !== 'full-tls12')) return undefined;
  const signs = sum((r) => sumValues(r.run.keyserverSigns ?? {}));
  const matching = sum((r) => r.run.keyserverSigns?.[ALGORITHM[spec.key.id]] ?? 0);
  const [full, failed] = [sum((r) => r.run.counters.full), sum((r) => r.run.counters.failed)];
  const [proxySigns, resumed] = [sum((r) => r.run.counters.keylessSigns), sum((r) => r.run.counters.resumed)];
  const ok = signs === matching && matching === proxySigns && resumed === 0 && matching >= full && matching <= full + failed;
  return { signs: matching, proxySigns, fullHandshakes: full, failedHandshakes: failed, resumed, ratio: matching / (full + failed), ok };
}

/** Resumed kind, over the windows: every completed connection resumed (the client keeps its newest ticket), no sign. */
function resumeCheckOf(spec: ScenarioSpec, sum: Sum) {
  if (spec.kind !== 'resumed-tls13') return undefined;
  const [offered, resumed, completed] = [sum((r) => r.window.resume?.offered ?? 0), sum((r) => r.window.resume?.resumed ?? 0), sum((r) => r.window.handshakes)];
  const keyserverSigns = isKeyless(spec.setup) ? sum((r) => r.window.keyserverSigns ?? 0) : undefined;
  const serverFullHandshakes = isNginx(spec.setup) ? undefined : sum((r) => r.window.server.full);
  const offeredNotResumed = sum((r) => r.window.resume?.offeredNotResumed ?? 0);
  const ok = offered > 0 && resumed === completed && (keyserverSigns ?? 0) === 0 && (serverFullHandshakes ?? 0) === 0;
  return { offered, resumed, offeredNotResumed, completed, resumedPct: (100 * resumed) / Math.max(1, completed), keyserverSigns, serverFullHandshakes, ok };
}

export type ScenarioSummary = ReturnType<typeof summarize>;

/** A scenario's medians and spread over its clean rounds (harness/runner.ts), its checks and its errors over every run. */
export function summarize(scenario: BenchScenario, all: readonly RunResult[], serverCpuCount: number, workers: number, failedRounds = 0) {
  const { spec } = scenario;
  const { med, spreadOf, common } = overRounds(all, (r) => r.window, serverCpuCount, failedRounds);
  const sum: Sum = (f) => all.reduce((n, r) => n + f(r), 0);
  // ab's failed and non-2xx requests, handshakes the server saw fail in the windows, in-process client failures (each run's in `perRound`).
  const totalErrors = sum((r) => (r.run.ab ? r.run.ab.failedRequests + r.run.ab.non2xx : 0) + r.window.server.failed + r.run.clientErrors);
  const latency = (p: 'p50Us' | 'p99Us') => med((r) => r.run.ab?.[p] ?? r.window.latency?.[p] ?? Number.NaN);
  return {
    ...spec,
    processes: setupProcesses(spec.setup, workers),
    handshakesPerSecond: spreadOf((r) => r.window.handshakesPerSecond),
    serverUs: spreadOf((r) => r.window.serverUs),
    frontUs: med((r) => r.window.frontUs),
    keyUs: keyHolder(spec.setup) === undefined ? undefined : med((r) => r.window.keyUs ?? Number.NaN),
    originUs: med((r) => r.window.originUs),
    clientUs: med((r) => r.window.clientUs),
    p50Us: latency('p50Us'),
    p99Us: latency('p99Us'),
    ...common,
    totalErrors,
    signCheck: signCheckOf(spec, sum),
    resumeCheck: resumeCheckOf(spec, sum),
  };
}

const find = (summaries: readonly ScenarioSummary[], kind: Kind, setup: SetupId, key: HandshakeKey['id']) =>
  summaries.find((s) => s.kind === kind && s.setup === setup && s.key.id === key);

/** The targets (issues 12, 13): the server µs divided (a figure, or a difference of two), the limit, whether under this node only. */
type Figure = readonly [Kind, SetupId];
const full = (setup: SetupId): Figure => ['full-tls13', setup];
const [KEYLESS, IN_MEMORY, FILE, P11KIT] = [full('keyless-unix'), full('inmemory'), full('nginx-file'), full('nginx-p11kit')];
const [FLOOR, FLOOR_KEYLESS] = [full('node-floor'), full('node-floor-keyless')];
type TargetSpec = readonly [name: string, a: readonly Figure[], b: readonly Figure[], limit: number | undefined, ownOnly?: true];
const TARGET_ROWS: readonly TargetSpec[] = [
  ['full handshake: keyless (unix) ÷ nginx + p11-kit', [KEYLESS], [P11KIT], 1.25],
  ['full handshake: in memory ÷ nginx key file', [IN_MEMORY], [FILE], 1.3],
  ['keyless hop ÷ p11-kit hop: (keyless − in memory) ÷ (nginx + p11-kit − nginx key file)', [KEYLESS, IN_MEMORY], [P11KIT, FILE], 1.0],
  ['full handshake: bare node:https (floor) ÷ nginx key file', [full('node-floor')], [FILE], undefined],
  ["the floor's keyless hop ÷ p11-kit hop: (floor keyless − floor) ÷ (nginx + p11-kit − nginx key file)", [FLOOR_KEYLESS, FLOOR], [P11KIT, FILE], undefined],
  ["keyless hop ÷ the floor's: (keyless − in memory) ÷ (floor keyless − floor)", [KEYLESS, IN_MEMORY], [FLOOR_KEYLESS, FLOOR], undefined],
  ['resumed handshake: keyless ÷ nginx', [['resumed-tls13', 'keyless-unix']], [['resumed-tls13', 'nginx-file']], 1.3],
  ['resumed handshake: floor ÷ nginx', [['resumed-tls13', 'node-floor']], [['resumed-tls13', 'nginx-file']], undefined],
  ['resumed handshake: floor + undici forwarder ÷ nginx', [['resumed-tls13', 'node-forward']], [['resumed-tls13', 'nginx-file']], undefined],
  ['full handshake with h2 ÷ with http/1.1: keyless', [['alpn-h2', 'keyless-unix']], [['alpn-h1', 'keyless-unix']], 1.1, true],
  ['full handshake with h2 ÷ with http/1.1: nginx', [['alpn-h2', 'nginx-file']], [['alpn-h1', 'nginx-file']], undefined, true],
];

/** The targets from this run's medians, per Node major of the Node side (nginx is the same in every block); rows whose scenarios did not run left out. */
export function targets(summaries: readonly ScenarioSummary[], majors: readonly number[]) {
  return majors.flatMap((major) =>
    HANDSHAKE_KEYS.flatMap((key) =>
      TARGET_ROWS.flatMap(([name, a, b, limit, ownOnly]) => {
        if (ownOnly && major !== OWN_MAJOR) return [];
        const value = (figures: readonly Figure[]) => {
          const [x, y] = figures.map(([kind, setup]) => find(summaries, kind, onNode(setup, major), key.id)?.serverUs.median);
          return figures.length === 1 ? x : x === undefined || y === undefined ? undefined : x - y;
        };
        const [x, y] = [value(a), value(b)];
        if (x === undefined || y === undefined) return [];
        const met = limit === undefined || !(y > 0) ? undefined : x / y <= limit;
        return [{ name, key: key.title, node: String(major), value: x / y, limit, met, detail: `${fmt(x)} ÷ ${fmt(y)} µs` }];
      }),
    ),
  );
}

/** Keyless − in memory (full TLS 1.3), per transport, and the floor's (floor keyless − floor); per round (neighbours in time). */
function hops(summaries: readonly ScenarioSummary[]) {
  const PAIRS = [
    ['keyless-unix', 'inmemory'],
    ['keyless-tcp', 'inmemory'],
    ['node-floor-keyless', 'node-floor'],
  ] as const;
  return HANDSHAKE_KEYS.flatMap((key) => {
    return PAIRS.flatMap(([setup, keyed]) => {
      const [k, m] = [find(summaries, 'full-tls13', setup, key.id), find(summaries, 'full-tls13', keyed, key.id)];
      if (k === undefined || m === undefined) return [];
      const rounds = Math.min(k.perRound.length, m.perRound.length);
      const perRoundUs = Array.from({ length: rounds }, (_, i) => k.perRound[i]!.window.serverUs - m.perRound[i]!.window.serverUs);
      return [{ key, setup, hopUs: k.serverUs.median - m.serverUs.median, frontHopUs: k.frontUs - m.frontUs, keyUs: k.keyUs ?? Number.NaN, perRoundUs }];
    });
  });
}

/** The result JSON's `summary` (harness/summary.ts): one row per scenario that ran, and per requested one skipped. */
function summaryEntries(summaries: readonly ScenarioSummary[], requested: readonly ScenarioSpec[], why: (s: ScenarioSpec) => string | undefined) {
  const label = (s: Pick<ScenarioSpec, 'kind' | 'setup' | 'key'>) => `${kindLabel(s.kind)}, ${setupTitle(s.setup)}, ${s.key.title}`;
  const ran = summaries.map((s) => {
    const [rate, serverCpuUs, spreadPct] = [round(s.handshakesPerSecond.median, 1), round(s.serverUs.median, 1), round(s.handshakesPerSecond.spreadPct, 1)];
    const [p50Ms, p99Ms, otherCores] = [round(s.p50Us / 1000, 2), round(s.p99Us / 1000, 2), round(s.otherCores, 2)];
    const figures = { rate, serverCpuUs, p50Ms, p99Ms, clientSaturated: s.clientSaturated, errors: s.totalErrors, spreadPct, otherCores };
    return benchRow('handshake', { scenario: s.id, label: label(s), ...figures });
  });
  const notRun = requested.flatMap((spec) => (why(spec) === undefined ? [] : [skippedBenchRow('handshake', spec.id, label(spec), why(spec)!)]));
  return [...ran, ...notRun];
}

const checkCell = ({ signCheck: sign, resumeCheck: resume }: ScenarioSummary): string => {
  if (sign !== undefined) return `signs/hs ${fmt(sign.ratio, 3)}${sign.ok ? '' : ' ✗'}`;
  if (resume === undefined) return '–';
  const signs = resume.keyserverSigns === undefined ? '' : `, signs ${resume.keyserverSigns}`;
  return `resumed ${fmt(resume.resumedPct, 1)}% (${fmt(resume.resumed)}/${fmt(resume.completed)})${signs}${resume.ok ? '' : ' ✗'}`;
};

const SCENARIO_COLUMNS: readonly Column<ScenarioSummary>[] = [
  ['Key', 'left', (s) => s.key.title],
  ['Set-up', 'left', (s) => setupTitle(s.setup)],
  ['processes', 'left', (s) => s.processes],
  ['handshakes/s', 'right', (s) => rateCell(s, s.handshakesPerSecond)],
  ['min–max (spread)', 'right', (s) => rangeText(s.handshakesPerSecond)],
  ['server µs/hs', 'right', (s) => `**${fmt(s.serverUs.median)}**`],
  ['min–max (spread)', 'right', (s) => rangeText(s.serverUs)],
  ['front + key holder µs', 'right', (s) => (s.keyUs === undefined ? `${fmt(s.frontUs)}` : `${fmt(s.frontUs)} + ${fmt(s.keyUs)}`)],
  ['origin µs', 'right', (s) => fmt(s.originUs)],
  ['client µs (cores)', 'right', (s) => `${fmt(s.clientUs)} (${fmt(s.clientCores, 2)})`],
  ['server-side cores', 'right', (s) => `${fmt(s.serverSideCores, 2)}`],
  ['p50 / p99 ms', 'right', (s) => `${fmt(s.p50Us / 1000, 1)} / ${fmt(s.p99Us / 1000, 1)}`],
  ['errors', 'right', (s) => String(s.totalErrors)],
  ['check', 'left', checkCell],
  ...roundColumns<ScenarioSummary>('busy / others (cores)'),
];

const TARGET_COLUMNS: readonly Column<ReturnType<typeof targets>[number]>[] = [
  ['Target', 'left', (t) => t.name],
  ['Key', 'left', (t) => t.key],
  ['Node', 'right', (t) => t.node],
  ['value', 'right', (t) => fmt(t.value, 2)],
  ['limit', 'right', (t) => (t.limit === undefined ? '–' : `≤ ${fmt(t.limit, 2)}`)],
  ['met', 'left', (t) => (t.limit === undefined ? '' : t.met === undefined ? '?' : t.met ? 'yes' : '**no**')],
  ['from', 'left', (t) => t.detail],
];

const HOP_COLUMNS: readonly Column<ReturnType<typeof hops>[number]>[] = [
  ['Key', 'left', (h) => h.key.title],
  ['Transport', 'left', (h) => setupTitle(h.setup)],
  ['**hop µs/hs**', 'right', (h) => `**${fmt(h.hopUs)}**`],
  ['of which proxy / key server', 'right', (h) => `${fmt(h.frontHopUs)} / ${fmt(h.keyUs)}`],
  ['per round (min–max)', 'right', (h) => minMax(h.perRoundUs)],
];

type ReportArgs = Parameters<HandshakeBench['report']>;
export async function handshakeReport(...[lab, options, scenarios, { results, failures, method }, { log, machine, date }]: ReportArgs) {
  const { nodeVersions, limits } = lab;
  const ab = versionOf('ab', ['-V']);
  const failed = (name: string) => failures.filter((f) => f.scenario === name && f.phase === 'measure').length;
  const summaries = scenarios.map((s) => summarize(s, results.get(s.name) ?? [], options.serverCpuCount, options.workers, failed(s.name)));
  const [targetRows, hopRows] = [targets(summaries, options.majors), hops(summaries)];
  const abShown = abArgs({ port: 0, host: 'KEY.bench.localhost', concurrency: options.concurrency, maxSeconds: 0, csvPath: 'FILE.csv', cpus: undefined });
  const abCommand = shownCommand(options.clientCpus, 'ab', abShown, [
    [/-t \d+ -n \d+/, '-t T -n N'],
    [/127\.0\.0\.1:0/, '127.0.0.1:PORT'],
  ]);
  const tools = lab.nginxTools;
  const firstAb = summaries.find((s) => s.kind === 'full-tls13')?.perRound[0]?.run.ab;
  const tls = firstAb === undefined ? '?' : `${firstAb.tlsProtocol ?? '?'}, ${firstAb.serverTempKey ?? '?'}`;
  const { scenarios: _, keys, ...runOptions } = options;
  const json = {
    command: machine.commandLine,
    summary: summaryEntries(summaries, options.scenarios, (spec) => lab.skipped.get(spec.setup) ?? lab.skipped.get(spec.id)),
    targets: targetRows.map((t) => ({ ...t, value: round(t.value, 3), limit: t.limit === undefined ? null : round(t.limit, 3) })),
    options: { ...runOptions, ab, abCommand, nginx: tools && { ...tools, processes: 1, masterProcess: false } },
    method: method({ nginxWarmupMs: options.nginxWarmupMs }),
    failedRounds: failures,
    skipped: Object.fromEntries(lab.skipped),
    limits,
    keys: keys.map((k) => ({ ...k, name: KEY_NAME[k.id], keyId: lab.keyIds.get(k.id) })),
    nodeVersions: Object.fromEntries(nodeVersions),
    serverConfigs: Object.fromEntries(lab.configs),
    keyless_hop: hopRows.map(({ key, perRoundUs, ...h }) => ({ ...h, key: key.id, perRoundUs: perRoundUs.map((v) => round(v)) })),
    scenarios: summaries.map((s) => ({ ...s, key: s.key.id })),
  };
  const pin = `servers (proxies, key server, in-memory, nginx, p11-kit server, origin) on CPU ${options.serverCpus}; clients and this bench on CPU ${options.clientCpus}`;
  const majors = [...nodeVersions].map(([m, v]) => `${m} = ${v}`).join(', ');
  const ofKind = (kind: Kind) => summaries.filter((s) => s.kind === kind);
  // Other load in the windows: on a shared machine, how far the absolute figures can be trusted.
  const others = summaries.flatMap((s) => s.perRound.map((r) => r.window.otherCores));
  const contended = others.filter((c) => c > CONTENDED_CORES).length;
  const shared = contended > 0 ? ': the server core was shared, absolute figures read high and rates low; compare set-ups within this run.' : '.';
  const markdown = [
    `# handshake, ${date}${options.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(machine, `${ab ?? 'ab (version unknown)'}${tools === undefined ? '' : `, nginx ${tools.version}`}`),
    ...(nodeVersions.size > 1 ? [`Node majors (--node): ${majors}; the key server, nginx and the origin stay on this node.`] : []),
    `Client: \`${abCommand}\` (${options.concurrency} connections in flight, a new TCP connection and full handshake per request; negotiated ${tls}); resumed and ALPN: ${options.resumeLoops} connections in flight in this bench's process (resumed: each offering the newest ticket it got)${options.paced === undefined ? '' : `, paced: at most ${options.paced} connections a second for every server`}.`,
    `Servers: proxies and in-memory server ${options.workers} workers each (node:cluster), TLS profile ${options.profile}, log level ${options.logLevel}; nginx one process (master_process off), access log ${quietLog(options.logLevel) ? 'off' : 'on'}.`,
    `Pinning: ${options.serverCpus === undefined ? 'no pinning (scheduler decides)' : pin}.`,
    `Other load: ${contended} of ${others.length} windows had more than ${CONTENDED_CORES} cores of other processes (median ${fmt(median(others), 2)}, max ${fmt(Math.max(...others), 2)} cores)${shared}`,
    `Method: warm-up ${options.warmupMs / 1000} s per Node scenario (${options.nginxWarmupMs / 1000} s nginx), then ${options.rounds} interleaved rounds; each run starts the client, waits ${options.rampMs} ms, measures a ${options.measureMs / 1000} s window, then stops the client.`,
    ...(limits === undefined ? [] : [limits.line]),
    ...(lab.skipped.size > 0 ? ['', ...[...lab.skipped].map(([setup, reason]) => `- ${setup}: skipped, ${reason}`)] : []),
    ...failureLines(failures),
    '\n## Targets (issue 12; h2 ÷ http/1.1: issue 13), per Node major of the Node side\n',
    `${specTable(targetRows, TARGET_COLUMNS, '(needs the scenarios the targets compare)')}\n`,
    ...KINDS.filter((k) => ofKind(k).length > 0).flatMap((k) => [`## ${kindTitle(k)}\n`, `${columnTable(ofKind(k), SCENARIO_COLUMNS)}\n`]),
    '## Keyless hop (full TLS 1.3, server CPU per handshake, keyless − in memory; the floor: floor keyless − floor)\n',
    `${specTable(hopRows, HOP_COLUMNS, '(needs keyless and in memory)')}\n`,
    'Columns (bench/README.md, "handshake"): handshakes/s = handshakes in the window ÷ its length, median over rounds (full: counted by the server, nginx: stub_status requests; resumed and ALPN: connections the client completed); "≥": the client used ≥ 0.9 of its core, the rate is a lower bound. **server µs/hs** = utime+stime of every process of the set-up (front + key holder) over the window ÷ handshakes in it: the figure to compare; origin and client apart. p50/p99 = per-connection time (connect + handshake + GET), mostly queueing. errors = ab failed + non-2xx + handshakes the server saw fail + client failures. check: full keyless = key server signs ÷ (full + failed handshakes), idle to idle (1 = one sign per handshake); resumed = tickets resumed, and key server signs (must be 0).',
    `${CLEAN_ROUNDS_NOTE} rounds when at least 3 are (else all, marked †). Per-round figures for every window are in the JSON.`,
    '',
  ].join('\n');
  const badSigns = summaries.filter((s) => s.signCheck !== undefined && !s.signCheck.ok);
  if (badSigns.length > 0) log(`sign count does not match handshakes for ${badSigns.map((s) => s.id).join(', ')}: see the JSON`);
  const errors = summaries.reduce((n, s) => n + s.totalErrors, 0);
  return { json, markdown, errors, what: 'requests or handshakes', status: badSigns.length > 0 ? 1 : 0 };
}
