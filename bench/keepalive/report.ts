/**
 * The keep-alive bench's figures and Markdown: medians and spread per
 * scenario (server × protocol), keyedge ÷ nginx and ÷ caddy per protocol, the
 * `summary` rows the suite reads, and the proxy's --cpu-prof top functions.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { summarizeProfile, type FunctionCost } from '../harness/cpuprofile.js';
import type { MachineInfo } from '../harness/machine.js';
import { type Column, columnTable, fmt, machineLines, markdownTable, minMax, rangeText, specTable } from '../harness/report.js';
import { round } from '../harness/stats.js';
import { ORIGIN_POOL } from './lab.js';
import { CLEAN_ROUNDS_NOTE, failureLines, overRounds, rateCell, roundColumns, SATURATED_CORES } from '../harness/bench.js';
import type { RoundFailure } from '../harness/rounds.js';
import type { Options } from './main.js';
import type { RunResult, WindowResult } from './measure.js';
import { benchRow } from '../harness/summary.js';

export type ServerSummary = ReturnType<typeof summarize>;

/** A scenario's medians and spread over its clean rounds (harness/bench.ts); errors over every run. */
export function summarize(server: string, label: string, all: readonly RunResult[], serverCpuCount: number, failedRounds = 0) {
  const { med, spreadOf, common } = overRounds(all, (r) => r.window, serverCpuCount, failedRounds);
  const w = (f: (r: WindowResult) => number) => med((r) => f(r.window));
  const sum = (f: (r: RunResult) => number) => all.reduce((n, r) => n + f(r), 0);
  return {
    server,
    label,
    requestsPerSecond: spreadOf((r) => r.window.requestsPerSecond),
    serverUs: spreadOf((r) => r.window.serverUs),
    proxyUs: w((x) => x.proxyUs),
    keyserverUs: server.startsWith('keyedge') ? w((x) => x.keyserverUs ?? Number.NaN) : undefined,
    originUs: w((x) => x.originUs),
    clientUs: w((x) => x.clientUs),
    p50Ms: med((r) => r.client.p50Ms),
    p99Ms: med((r) => r.client.p99Ms),
    ...common,
    errors: { clientErrors: sum((r) => r.client.errors), timeouts: sum((r) => r.client.timeouts), non2xx: sum((r) => r.client.non2xx) },
  };
}

export interface Comparison {
  /** keyedge's scenario and the other's: the same protocol. */
  readonly keyedge: string;
  readonly other: string;
  /** keyedge server µs/request ÷ the other's (medians): < 1 means keyedge spends less CPU per request. */
  readonly cpuRatio: number;
  /** The same per round (neighbours in time), min and max. */
  readonly cpuRatioPerRound: readonly number[];
  readonly rateRatio: number;
}

export function compareTo(summaries: readonly ServerSummary[], keyedge: string, other: string): Comparison | undefined {
  const k = summaries.find((s) => s.server === keyedge);
  const o = summaries.find((s) => s.server === other);
  if (k === undefined || o === undefined) return undefined;
  const n = Math.min(k.perRound.length, o.perRound.length);
  return {
    keyedge,
    other,
    cpuRatio: k.serverUs.median / o.serverUs.median,
    cpuRatioPerRound: Array.from({ length: n }, (_, i) => round(k.perRound[i]!.window.serverUs / o.perRound[i]!.window.serverUs, 3)),
    rateRatio: k.requestsPerSecond.median / o.requestsPerSecond.median,
  };
}

/** The suite's row (harness/summary.ts). */
export function summaryRow(s: ServerSummary) {
  return benchRow('request', {
    scenario: s.server,
    label: s.label,
    rate: s.requestsPerSecond.median,
    serverCpuUs: s.serverUs.median,
    p50Ms: s.p50Ms,
    p99Ms: s.p99Ms,
    clientSaturated: s.clientSaturated,
    errors: s.errors.clientErrors + s.errors.timeouts + s.errors.non2xx,
    spreadPct: s.requestsPerSecond.spreadPct,
    otherCores: s.otherCores,
  });
}

