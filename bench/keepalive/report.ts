/**
 * The keep-alive bench's figures and Markdown: medians and spread per scenario (server × protocol), keyedge ÷ nginx
 * and ÷ caddy per protocol, the `summary` rows the suite reads, and the proxy's --cpu-prof top functions.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CLEAN_ROUNDS_NOTE, failureLines, overRounds, rateCell, roundColumns, SATURATED_CORES } from '../harness/runner.js';
import { summarizeProfile } from '../harness/cpuprofile.js';
import { topFunctionsTable } from '../harness/profile-table.js';
import type { MachineInfo } from '../harness/report.js';
import { type Column, columnTable, fmt, machineLines, minMax, rangeText, specTable } from '../harness/report.js';
import type { RoundFailure } from '../harness/rounds.js';
import { round } from '../harness/stats.js';
import { benchRow } from '../harness/summary.js';
import { ORIGIN_POOL } from './lab.js';
import type { Options } from './main.js';
import type { RunResult } from './measure.js';

type ServerSummary = ReturnType<typeof summarize>;
type Comparison = NonNullable<ReturnType<typeof compareTo>>;
type ProfileReport = ReturnType<typeof readProfiles>[number];

/** A scenario's medians and spread over its clean rounds (harness/runner.ts); errors over every run. */
export function summarize(server: string, label: string, all: readonly RunResult[], serverCpuCount: number, failedRounds = 0) {
  const { med, spreadOf, common } = overRounds(all, (r) => r.window, serverCpuCount, failedRounds);
  const sum = (f: (r: RunResult) => number) => all.reduce((n, r) => n + f(r), 0);
  return {
    server,
    label,
    requestsPerSecond: spreadOf((r) => r.window.requestsPerSecond),
    serverUs: spreadOf((r) => r.window.serverUs),
    proxyUs: med((r) => r.window.proxyUs),
    keyserverUs: server.startsWith('keyedge') ? med((r) => r.window.keyserverUs ?? Number.NaN) : undefined,
    originUs: med((r) => r.window.originUs),
    clientUs: med((r) => r.window.clientUs),
    p50Ms: med((r) => r.client.p50Ms),
    p99Ms: med((r) => r.client.p99Ms),
    ...common,
    errors: { clientErrors: sum((r) => r.client.errors), timeouts: sum((r) => r.client.timeouts), non2xx: sum((r) => r.client.non2xx) },
  };
}

export const errorCount = (s: ServerSummary) => s.errors.clientErrors + s.errors.timeouts + s.errors.non2xx;

/** keyedge's scenario against another's of the same protocol: server µs/request ratio (< 1: keyedge spends less), also per round. */
export function compareTo(summaries: readonly ServerSummary[], keyedge: string, other: string) {
  const [k, o] = [keyedge, other].map((name) => summaries.find((s) => s.server === name));
  if (k === undefined || o === undefined) return undefined;
  const perRound = k.perRound.slice(0, o.perRound.length).map((r, i) => round(r.window.serverUs / o.perRound[i]!.window.serverUs, 3));
  const rateRatio = k.requestsPerSecond.median / o.requestsPerSecond.median;
  return { keyedge, other, cpuRatio: k.serverUs.median / o.serverUs.median, cpuRatioPerRound: perRound, rateRatio };
}

