/**
 * The keep-alive bench's result: medians and spread per scenario (server × protocol), keyedge ÷ nginx and ÷ caddy per
 * protocol, the `summary` rows the suite reads, the proxy's --cpu-prof top functions, as JSON and Markdown (columns:
 * bench/README.md, "keepalive").
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { summarizeProfile } from '../harness/cpuprofile.js';
import { topFunctionsTable } from '../harness/profile-table.js';
import { type Column, columnTable, fmt, machineLines, minMax, plural, rangeText, specTable } from '../harness/report.js';
import { CLEAN_ROUNDS_NOTE, failureLines, type MeasuringBench, overRounds, rateCell, roundColumns } from '../harness/runner.js';
import { shownCommand } from '../harness/spawn.js';
import { round } from '../harness/stats.js';
import { benchRow, skippedBenchRow } from '../harness/summary.js';
import { autocannonArgs, clientSeconds, h2loadArgs } from './clients.js';
import { ORIGIN_POOL, SERVER_NAME } from './lab.js';
import type { KeepaliveScenario, Lab, Options, RunResult } from './main.js';

/** A scenario's medians and spread over its clean rounds (harness/runner.ts); errors over every run. */
function summarize(server: string, label: string, all: readonly RunResult[], serverCpuCount: number, failedRounds: number) {
  const { med, spreadOf, common } = overRounds(all, (r) => r.window, serverCpuCount, failedRounds);
  const sum = (f: (r: RunResult) => number) => all.reduce((n, r) => n + f(r), 0);
  return {
    server,
    label,
    requestsPerSecond: spreadOf((r) => r.window.requestsPerSecond),
    serverUs: spreadOf((r) => r.window.serverUs),
    proxyUs: med((r) => r.window.proxyUs),
    keyserverUs: server.startsWith('keyedge') ? med((r) => r.window.serverUs - r.window.proxyUs) : undefined,
    originUs: med((r) => r.window.originUs),
    clientUs: med((r) => r.window.clientUs),
    p50Ms: med((r) => r.client.p50Ms),
    p99Ms: med((r) => r.client.p99Ms),
    ...common,
    errors: { clientErrors: sum((r) => r.client.errors), timeouts: sum((r) => r.client.timeouts), non2xx: sum((r) => r.client.non2xx) },
  };
}

type ServerSummary = ReturnType<typeof summarize>;
type Comparison = NonNullable<ReturnType<typeof compareTo>>;

const errorCount = (s: ServerSummary) => s.errors.clientErrors + s.errors.timeouts + s.errors.non2xx;

/** keyedge's scenario against another's of the same protocol: server µs/request ratio (< 1: keyedge spends less), also per round. */
function compareTo(summaries: readonly ServerSummary[], keyedge: string, other: string) {
  const [k, o] = [keyedge, other].map((name) => summaries.find((s) => s.server === name));
  if (k === undefined || o === undefined) return undefined;
  const perRound = k.perRound.slice(0, o.perRound.length).map((r, i) => round(r.window.serverUs / o.perRound[i]!.window.serverUs, 3));
  const rateRatio = k.requestsPerSecond.median / o.requestsPerSecond.median;
  return { keyedge, other, cpuRatio: k.serverUs.median / o.serverUs.median, cpuRatioPerRound: perRound, rateRatio };
}