export interface ProfileReport {
  readonly file: string;
  readonly busyUs: number;
  readonly requests: number;
  readonly top: readonly FunctionCost[];
}

const SERVER_COLUMNS: readonly Column<ServerSummary>[] = [
  ['Server', 'left', (s) => s.label],
  ['requests/s', 'right', (s) => rateCell(s, s.requestsPerSecond)],
  ['min–max (spread)', 'right', (s) => rangeText(s.requestsPerSecond)],
  ['server µs/request', 'right', (s) => `**${fmt(s.serverUs.median, 1)}**`],
  ['min–max (spread)', 'right', (s) => rangeText(s.serverUs, 1)],
  ['proxy + key server µs', 'right', (s) => (s.keyserverUs === undefined ? '–' : `${fmt(s.proxyUs, 1)} + ${fmt(s.keyserverUs, 1)}`)],
  ['origin µs', 'right', (s) => fmt(s.originUs, 1)],
  ['client µs (cores)', 'right', (s) => `${fmt(s.clientUs, 1)} (${fmt(s.clientCores, 2)}${s.clientSaturated ? ', saturated' : ''})`],
  ['server-side cores', 'right', (s) => `${fmt(s.serverSideCores, 2)}${s.serverSaturated ? ' (saturated)' : ''}`],
  ['p50 / p99 ms', 'right', (s) => `${fmt(s.p50Ms)} / ${fmt(s.p99Ms)}`],
  ['errors / timeouts / non-2xx', 'right', (s) => `${s.errors.clientErrors} / ${s.errors.timeouts} / ${s.errors.non2xx}`],
  ...roundColumns<ServerSummary>('machine busy / others (cores)'),
];