/** The suite's row (harness/summary.ts). */
export function summaryRow(s: ServerSummary) {
  const { server: scenario, label, p50Ms, p99Ms, clientSaturated, otherCores } = s;
  const rate = { rate: s.requestsPerSecond.median, spreadPct: s.requestsPerSecond.spreadPct, serverCpuUs: s.serverUs.median };
  return benchRow('request', { scenario, label, ...rate, p50Ms, p99Ms, clientSaturated, errors: errorCount(s), otherCores });
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

const COMPARISON_COLUMNS: readonly Column<Comparison>[] = [
  ['keyedge vs', 'left', (c) => `${c.keyedge} vs ${c.other}`],
  ['CPU/request ratio (keyedge ÷ other)', 'right', (c) => `**${fmt(c.cpuRatio, 2)}**`],
  ['per round (min–max)', 'right', (c) => minMax(c.cpuRatioPerRound, 2)],
  ['requests/s ratio', 'right', (c) => fmt(c.rateRatio, 2)],
  ['target', 'left', (c) => (c.other === 'caddy' ? (c.cpuRatio < 1 ? 'met: below caddy' : 'missed: not below caddy') : target(c))],
];
const target = (c: Comparison) => `≤ 2.0 (issue ${c.other === 'nginx' ? 12 : 13}): ${c.cpuRatio <= 2 ? 'met' : 'missed'}`;

export interface ReportContext {
  readonly machine: MachineInfo;
  readonly options: Options;
  readonly date: string;
  readonly clientCommand: string;
  readonly h2Command: string;
  readonly commands: Record<string, string>;
  readonly versions: Record<string, string | undefined>;
  readonly failures: readonly RoundFailure[];
}

export function markdownReport(
  ctx: ReportContext,
  summaries: readonly ServerSummary[],
  skipped: ReadonlyMap<string, string>,
  comparisons: readonly Comparison[],
  profiles: readonly ProfileReport[],
): string {
  const { options: o, commands } = ctx;
  const skippedRows = [...skipped].map(([server, reason]) => [`${server} (skipped: ${reason})`, '–', '', '–', '', '', '', '', '', '', '', '', '']);
  const pin =
    o.serverCpus === undefined
      ? 'none (scheduler)'
      : `servers (proxy, key server, nginx, caddy, origin) on CPU ${o.serverCpus}; autocannon and this bench on CPU ${o.clientCpus}`;
  const profileSection = profiles.flatMap((p) => [
    `## Proxy CPU profile: ${p.file} (${fmt(p.busyUs / 1000)} ms sampled busy over ${fmt(p.requests)} requests, warm-up and start-up included; V8 samples the main thread by wall clock, so time the core was taken away counts too: use the shares)`,
    '',
    topFunctionsTable(p.top, {
      top: p.top.length,
      by: 'selfUs',
      unit: 'µs/request',
      per: (us) => (p.requests > 0 ? us / p.requests : Number.NaN),
      decimals: 2,
    }),
    '',
  ]);
  const versions = Object.entries(ctx.versions).map(([k, v]) => `${k} ${v ?? '?'}`);
  const h2 = `HTTP/2 (the -h2 rows): \`${ctx.h2Command}\` (${o.h2Connections} connections, ${o.h2Streams} streams in flight on each; nginx \`listen ... ssl http2\`).`;
  return [
    `# keepalive, ${ctx.date}${o.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(ctx.machine, versions.join(', ')),
    `Client: \`${ctx.clientCommand}\` (HTTP/1.1 keep-alive, ${o.connections} connections, one request in flight each; GET / of a 1 KiB page over TLS 1.3, ECDSA P-256 certificate).`,
    ...(o.protocols.includes('h2') ? [h2] : []),
    `Servers: keyedge \`${commands.keyedge}\` + \`${commands.keyserver}\` (keyless, ${o.workers} worker${o.workers === 1 ? '' : 's'}, log level ${o.logLevel}); nginx \`${commands.nginx}\` (1 worker); caddy \`${commands.caddy}\`; origin \`${commands.origin}\` (the demo page). Each keeps up to ${ORIGIN_POOL} keep-alive connections to the origin${o.accessLog ? ' and writes one access-log line per request to a file' : '; no access logs'}.`,
    `Pinning: ${pin}.`,
    `Method: warm-up ${o.warmupMs / 1000} s per server, then ${o.rounds} interleaved rounds; each run starts autocannon, waits for traffic and ${o.rampMs} ms more, then measures a ${o.measureMs / 1000} s window (requests counted at the origin).`,
    ...failureLines(ctx.failures),
    '',
    columnTable(summaries, SERVER_COLUMNS, skippedRows),
    '',
    '## keyedge against the others (server CPU per proxied request)',
    '',
    specTable(comparisons, COMPARISON_COLUMNS, '(needs keyedge and at least one of nginx, caddy)'),
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

/** The .cpuprofile files the proxy wrote: the busiest process's (a worker's) top functions. */
export function readProfiles(dir: string, requests: number) {
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')) : [];
  const profiles = files.map((file) => ({ file, summary: summarizeProfile(join(dir, file), process.cwd()) }));
  const busiest = profiles.sort((a, b) => b.summary.busyUs - a.summary.busyUs).slice(0, 1);
  return busiest.map(({ file, summary }) => ({ file, busyUs: summary.busyUs, requests, top: summary.functions.slice(0, 25) }));
}
