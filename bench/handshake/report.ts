/**
 * The handshake bench's result: the JSON (the `summary` rows, targets, limits, keyless hop, every round's window) and
 * the Markdown (the targets per Node major, one table per kind, the keyless hop, what one core signs). Columns and
 * method: bench/README.md, "handshake".
 */
import { type Column, columnTable, fmt, machineLines, minMax, rangeText, specTable } from '../harness/report.js';
import { CLEAN_ROUNDS_NOTE, CONTENDED_CORES, failureLines, rateCell, roundColumns } from '../harness/runner.js';
import { median, round } from '../harness/stats.js';
import { shownCommand } from '../harness/spawn.js';
import { abArgs } from './ab.js';
import { quietLog, setupTitle } from './lab.js';
import { limitsMarkdown } from './limits.js';
import type { HandshakeBench } from './main.js';
import { KEY_NAME, KINDS, kindTitle } from './scenarios.js';
import { type HopRow, hops, type ScenarioSummary, summarize, summaryEntries, type TargetRow, targets } from './summary.js';

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

const TARGET_COLUMNS: readonly Column<TargetRow>[] = [
  ['Target', 'left', (t) => t.name],
  ['Key', 'left', (t) => t.key],
  ['Node', 'right', (t) => t.node],
  ['value', 'right', (t) => fmt(t.value, 2)],
  ['limit', 'right', (t) => (t.limit === undefined ? '–' : `≤ ${fmt(t.limit, 2)}`)],
  ['met', 'left', (t) => (t.limit === undefined ? '' : t.met === undefined ? '?' : t.met ? 'yes' : '**no**')],
  ['from', 'left', (t) => t.detail],
];

const HOP_COLUMNS: readonly Column<HopRow>[] = [
  ['Key', 'left', (h) => h.key.title],
  ['Transport', 'left', (h) => setupTitle(h.setup)],
  ['**hop µs/hs**', 'right', (h) => `**${fmt(h.hopUs)}**`],
  ['of which proxy / key server', 'right', (h) => `${fmt(h.frontHopUs)} / ${fmt(h.keyUs)}`],
  ['per round (min–max)', 'right', (h) => minMax(h.perRoundUs)],
];

/** How much other load the windows saw: on a shared machine, how far the absolute figures can be trusted. */
function contentionLine(summaries: readonly ScenarioSummary[]): string {
  const windows = summaries.flatMap((s) => s.perRound.map((r) => r.window.otherCores));
  const contended = windows.filter((c) => c > CONTENDED_CORES).length;
  const figures = `median ${fmt(median(windows), 2)}, max ${fmt(Math.max(...windows), 2)} cores`;
  const verdict = contended > 0 ? ': the server core was shared, absolute figures read high and rates low; compare set-ups within this run.' : '.';
  return `Other load: ${contended} of ${windows.length} windows had more than ${CONTENDED_CORES} cores of other processes (${figures})${verdict}`;
}