export function markdownReport(
  ctx: {
    machine: MachineInfo;
    options: Options;
    date: string;
    clientCommand: string;
    h2Command: string;
    commands: Record<string, string>;
    versions: Record<string, string | undefined>;
    failures: readonly RoundFailure[];
  },
  summaries: readonly ServerSummary[],
  skipped: ReadonlyMap<string, string>,
  comparisons: readonly Comparison[],
  profiles: readonly ProfileReport[],
): string {
  const { machine, options } = ctx;
  const table = columnTable(
    summaries,
    SERVER_COLUMNS,
    [...skipped].map(([server, reason]) => [`${server} (skipped: ${reason})`, '–', '', '–', '', '', '', '', '', '', '', '', '']),
  );
  const target = (c: Comparison) =>
    c.other === 'caddy'
      ? c.cpuRatio < 1
        ? 'met: below caddy'
        : 'missed: not below caddy'
      : `≤ 2.0 (issue ${c.other === 'nginx' ? 12 : 13}): ${c.cpuRatio <= 2 ? 'met' : 'missed'}`;
  const cmpTable = specTable(
    comparisons,
    [
      ['keyedge vs', 'left', (c) => `${c.keyedge} vs ${c.other}`],
      ['CPU/request ratio (keyedge ÷ other)', 'right', (c) => `**${fmt(c.cpuRatio, 2)}**`],
      ['per round (min–max)', 'right', (c) => minMax(c.cpuRatioPerRound, 2)],
      ['requests/s ratio', 'right', (c) => fmt(c.rateRatio, 2)],
      ['target', 'left', target],
    ],
    '(needs keyedge and at least one of nginx, caddy)',
  );
  const pin =
    options.serverCpus === undefined
      ? 'none (scheduler)'
      : `servers (proxy, key server, nginx, caddy, origin) on CPU ${options.serverCpus}; autocannon and this bench on CPU ${options.clientCpus}`;
  const profileSection = profiles.flatMap((p) => [
    `## Proxy CPU profile: ${p.file} (${fmt(p.busyUs / 1000)} ms sampled busy over ${fmt(p.requests)} requests, warm-up and start-up included; V8 samples the main thread by wall clock, so time the core was taken away counts too: use the shares)`,
    '',
    markdownTable(
      ['function (self)', 'self %', 'inclusive %', 'self µs/request'],
      p.top.map((f) => [f.function, fmt(f.selfPct, 1), fmt(f.inclusivePct, 1), fmt(p.requests > 0 ? f.selfUs / p.requests : Number.NaN, 2)]),
      ['left', 'right', 'right', 'right'],
    ),
    '',
  ]);
  return [
    `# keepalive, ${ctx.date}${options.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(
      machine,
      Object.entries(ctx.versions)
        .map(([k, v]) => `${k} ${v ?? '?'}`)
        .join(', '),
    ),
    `Client: \`${ctx.clientCommand}\` (HTTP/1.1 keep-alive, ${options.connections} connections, one request in flight each; GET / of a 1 KiB page over TLS 1.3, ECDSA P-256 certificate).`,
    ...(options.protocols.includes('h2')
      ? [
          `HTTP/2 (the -h2 rows): \`${ctx.h2Command}\` (${options.h2Connections} connections, ${options.h2Streams} streams in flight on each; nginx \`listen ... ssl http2\`).`,
        ]
      : []),
    `Servers: keyedge \`${ctx.commands.keyedge}\` + \`${ctx.commands.keyserver}\` (keyless, ${options.workers} worker${options.workers === 1 ? '' : 's'}, log level ${options.logLevel}); nginx \`${ctx.commands.nginx}\` (1 worker); caddy \`${ctx.commands.caddy}\`; origin \`${ctx.commands.origin}\` (the demo page). Each keeps up to ${ORIGIN_POOL} keep-alive connections to the origin${options.accessLog ? ' and writes one access-log line per request to a file' : '; no access logs'}.`,
    `Pinning: ${pin}.`,
    `Method: warm-up ${options.warmupMs / 1000} s per server, then ${options.rounds} interleaved rounds; each run starts autocannon, waits for traffic and ${options.rampMs} ms more, then measures a ${options.measureMs / 1000} s window (requests counted at the origin).`,
    ...failureLines(ctx.failures),
    '',
    table,
    '',
    '## keyedge against the others (server CPU per proxied request)',
    '',
    cmpTable,
    '',
    'Columns: requests/s = requests the origin served in the window ÷ its length, median over rounds ("≥": autocannon used',
    `≥ ${SATURATED_CORES} of its core, so the rate is what one client core could drive). **server µs/request** = utime+stime from /proc of`,
    'every server process (keyedge: proxy primary + workers + key server; nginx: master + worker; caddy) over the window ÷',
    "requests in it: the figure to compare. origin µs = the origin (same for all, not in the server figure). client = autocannon's",
    "CPU per request (its cores in brackets). server-side cores = server + origin. p50/p99 = autocannon's latency over its whole",
    'run (ms, whole-millisecond resolution), median over rounds. errors = autocannon connection errors / timeouts / non-2xx,',
    `summed over all rounds. ${CLEAN_ROUNDS_NOTE}`,
    "rounds when at least 3 are (else all, marked †). Every window's figures are in the JSON.",
    '',
    ...profileSection,
  ].join('\n');
}

/** Reads the .cpuprofile files the proxy wrote and keeps the busiest process's top functions (a worker). */
export function readProfiles(dir: string, requests: number): ProfileReport[] {
  if (!existsSync(dir)) return [];
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const summaries = files.map((file) => ({ file, summary: summarizeProfile(join(dir, file), process.cwd()) }));
  summaries.sort((a, b) => b.summary.busyUs - a.summary.busyUs);
  return summaries.slice(0, 1).map(({ file, summary }) => ({ file, busyUs: summary.busyUs, requests, top: summary.functions.slice(0, 25) }));
}
