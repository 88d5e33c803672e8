/**
 * The handshake bench's Markdown: the targets per Node major, one table per kind (rates, server CPU per handshake
 * with min–max, checks, resumption %), the keyless hop, what one core signs; and the --perf run's profile tables.
 */
import { CLEAN_ROUNDS_NOTE, CONTENDED_CORES, failureLines, rateCell, roundColumns } from '../harness/runner.js';
import type { MachineInfo } from '../harness/report.js';
import type { PerfSummary } from '../harness/perf.js';
import { type Column, columnTable, fmt, markdownTable, minMax, rangeText, specTable } from '../harness/report.js';
import type { RoundFailure } from '../harness/rounds.js';
import { median } from '../harness/stats.js';
import { HANDSHAKE_KEYS, quietLog, setupTitle } from './lab.js';
import type { Options } from './main.js';
import { KINDS, kindTitle } from './scenarios.js';
import type { HopRow, Limits, ScenarioSummary, TargetRow } from './summary.js';

export interface ReportContext {
  readonly machine: MachineInfo;
  readonly options: Options;
  readonly date: string;
  readonly ab: string | undefined;
  readonly abCommand: string;
  readonly nginxVersion: string | undefined;
  readonly tls: string | undefined;
  readonly skipped: ReadonlyMap<string, string>;
  readonly limits: Limits;
  /** Node binaries of the versioned set-ups: major → version string. */
  readonly nodeVersions: ReadonlyMap<number, string>;
  readonly failures: readonly RoundFailure[];
}

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
  [
    'check',
    'left',
    (s) =>
      s.signCheck !== undefined
        ? `signs/hs ${fmt(s.signCheck.ratio, 3)}${s.signCheck.ok ? '' : ' ✗'}`
        : s.resumeCheck !== undefined
          ? `resumed ${fmt(s.resumeCheck.resumedPct, 1)}% (${fmt(s.resumeCheck.resumed)}/${fmt(s.resumeCheck.completed)})${s.resumeCheck.keyserverSigns === undefined ? '' : `, signs ${s.resumeCheck.keyserverSigns}`}${s.resumeCheck.ok ? '' : ' ✗'}`
          : '–',
  ],
  ...roundColumns<ScenarioSummary>('busy / others (cores)'),
];

/** How much other load the windows saw: on a shared machine this says how far the absolute figures can be trusted. */
function contentionLine(summaries: readonly ScenarioSummary[]): string {
  const windows = summaries.flatMap((s) => s.perRound.map((r) => r.window.otherCores));
  const contended = windows.filter((c) => c > CONTENDED_CORES).length;
  return (
    `Other load: ${contended} of ${windows.length} windows had more than ${CONTENDED_CORES} cores of other processes (median ${fmt(median(windows), 2)}, max ${fmt(Math.max(...windows), 2)} cores)` +
    (contended > 0 ? ': the server core was shared, absolute figures read high and rates low; compare set-ups within this run.' : '.')
  );
}