export async function handshakeReport(...[held, options, scenarios, measured, { log, machine, date }]: Parameters<HandshakeBench['report']>) {
  const { lab, noH2, nodeVersions, ab, limits } = held;
  const { results, failures, method } = measured;
  const failed = (name: string) => failures.filter((f) => f.scenario === name && f.phase === 'measure').length;
  const summaries = scenarios.map((s) => summarize(s, results.get(s.name) ?? [], options.serverCpuCount, options.workers, failed(s.name)));
  const [targetRows, hopRows] = [targets(summaries, options.majors), hops(summaries)];
  const abShown = abArgs({ port: 0, host: 'KEY.bench.localhost', concurrency: options.concurrency, maxSeconds: 0, csvPath: 'FILE.csv', cpus: undefined });
  const abCommand = shownCommand(options.clientCpus, 'ab', abShown, [
    [/-t \d+/, '-t T'],
    [/-n \d+/, '-n N'],
    [/127\.0\.0\.1:0/, '127.0.0.1:PORT'],
  ]);
  const skipped = new Map([...lab.skipped, ...[...noH2].map(([id, reason]) => [id, `the server ${reason}`] as const)]);
  const tools = lab.nginxTools;
  const firstAb = summaries.find((s) => s.kind === 'full-tls13')?.perRound[0]?.run.ab;
  const tls = firstAb === undefined ? '?' : `${firstAb.tlsProtocol ?? '?'}, ${firstAb.serverTempKey ?? '?'}`;
  const { scenarios: _, keys, ...runOptions } = options;
  const json = {
    command: machine.commandLine,
    summary: summaryEntries(summaries, (spec) => lab.skipped.get(spec.setup) ?? noH2.get(spec.id), options.scenarios),
    targets: targetRows.map((t) => ({ ...t, value: round(t.value, 3), limit: t.limit === undefined ? null : round(t.limit, 3) })),
    options: { ...runOptions, ab, abCommand, nginx: tools && { ...tools, processes: 1, masterProcess: false } },
    method: method({ nginxWarmupMs: options.nginxWarmupMs }),
    failedRounds: failures,
    limits,
    keys: keys.map((k) => ({ ...k, name: KEY_NAME[k.id], keyId: lab.keyIds.get(k.id) })),
    nodeVersions: Object.fromEntries(nodeVersions),
    serverConfigs: Object.fromEntries(lab.configs),
    keyless_hop: hopRows.map(({ key, perRoundUs, ...h }) => ({ ...h, key: key.id, perRoundUs: perRoundUs.map((v) => round(v)) })),
    scenarios: summaries.map((s) => ({ ...s, key: s.key.id })),
  };
  const pin =
    options.serverCpus === undefined
      ? 'no pinning (scheduler decides)'
      : `servers (proxies, key server, in-memory, nginx, p11-kit server, origin) on CPU ${options.serverCpus}; clients and this bench on CPU ${options.clientCpus}`;
  const majors = [...nodeVersions].map(([m, v]) => `${m} = ${v}`).join(', ');
  const markdown = [
    `# handshake, ${date}${options.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(machine, `${ab ?? 'ab (version unknown)'}${tools === undefined ? '' : `, nginx ${tools.version}`}`),
    ...(nodeVersions.size > 1 ? [`Node majors (--node): ${majors}; the key server, nginx and the origin stay on this node.`] : []),
    `Client: \`${abCommand}\` (${options.concurrency} connections in flight, a new TCP connection and full handshake per request; negotiated ${tls}); resumed and ALPN: ${options.resumeLoops} connections in flight in this bench's process (resumed: each offering the newest ticket it got).`,
    `Servers: proxies and in-memory server ${options.workers} workers each (node:cluster), TLS profile ${options.profile}, log level ${options.logLevel}; nginx one process (master_process off), access log ${quietLog(options.logLevel) ? 'off' : 'on'}.`,
    `Pinning: ${pin}.`,
    contentionLine(summaries),
    `Method: warm-up ${options.warmupMs / 1000} s per Node scenario (${options.nginxWarmupMs / 1000} s nginx), then ${options.rounds} interleaved rounds; each run starts the client, waits ${options.rampMs} ms, measures a ${options.measureMs / 1000} s window, then stops the client.`,
    ...(skipped.size > 0 ? ['', ...[...skipped].map(([setup, reason]) => `- ${setup}: skipped, ${reason}`)] : []),
    ...failureLines(failures),
    '',
    '## Targets (issue 12; h2 ÷ http/1.1: issue 13), per Node major of the Node side',
    '',
    specTable(targetRows, TARGET_COLUMNS, '(needs the scenarios the targets compare)'),
    '',
    ...KINDS.filter((k) => summaries.some((s) => s.kind === k)).flatMap((k) => [
      `## ${kindTitle(k)}`,
      '',
      columnTable(
        summaries.filter((s) => s.kind === k),
        SCENARIO_COLUMNS,
      ),
      '',
    ]),
    '## Keyless hop (full TLS 1.3, server CPU per handshake, keyless − in memory)',
    '',
    specTable(hopRows, HOP_COLUMNS, '(needs keyless and in memory)'),
    '',
    ...limitsMarkdown(limits!),
    'Columns (bench/README.md, "handshake"): handshakes/s = handshakes in the window ÷ its length, median over rounds (full: counted by',
    'the server, nginx: stub_status requests; resumed and ALPN: connections the client completed); "≥": the client used ≥ 0.9 of its',
    'core, the rate is a lower bound. **server µs/hs** = utime+stime of every process of the set-up (front + key holder) over the',
    'window ÷ handshakes in it: the figure to compare. origin and client apart; p50/p99 = per-connection time (connect + handshake',
    '+ GET), mostly queueing. errors = ab failed + non-2xx + handshakes the server saw fail + client failures. check: full keyless =',
    'key server signs ÷ (full + failed handshakes), idle to idle (1 = one sign per handshake); resumed = tickets resumed, and key',
    'server signs (must be 0).',
    `${CLEAN_ROUNDS_NOTE} rounds when at least 3 are (else all, marked †). Per-round figures for every window are in the JSON.`,
    '',
  ].join('\n');
  const badSigns = summaries.filter((s) => s.signCheck !== undefined && !s.signCheck.ok);
  if (badSigns.length > 0) log(`sign count does not match handshakes for ${badSigns.map((s) => s.id).join(', ')}: see the JSON`);
  const errors = summaries.reduce((n, s) => n + s.totalErrors, 0);
  return { json, markdown, errors, what: 'requests or handshakes', status: badSigns.length > 0 ? 1 : 0 };
}