/** The suite's row (harness/summary.ts). */
function summaryRow(s: ServerSummary) {
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

const met = (ok: boolean) => (ok ? 'met' : 'missed');
/** Below caddy's CPU per request; ≤ 2.0 × nginx's (issue 12 over HTTP/1.1, issue 13 over HTTP/2). */
const target = (c: Comparison) =>
  c.other.startsWith('caddy') ? `below caddy: ${met(c.cpuRatio < 1)}` : `≤ 2.0 (issue ${c.other === 'nginx' ? 12 : 13}): ${met(c.cpuRatio <= 2)}`;

const COMPARISON_COLUMNS: readonly Column<Comparison>[] = [
  ['keyedge vs', 'left', (c) => `${c.keyedge} vs ${c.other}`],
  ['CPU/request ratio (keyedge ÷ other)', 'right', (c) => `**${fmt(c.cpuRatio, 2)}**`],
  ['per round (min–max)', 'right', (c) => minMax(c.cpuRatioPerRound, 2)],
  ['requests/s ratio', 'right', (c) => fmt(c.rateRatio, 2)],
  ['target', 'left', target],
];

/** The .cpuprofile files the proxy wrote: the busiest process's (a worker's) top functions. */
function readProfiles(dir: string, requests: number) {
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')) : [];
  const profiles = files.map((file) => ({ file, summary: summarizeProfile(join(dir, file), process.cwd()) }));
  const busiest = profiles.sort((a, b) => b.summary.busyUs - a.summary.busyUs).slice(0, 1);
  return busiest.map(({ file, summary }) => ({ file, busyUs: summary.busyUs, requests, top: summary.functions.slice(0, 25) }));
}

type Report = MeasuringBench<Options, Lab, KeepaliveScenario, RunResult>['report'];

export const report: Report = async ({ lab, skipped, versions, answered }, o, scenarios, measured, { machine, date }) => {
  const { results, failures } = measured;
  // The client commands as a measuring run starts them, the port as a placeholder.
  const client = { serverName: SERVER_NAME, durationSec: clientSeconds(o.rampMs, o.measureMs), cpus: undefined };
  const h1 = autocannonArgs({ ...client, url: 'https://127.0.0.1:0/', connections: o.connections });
  const h2 = h2loadArgs({ ...client, port: 0, connections: o['h2-connections'], streams: o['h2-streams'] });
  const show = (program: string, args: string[]) => shownCommand(o.clientCpus, program, args, [[/:0\b/g, ':PORT']]);
  const commands = { h1: show('node_modules/.bin/autocannon', h1), h2: show('h2load', h2) };
  // Stop the proxy first when profiling: node writes --cpu-prof files at exit. The profile covers every request it answered.
  if (o.cpuProfDir !== undefined) await lab.servers.get('keyedge')?.stop(15_000);
  const failed = (name: string) => failures.filter((f) => f.scenario === name && f.phase === 'measure').length;
  const summaries = scenarios.map((s) => summarize(s.name, s.label, results.get(s.name) ?? [], o.serverCpuCount, failed(s.name)));
  const comparisons = ['', '-h2'].flatMap((p) => (['caddy', 'nginx'] as const).flatMap((other) => compareTo(summaries, `keyedge${p}`, `${other}${p}`) ?? []));
  const profiles = o.cpuProfDir === undefined ? [] : readProfiles(o.cpuProfDir, (answered.get('keyedge') ?? 0) + (answered.get('keyedge-h2') ?? 0));
  const { connections, 'h2-connections': h2Connections, 'h2-streams': h2Streams, clientCpus, serverCpus, workers, 'log-level': logLevel, accessLog } = o;
  const json = {
    versions,
    client: { command: commands.h1, connections, cpus: clientCpus, h2: { command: commands.h2, connections: h2Connections, streams: h2Streams } },
    servers: { workers, cpus: serverCpus, logLevel, accessLog, originPool: ORIGIN_POOL },
    method: measured.method(),
    failedRounds: failures,
    configs: lab.configs,
    comparisons,
    summary: [...summaries.map(summaryRow), ...[...skipped].map(([server, reason]) => skippedBenchRow('request', server, server, reason))],
    scenarios: summaries,
    profiles,
  };
  const skippedRows = [...skipped].map(([server, reason]) => [`${server} (skipped: ${reason})`, '–', '', '–', ...Array<string>(9).fill('')]);
  const pin = serverCpus === undefined ? 'none' : `servers, key server and origin on CPU ${serverCpus}; clients and this bench on CPU ${clientCpus}`;
  const profileSection = profiles.flatMap((p) => [
    `## Proxy CPU profile: ${p.file} (${fmt(p.busyUs / 1000)} ms sampled busy over ${fmt(p.requests)} requests, warm-up and start-up included; V8 samples the main thread by wall clock, so time the core was taken away counts too: use the shares)`,
    '',
    topFunctionsTable(p.top, { top: p.top.length, by: 'selfUs', unit: 'µs/request', per: (us) => us / p.requests, decimals: 2 }),
    '',
  ]);
  const tools = Object.entries(versions).map(([k, v]) => `${k} ${v ?? '?'}`);
  const h2Line = `HTTP/2 (the -h2 rows): \`${commands.h2}\` (${h2Connections} connections, ${h2Streams} streams in flight on each; nginx \`listen ... ssl http2\`).`;
  const markdown = [
    `# keepalive, ${date}${o.quick ? ' (quick)' : ''}`,
    '',
    ...machineLines(machine, tools.join(', ')),
    `Client: \`${commands.h1}\` (HTTP/1.1 keep-alive, ${connections} connections, one request in flight each; GET / of a 1 KiB page over TLS 1.3, ECDSA P-256 certificate).`,
    ...(o.protocols.includes('h2') ? [h2Line] : []),
    `Servers, each from its config in the temp dir (in the JSON): keyedge proxy + key server (keyless, ${plural(workers, 'worker')}, log level ${logLevel}); nginx (1 worker); caddy; the origin serves the demo page and counts requests. Each keeps up to ${ORIGIN_POOL} keep-alive connections to the origin${accessLog ? ' and writes one access-log line per request to a file' : '; no access logs'}.`,
    `Pinning: ${pin}.`,
    `Method: warm-up ${o.warmupMs / 1000} s per server, then ${o.rounds} interleaved rounds; each run starts the client, waits for traffic and ${o.rampMs} ms more, then measures a ${o.measureMs / 1000} s window (requests counted at the origin).`,
    ...failureLines(failures),
    '',
    columnTable(summaries, SERVER_COLUMNS, skippedRows),
    '',
    '## keyedge against the others (server CPU per proxied request)',
    '',
    specTable(comparisons, COMPARISON_COLUMNS, '(needs keyedge and at least one of nginx, caddy)'),
    '',
    'requests/s: served by the origin in the window ("≥": the client used ≥ 0.9 of its core). **server µs/request**: CPU',
    "of every server process (keyedge: proxy + workers + key server) ÷ requests; origin and client are not in it. p50/p99: the client's",
    `latency over its whole run (h2load: mean / max). ${CLEAN_ROUNDS_NOTE} rounds when at least 3 are (else all, marked †).`,
    '',
    ...profileSection,
  ].join('\n');
  return { json, markdown, errors: summaries.reduce((n, s) => n + errorCount(s), 0), what: 'requests' };
};