export function markdownReport(
  ctx: ReportContext,
  summaries: readonly ScenarioSummary[],
  targetRows: readonly TargetRow[],
  hopRows: readonly HopRow[],
): string {
  const { machine, options, limits } = ctx;
  const pin =
    (options.serverCpus === undefined
      ? 'no pinning (scheduler decides)'
      : `servers (proxies, key server, in-memory, nginx, p11-kit server, origin) on CPU ${options.serverCpus}; clients and this bench on CPU ${options.clientCpus}`) +
    (options.keyserverCpus === undefined ? '' : `; key server moved to CPU ${options.keyserverCpus}`);
  const kinds = KINDS.filter((k) => summaries.some((s) => s.kind === k));
  const targetTable = specTable(
    targetRows,
    [
      ['Target', 'left', (t) => t.name],
      ['Key', 'left', (t) => t.key],
      ['Node', 'right', (t) => t.node],
      ['value', 'right', (t) => fmt(t.value, 2)],
      ['limit', 'right', (t) => (t.limit === undefined ? '–' : `≤ ${fmt(t.limit, 2)}`)],
      ['met', 'left', (t) => (t.limit === undefined ? '' : t.met === undefined ? '?' : t.met ? 'yes' : '**no**')],
      ['from', 'left', (t) => t.detail],
    ],
    '(needs the scenarios the targets compare)',
  );
  const hopTable = specTable(
    hopRows,
    [
      ['Key', 'left', (h) => h.key.title],
      ['Transport', 'left', (h) => setupTitle(h.setup)],
      ['**hop µs/hs**', 'right', (h) => `**${fmt(h.hopUs)}**`],
      ['of which proxy / key server', 'right', (h) => `${fmt(h.frontHopUs)} / ${fmt(h.keyUs)}`],
      ['per round (min–max)', 'right', (h) => minMax(h.perRoundUs)],
    ],
    '(needs keyless and in memory)',
  );
  const { openssl, rawToken } = limits;
  const perSign = (rate: number) => `${fmt(rate)} signs/s (${fmt(1e6 / rate, 0)} µs each)`;
  const limitLines: string[] = [];
  if (openssl !== undefined && 'error' in openssl) limitLines.push(`- openssl speed: failed (${openssl.error})`);
  else if (openssl !== undefined)
    limitLines.push(`- \`${openssl.command}\`: ECDSA P-256 ${perSign(openssl.ecdsaP256SignsPerSecond)}, RSA-2048 ${perSign(openssl.rsa2048SignsPerSecond)}`);
  if (rawToken !== undefined && 'error' in rawToken) limitLines.push(`- raw C_Sign: failed (${rawToken.error})`);
  else {
    for (const r of rawToken ?? []) {
      const key = HANDSHAKE_KEYS.find((k) => k.id === r.key)!.title;
      const errors = r.errors > 0 ? `, ${r.errors} errors` : '';
      limitLines.push(
        `- raw pkcs11js C_SignInit + C_Sign on the token, ${key}, ${r.sessions} sessions: ${fmt(r.signsPerSecond)} signs/s, ${fmt(r.cpuUsPerSign)} µs CPU per sign${errors}`,
      );
    }
  }
  const skipped = [...ctx.skipped].map(([setup, reason]) => `- ${setup}: skipped, ${reason}`);
  return [
    `# handshake, ${ctx.date}${options.quick ? ' (quick)' : ''}`,
    '',
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB; ${machine.kernel}; load average at start ${machine.loadAverageAtStart.join(' ')}`,
    `Software: Node ${machine.node}, OpenSSL ${machine.openssl}, ${machine.softhsm2 !== undefined ? `SoftHSM2 ${machine.softhsm2}` : 'SoftHSM2 (version unknown)'}, ${ctx.ab ?? 'ab (version unknown)'}${ctx.nginxVersion === undefined ? '' : `, nginx ${ctx.nginxVersion}`}`,
    ...(ctx.nodeVersions.size > 1
      ? [`Node majors (--node): ${[...ctx.nodeVersions].map(([m, v]) => `${m} = ${v}`).join(', ')}; the key server, nginx and the origin stay on this node.`]
      : []),
    `Command: \`${machine.commandLine}\``,
    `Client: \`${ctx.abCommand}\` (${options.concurrency} connections in flight, a new TCP connection and full handshake per request; negotiated ${ctx.tls ?? '?'}); resumed: ${options.resumeLoops} node:tls connections in flight in this bench's process, each offering the newest ticket it got.`,
    `Servers: proxies and in-memory server ${options.workers} workers each (node:cluster), TLS profile ${options.profile}, log level ${options.logLevel}; nginx one process (master_process off, the worker), access log ${quietLog(options.logLevel) ? 'off' : 'on'}.`,
    `Pinning: ${pin}.`,
    contentionLine(summaries),
    `Method: warm-up ${options.warmupMs / 1000} s per Node scenario (${options.nginxWarmupMs / 1000} s nginx), then ${options.rounds} interleaved rounds; each run starts the client, waits ${options.rampMs} ms, measures a ${options.measureMs / 1000} s window, then stops the client.`,
    ...(skipped.length > 0 ? ['', ...skipped] : []),
    ...failureLines(ctx.failures),
    '',
    '## Targets (issue 12; h2 ÷ http/1.1: issue 13), per Node major of the Node side',
    '',
    targetTable,
    '',
    ...kinds.flatMap((k) => [
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
    hopTable,
    '',
    ...(limitLines.length > 0 ? [`## What one core signs (CPU ${limits.cpus ?? 'any'}, servers idle)`, '', ...limitLines, ''] : []),
    'Columns: handshakes/s = handshakes in the window ÷ its length, median over rounds (full: counted by the server, nginx: its',
    'stub_status requests; resumed: connections the client completed). "≥": the client used ≥ 0.9 of its core in the median',
    "round, so the rate is a lower bound of the server's. **server µs/hs** = utime+stime from /proc of every process of the",
    'set-up (proxy primary + workers + key server; in-memory primary + workers; nginx; nginx + p11-kit server and its',
    'p11-kit-remote helpers) over the window ÷ handshakes in it: the figure to compare. "front + key holder" splits it. origin',
    "µs = the demo origin (the same for all, not in the server figure). client = the client's CPU per handshake (ab; for",
    "resumed, this bench's process) and its cores. server-side cores = set-up + origin. p50/p99 = per-connection time",
    '(connect + handshake + GET), median over rounds, mostly queueing at this concurrency. errors = ab failed requests +',
    'non-2xx + handshakes the server saw fail in the windows + resuming-client failures. check: full keyless = key server',
    'signatures ÷ (full + failed handshakes the proxy counted) over every run, idle to idle: ab abandons the connections in',
    'flight at SIGINT after their signature (1 = one signature per handshake; ✗ outside [full, full + failed]); resumed = tickets resumed / offered in the windows, and key server signs in them (must be 0).',
    `${CLEAN_ROUNDS_NOTE} rounds when at least 3`,
    'are (else all, marked †). Per-round figures for every window are in the JSON.',
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// Profiling run (--perf)

export interface PerfRow {
  readonly scenario: string;
  readonly handshakes: number;
  /** Sampled CPU of the recorded processes per handshake in the window (perf's own overhead included). */
  readonly sampledUsPerHandshake: number;
  readonly summary: PerfSummary;
}

export function perfMarkdown(rows: readonly PerfRow[], machine: MachineInfo, options: Options, date: string): string {
  const perHs = (r: PerfRow, pct: number) => fmt((r.sampledUsPerHandshake * pct) / 100, 0);
  return [
    `# handshake: where the server CPU goes (perf), ${date}`,
    '',
    `Command: \`${machine.commandLine}\``,
    `Node servers under \`node --perf-basic-prof\`, warmed up, then one ${options.measureMs / 1000} s window per scenario under`,
    `\`perf record -F ${options.perfHz} -g -p <server pids>\` (the set-up's processes: front and key holder).`,
    'On-CPU samples: a worker blocked in the keyless RPC costs nothing here. µs/hs = share × sampled CPU ÷ handshakes in the',
    'window; sampling adds a little overhead. "node" is V8 and OpenSSL (statically linked); JS functions are inclusive (children).',
    '',
    ...rows.flatMap((r) => [
      `## ${r.scenario}: ${fmt(r.sampledUsPerHandshake)} µs sampled per handshake (${r.handshakes} handshakes, ${r.summary.samples} samples)`,
      '',
      ...(
        [
          ['process, threads', r.summary.byProcess],
          ['binary', r.summary.byBinary.slice(0, 8)],
          ['binary / symbol (self)', r.summary.bySymbol.slice(0, 25)],
          ['JS function (inclusive)', r.summary.jsInclusive.slice(0, 30)],
        ] as const
      ).flatMap(([title, lines]) => [
        markdownTable(
          [title, 'share %', 'µs/hs'],
          lines.map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]),
          ['left', 'right', 'right'],
        ),
        '',
      ]),
    ]),
  ].join('\n');
}
