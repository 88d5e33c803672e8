/**
 * Benchmark: keep-alive proxied request throughput and server CPU per request
 * for a 1 KiB page over HTTPS (TLS 1.3, ECDSA P-256), the keyless proxy next
 * to nginx and caddy proxying the same origin, in one run.
 *
 *   keyedge  `keyedge proxy` (node:cluster, N workers) + `keyedge keyserver`
 *            (keyless: the handshakes sign through it; with keep-alive there
 *            are only the connections' first ones)
 *   nginx    one worker, upstream keep-alive pool, key file (skipped when
 *            nginx is missing and cannot be installed)
 *   caddy    reverse_proxy, certificate from files, admin off (likewise)
 *
 * The client is autocannon's CLI (bench/lib/autocannon.ts) in its own process
 * pinned to the client CPU: 64 keep-alive connections, one request in flight
 * each. Requests in a window are counted at the origin (every proxied request
 * reaches it once), so all three servers are counted alike. Server CPU =
 * utime + stime from /proc of every server process (keyedge: primary, workers
 * and key server; nginx: master and worker; caddy) over the window ÷ those
 * requests; the origin's CPU is reported apart. Warm-up, then interleaved
 * rounds (bench/lib/rounds.ts); medians and spread. See bench/README.md,
 * section "keepalive".
 *
 * Usage: node dist/bench/keepalive.js [--quick] [options]   (--help)
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { findOrInstall, versionOf } from '../harness/install.js';
import { numberOption } from '../harness/cli.js';
import { autocannonArgs, autocannonVersion, startAutocannon, type AutocannonResult } from './autocannon.js';
import { summarizeProfile, type FunctionCost } from '../harness/cpuprofile.js';
import { onlineCpus, processTree, setAffinity, snapshot, type TrackedGroup, usageBetween, type WindowUsage } from '../harness/procs.js';
import { KeepaliveLab, ORIGIN_POOL, SERVER_NAME, type ServerId } from './lab.js';
import { describeMachine } from '../harness/machine.js';
import { QuietGate } from '../harness/quiet.js';
import { dateStamp, fmt, markdownTable, writeReport } from '../harness/report.js';
import { runRounds, type RunContext, type Scenario, sleep } from '../harness/rounds.js';
import { median, round, spread, type Spread } from '../harness/stats.js';
import { installInterrupt, runBench } from '../harness/main.js';

/** A window during which other processes used more than this many cores counts as contended. */
const CONTENDED_CORES = 0.25;
/** A process using at least this share of a core during a window counts as saturated. */
const SATURATED_CORES = 0.9;
const SERVER_IDS: readonly ServerId[] = ['keyedge', 'nginx', 'caddy'];

const USAGE = `Usage: node dist/bench/keepalive.js [options]

  --quick              3 rounds of 2 s, 1.5 s warm-up per server (about a minute)
  --out DIR            where to write <date>-keepalive.{json,md} (quick: -quick)
                       (default bench/results)
  --rounds N           measuring rounds (default 5; quick 3)
  --measure SEC        seconds per measurement window (default 5; quick 2)
  --warmup SEC         warm-up seconds per server (default 5, for the JIT; quick 1.5)
  --connections N      autocannon -c: keep-alive connections (default 64)
  --workers N          workers of the keyless proxy (default 1: the servers get one core)
  --servers LIST       keyedge,nginx,caddy (default all; keyedge alone needs only the product)
  --no-install         never apt-get install nginx or caddy (missing: skipped)
  --pin auto|none      auto (default, 2+ CPUs): servers on CPU 0..n-2, autocannon and
                       this bench on the last CPU; none: leave it to the scheduler
  --server-cpus LIST   taskset CPU list for the servers (overrides --pin)
  --client-cpus LIST   taskset CPU list for autocannon and this bench (overrides --pin)
  --log-level LEVEL    the proxy's log level (default info, the product's default: one
                       access-log line per request, to a file); nginx and caddy write an
                       access log too unless LEVEL is warn or above
  --quiet-wait SEC     before each measurement wait (up to SEC in total per run) for
                       other processes to use < ${CONTENDED_CORES} cores (default 60; quick 0)
  --cpu-prof DIR       run the proxy (primary and workers) under node --cpu-prof, write the
                       profiles to DIR and the top functions per request into the report
  --keep-temp          keep the temp directory (token, certificates, configs, logs)
  --help
`;

interface Options {
  readonly quick: boolean;
  readonly out: string;
  readonly rounds: number;
  readonly measureMs: number;
  readonly warmupMs: number;
  readonly rampMs: number;
  readonly settleMs: number;
  readonly connections: number;
  readonly workers: number;
  readonly servers: readonly ServerId[];
  readonly install: boolean;
  readonly serverCpus: string | undefined;
  readonly clientCpus: string | undefined;
  readonly logLevel: string;
  readonly accessLog: boolean;
  readonly quietBudgetMs: number;
  readonly cpuProfDir: string | undefined;
  readonly keepTemp: boolean;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      out: { type: 'string', default: 'bench/results' },
      rounds: { type: 'string' },
      measure: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string', default: '64' },
      workers: { type: 'string', default: '1' },
      servers: { type: 'string', default: SERVER_IDS.join(',') },
      'no-install': { type: 'boolean', default: false },
      pin: { type: 'string', default: 'auto' },
      'server-cpus': { type: 'string' },
      'client-cpus': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      'quiet-wait': { type: 'string' },
      'cpu-prof': { type: 'string' },
      'keep-temp': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  const num = numberOption;
  const quick = values.quick;
  const servers = values.servers.split(',').map((s) => {
    if (!(SERVER_IDS as readonly string[]).includes(s)) throw new Error(`--servers takes ${SERVER_IDS.join(', ')}; got '${s}'`);
    return s as ServerId;
  });
  if (values.pin !== 'auto' && values.pin !== 'none') throw new Error(`--pin takes auto or none, got '${values.pin}'`);
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  if (!levels.includes(values['log-level'])) throw new Error(`--log-level takes ${levels.join(', ')}; got '${values['log-level']}'`);
  const cpus = onlineCpus();
  const auto = values.pin === 'auto' && cpus.length >= 2;
  return {
    quick,
    out: values.out,
    rounds: Math.round(num(values.rounds, '--rounds', quick ? 3 : 5, 1)),
    measureMs: num(values.measure, '--measure', quick ? 2 : 5, 0.5) * 1000,
    warmupMs: num(values.warmup, '--warmup', quick ? 1.5 : 5, 0) * 1000,
    rampMs: quick ? 500 : 1000,
    settleMs: quick ? 150 : 300,
    connections: Math.round(num(values.connections, '--connections', 64, 1)),
    workers: Math.round(num(values.workers, '--workers', 1, 1)),
    servers: [...new Set(servers)],
    install: !values['no-install'],
    serverCpus: values['server-cpus'] ?? (auto ? cpus.slice(0, -1).join(',') : undefined),
    clientCpus: values['client-cpus'] ?? (auto ? String(cpus[cpus.length - 1]) : undefined),
    logLevel: values['log-level'],
    accessLog: levels.indexOf(values['log-level']) <= levels.indexOf('info'),
    quietBudgetMs: num(values['quiet-wait'], '--quiet-wait', quick ? 0 : 60, 0) * 1000,
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']),
    keepTemp: values['keep-temp'],
  };
}

// ---------------------------------------------------------------------------
// One run of one server

interface WindowResult {
  readonly seconds: number;
  /** Requests the origin served in the window. */
  readonly requests: number;
  readonly requestsPerSecond: number;
  /** CPU µs per request of the server's processes (keyedge: proxy + key server). */
  readonly serverUs: number;
  readonly proxyUs: number;
  /** keyedge only: the key server's share (≈ 0: keep-alive connections sign once, at their handshake). */
  readonly keyserverUs: number | undefined;
  readonly originUs: number;
  readonly clientUs: number;
  readonly clientCores: number;
  /** Server + origin, in cores. */
  readonly serverSideCores: number;
  readonly machineBusyCores: number;
  /** Cores used by processes that are neither ours nor this bench. */
  readonly otherCores: number;
  readonly usage: WindowUsage;
}

interface RunResult {
  readonly window: WindowResult;
  /** autocannon's own report over its whole run (ramp-up included). */
  readonly client: AutocannonResult;
}

interface Env {
  readonly lab: KeepaliveLab;
  readonly options: Options;
}

function serverRoots(lab: KeepaliveLab, server: ServerId): { proxy: number[]; keyserver: number[] } {
  const pid = lab.servers.get(server)?.pid;
  return { proxy: pid === undefined ? [] : [pid], keyserver: server === 'keyedge' && lab.keyserver !== undefined ? [lab.keyserver.pid] : [] };
}

/** Polls the origin's counter until requests flow (autocannon's start-up is a few hundred ms of Node loading). */
async function waitForTraffic(lab: KeepaliveLab, before: number, isDead: () => boolean, signal: AbortSignal | undefined): Promise<void> {
  const started = Date.now();
  for (;;) {
    if ((await lab.originCount()) > before) return;
    if (isDead()) throw new Error('autocannon exited before sending a request');
    if (Date.now() - started > 15_000) throw new Error('no request reached the origin within 15 s of starting autocannon');
    await sleep(25, signal);
  }
}

async function runOnce(env: Env, server: ServerId, durationMs: number, context: RunContext): Promise<RunResult> {
  const { lab, options } = env;
  const count0 = await lab.originCount();
  // autocannon cannot be stopped early and still report, so its duration covers ramp-up and window, plus a margin
  // for noticing that traffic started.
  const ac = startAutocannon({
    url: `https://127.0.0.1:${lab.port(server)}/`,
    serverName: SERVER_NAME,
    connections: options.connections,
    durationSec: (options.rampMs + durationMs + 400) / 1000,
    cpus: options.clientCpus,
  });
  try {
    await waitForTraffic(lab, count0, () => ac.exited(), context.signal);
    await sleep(options.rampMs, context.signal);
    const roots = serverRoots(lab, server);
    const tracked: TrackedGroup[] = [
      { name: 'proxy', roots: () => roots.proxy },
      { name: 'keyserver', roots: () => roots.keyserver },
      { name: 'origin', roots: () => [lab.origin?.pid ?? -1] },
      { name: 'client', roots: () => [ac.pid] },
    ];
    const nA = await lab.originCount();
    const sA = snapshot(tracked);
    await sleep(durationMs, context.signal);
    const nB = await lab.originCount();
    const sB = snapshot(tracked);
    if (ac.exited()) throw new Error('autocannon finished before the measurement window closed');
    const usage = usageBetween(sA, sB);
    const g = (name: string) => usage.groups[name]?.cpuUs ?? 0;
    const requests = nB - nA;
    const per = (us: number) => (requests > 0 ? us / requests : Number.NaN);
    const ours = g('proxy') + g('keyserver') + g('origin') + g('client');
    const window: WindowResult = {
      seconds: usage.seconds,
      requests,
      requestsPerSecond: requests / usage.seconds,
      serverUs: per(g('proxy') + g('keyserver')),
      proxyUs: per(g('proxy')),
      keyserverUs: server === 'keyedge' ? per(g('keyserver')) : undefined,
      originUs: per(g('origin')),
      clientUs: per(g('client')),
      clientCores: g('client') / 1e6 / usage.seconds,
      serverSideCores: (g('proxy') + g('keyserver') + g('origin')) / 1e6 / usage.seconds,
      machineBusyCores: usage.machineBusyCores,
      otherCores: Math.max(0, usage.machineBusyCores - ours / 1e6 / usage.seconds - usage.selfCores),
      usage,
    };
    return { window, client: await ac.done };
  } finally {
    ac.kill();
  }
}

// ---------------------------------------------------------------------------
// Summary

interface ServerSummary {
  readonly server: ServerId;
  readonly label: string;
  readonly requestsPerSecond: Spread;
  readonly serverUs: Spread;
  readonly proxyUs: number;
  readonly keyserverUs: number | undefined;
  readonly originUs: number;
  readonly clientUs: number;
  readonly clientCores: number;
  readonly serverSideCores: number;
  readonly clientSaturated: boolean;
  readonly serverSaturated: boolean;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly machineBusyCores: number;
  readonly otherCores: number;
  readonly cleanRounds: number;
  readonly usedRounds: readonly number[];
  /** Summed over all measured runs: autocannon errors (connection errors, timeouts), non-2xx answers. */
  readonly errors: { readonly clientErrors: number; readonly timeouts: number; readonly non2xx: number };
  readonly perRound: readonly RunResult[];
}

function summarize(server: ServerId, label: string, all: readonly RunResult[], serverCpuCount: number): ServerSummary {
  const clean = all.map((r, i) => ({ r, i })).filter(({ r }) => r.window.otherCores <= CONTENDED_CORES);
  const used = clean.length >= Math.min(3, all.length) ? clean : all.map((r, i) => ({ r, i }));
  const rs = used.map(({ r }) => r);
  const w = (f: (r: WindowResult) => number) => median(rs.map((r) => f(r.window)));
  return {
    server,
    label,
    requestsPerSecond: spread(rs.map((r) => r.window.requestsPerSecond)),
    serverUs: spread(rs.map((r) => r.window.serverUs)),
    proxyUs: w((x) => x.proxyUs),
    keyserverUs: server === 'keyedge' ? w((x) => x.keyserverUs ?? Number.NaN) : undefined,
    originUs: w((x) => x.originUs),
    clientUs: w((x) => x.clientUs),
    clientCores: w((x) => x.clientCores),
    serverSideCores: w((x) => x.serverSideCores),
    clientSaturated: w((x) => x.clientCores) >= SATURATED_CORES,
    serverSaturated: w((x) => x.serverSideCores) >= SATURATED_CORES * serverCpuCount,
    p50Ms: median(rs.map((r) => r.client.p50Ms)),
    p99Ms: median(rs.map((r) => r.client.p99Ms)),
    machineBusyCores: w((x) => x.machineBusyCores),
    otherCores: w((x) => x.otherCores),
    cleanRounds: clean.length,
    usedRounds: used.map(({ i }) => i),
    errors: {
      clientErrors: all.reduce((n, r) => n + r.client.errors, 0),
      timeouts: all.reduce((n, r) => n + r.client.timeouts, 0),
      non2xx: all.reduce((n, r) => n + r.client.non2xx, 0),
    },
    perRound: all,
  };
}

interface Comparison {
  readonly other: ServerId;
  /** keyedge server µs/request ÷ the other's (medians): < 1 means keyedge spends less CPU per request. */
  readonly cpuRatio: number;
  /** The same per round (neighbours in time), min and max. */
  readonly cpuRatioPerRound: readonly number[];
  readonly rateRatio: number;
}

function compareTo(summaries: readonly ServerSummary[], other: ServerId): Comparison | undefined {
  const k = summaries.find((s) => s.server === 'keyedge');
  const o = summaries.find((s) => s.server === other);
  if (k === undefined || o === undefined) return undefined;
  const n = Math.min(k.perRound.length, o.perRound.length);
  return {
    other,
    cpuRatio: k.serverUs.median / o.serverUs.median,
    cpuRatioPerRound: Array.from({ length: n }, (_, i) => round(k.perRound[i]!.window.serverUs / o.perRound[i]!.window.serverUs, 3)),
    rateRatio: k.requestsPerSecond.median / o.requestsPerSecond.median,
  };
}

/** The row shape bench/run.ts, bench/compare.ts and the chart read (bench/lib/summary.ts). */
function summaryRow(s: ServerSummary) {
  return {
    scenario: s.server,
    label: s.label,
    requestsPerSecond: s.requestsPerSecond.median,
    serverCpuUsPerRequest: s.serverUs.median,
    p50Ms: s.p50Ms,
    p99Ms: s.p99Ms,
    clientSaturated: s.clientSaturated,
    errors: s.errors.clientErrors + s.errors.timeouts + s.errors.non2xx,
    spreadPct: s.requestsPerSecond.spreadPct,
    otherCores: s.otherCores,
  };
}

function range(s: Spread, decimals = 0): string {
  return `${fmt(s.min, decimals)}–${fmt(s.max, decimals)} (${fmt(s.spreadPct, 0)}%)`;
}

interface ProfileReport {
  readonly file: string;
  readonly busyUs: number;
  readonly requests: number;
  readonly top: readonly FunctionCost[];
}

function markdownReport(
  ctx: {
    machine: ReturnType<typeof describeMachine>;
    options: Options;
    date: string;
    clientCommand: string;
    commands: Record<string, string>;
    versions: Record<string, string | undefined>;
  },
  summaries: readonly ServerSummary[],
  skipped: ReadonlyMap<ServerId, string>,
  comparisons: readonly Comparison[],
  profiles: readonly ProfileReport[],
): string {
  const { machine, options } = ctx;
  const rows = summaries.map((s) => [
    s.label,
    `${s.clientSaturated ? '≥ ' : ''}${fmt(s.requestsPerSecond.median)}${s.usedRounds.length > s.cleanRounds ? ' †' : ''}`,
    range(s.requestsPerSecond),
    `**${fmt(s.serverUs.median, 1)}**`,
    range(s.serverUs, 1),
    s.keyserverUs === undefined ? '–' : `${fmt(s.proxyUs, 1)} + ${fmt(s.keyserverUs, 1)}`,
    fmt(s.originUs, 1),
    `${fmt(s.clientUs, 1)} (${fmt(s.clientCores, 2)}${s.clientSaturated ? ', saturated' : ''})`,
    `${fmt(s.serverSideCores, 2)}${s.serverSaturated ? ' (saturated)' : ''}`,
    `${fmt(s.p50Ms)} / ${fmt(s.p99Ms)}`,
    `${s.errors.clientErrors} / ${s.errors.timeouts} / ${s.errors.non2xx}`,
    `${s.cleanRounds}/${s.perRound.length}`,
    `${fmt(s.machineBusyCores, 2)} / ${fmt(s.otherCores, 2)}`,
  ]);
  for (const [server, reason] of skipped) rows.push([`${server} (skipped: ${reason})`, '–', '', '–', '', '', '', '', '', '', '', '', '']);
  const table = markdownTable(
    [
      'Server',
      'requests/s',
      'min–max (spread)',
      'server µs/request',
      'min–max (spread)',
      'proxy + key server µs',
      'origin µs',
      'client µs (cores)',
      'server-side cores',
      'p50 / p99 ms',
      'errors / timeouts / non-2xx',
      'clean rounds',
      'machine busy / others (cores)',
    ],
    rows,
    ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
  const cmpTable =
    comparisons.length === 0
      ? '(needs keyedge and at least one of nginx, caddy)'
      : markdownTable(
          ['keyedge vs', 'CPU/request ratio (keyedge ÷ other)', 'per round (min–max)', 'requests/s ratio', 'target'],
          comparisons.map((c) => [
            c.other,
            `**${fmt(c.cpuRatio, 2)}**`,
            `${fmt(Math.min(...c.cpuRatioPerRound), 2)}–${fmt(Math.max(...c.cpuRatioPerRound), 2)}`,
            fmt(c.rateRatio, 2),
            c.other === 'caddy' ? (c.cpuRatio < 1 ? 'met: below caddy' : 'missed: not below caddy') : 'reported',
          ]),
          ['left', 'right', 'right', 'right', 'left'],
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
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}, OpenSSL ${machine.openssl}; ${Object.entries(ctx.versions)
      .map(([k, v]) => `${k} ${v ?? '?'}`)
      .join(', ')}.`,
    `Command: \`${machine.commandLine}\``,
    `Client: \`${ctx.clientCommand}\` (HTTP/1.1 keep-alive, ${options.connections} connections, one request in flight each; GET / of a 1 KiB page over TLS 1.3, ECDSA P-256 certificate).`,
    `Servers: keyedge \`${ctx.commands.keyedge}\` + \`${ctx.commands.keyserver}\` (keyless, ${options.workers} worker${options.workers === 1 ? '' : 's'}, log level ${options.logLevel}); nginx \`${ctx.commands.nginx}\` (1 worker); caddy \`${ctx.commands.caddy}\`; origin \`${ctx.commands.origin}\` (the demo page). Each keeps up to ${ORIGIN_POOL} keep-alive connections to the origin${options.accessLog ? ' and writes one access-log line per request to a file' : '; no access logs'}.`,
    `Pinning: ${pin}.`,
    `Method: warm-up ${options.warmupMs / 1000} s per server, then ${options.rounds} interleaved rounds; each run starts autocannon, waits for traffic and ${options.rampMs} ms more, then measures a ${options.measureMs / 1000} s window (requests counted at the origin).`,
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
    `summed over all rounds. Rounds are clean when other processes used ≤ ${CONTENDED_CORES} cores in the window; medians use the clean`,
    "rounds when at least 3 are (else all, marked †). Every window's figures are in the JSON.",
    '',
    ...profileSection,
  ].join('\n');
}

/** Reads the .cpuprofile files the proxy wrote and keeps the busiest process's top functions (a worker). */
function readProfiles(dir: string, requests: number): ProfileReport[] {
  if (!existsSync(dir)) return [];
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const summaries = files.map((file) => ({ file, summary: summarizeProfile(join(dir, file), process.cwd()) }));
  summaries.sort((a, b) => b.summary.busyUs - a.summary.busyUs);
  return summaries.slice(0, 1).map(({ file, summary }) => ({ file, busyUs: summary.busyUs, requests, top: summary.functions.slice(0, 25) }));
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (options === undefined) return 0;
  const started = Date.now();
  const log = (line: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const machine = describeMachine();

  // Third-party servers: found or installed, else skipped with the reason.
  const skipped = new Map<ServerId, string>();
  const binaries = new Map<ServerId, string>();
  for (const [server, pkg] of [
    ['nginx', 'nginx'],
    ['caddy', 'caddy'],
  ] as const) {
    if (!options.servers.includes(server)) continue;
    const found = findOrInstall(server, pkg, options.install, log);
    if (found.ok) binaries.set(server, found.path);
    else {
      skipped.set(server, found.reason);
      log(`${server} skipped: ${found.reason}`);
    }
  }
  const versions = {
    autocannon: await autocannonVersion(),
    ...(binaries.has('nginx') ? { nginx: versionOf(binaries.get('nginx')!, ['-v'])?.replace(/^nginx version: nginx\//, '') } : {}),
    ...(binaries.has('caddy') ? { caddy: versionOf(binaries.get('caddy')!, ['version'])?.split(' ')[0] } : {}),
  };

  let lab: KeepaliveLab | undefined;
  const signal = installInterrupt(log, () => lab?.cleanup(options.keepTemp));

  try {
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    if (options.cpuProfDir !== undefined) mkdirSync(options.cpuProfDir, { recursive: true });
    lab = await KeepaliveLab.create(
      {
        workers: options.workers,
        logLevel: options.logLevel,
        accessLog: options.accessLog,
        serverCpus: options.serverCpus,
        nginx: binaries.get('nginx'),
        caddy: binaries.get('caddy'),
        ...(options.cpuProfDir !== undefined ? { proxyNodeArgs: ['--cpu-prof', '--cpu-prof-dir', options.cpuProfDir] } : {}),
      },
      log,
    );
    log(`temp dir ${lab.dir}`);
    signal.throwIfAborted();
    await lab.start(log);
    for (const [server, reason] of lab.failed) skipped.set(server, reason);
    signal.throwIfAborted();
    const env: Env = { lab, options };
    const running = lab;

    const labels: Record<ServerId, string> = {
      keyedge: `keyedge proxy (keyless, ${options.workers} worker${options.workers === 1 ? '' : 's'})`,
      nginx: `nginx ${versions.nginx ?? ''} (1 worker)`.replace('  ', ' '),
      caddy: `caddy ${versions.caddy ?? ''}`.trim(),
    };
    const scenarios: (Scenario<RunResult> & { server: ServerId })[] = options.servers
      .filter((s) => running.servers.has(s))
      .map((server) => ({ name: server, server, run: (durationMs, context) => runOnce(env, server, durationMs, context) }));
    const ownPids = () =>
      [...running.servers.values(), running.origin].flatMap((p) => (p === undefined ? [] : processTree(p.pid))).concat(running.keyserver?.pid ?? []);
    const gate =
      options.quietBudgetMs > 0
        ? new QuietGate({ maxOtherCores: CONTENDED_CORES, sampleMs: 250, ownPids: ownPids(), signal: signal }, options.quietBudgetMs)
        : undefined;
    const quietWaits: { scenario: string; round: number; waitedMs: number; otherCores: number; quiet: boolean }[] = [];
    // Every request each server answered, warm-up included: what a --cpu-prof profile (the proxy's whole life) covers.
    const answered = new Map<string, number>();
    log(
      `warm-up ${options.warmupMs / 1000} s per server, then ${options.rounds} rounds of ${options.measureMs / 1000} s over ${scenarios.map((s) => s.name).join(', ')}` +
        (options.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${options.serverCpus}, autocannon on CPU ${options.clientCpus}`),
    );
    const { order, results } = await runRounds(scenarios, {
      rounds: options.rounds,
      warmupMs: options.warmupMs,
      measureMs: options.measureMs,
      settleMs: options.settleMs,
      signal: signal,
      beforeRun: async (scenario, context) => {
        if (gate === undefined || context.phase !== 'measure') return;
        const q = await gate.wait();
        quietWaits.push({ scenario, round: context.round, ...q });
        if (!q.quiet || q.waitedMs > 300)
          log(
            `waited ${fmt(q.waitedMs / 1000, 1)} s for other load to drop: ${fmt(q.otherCores, 2)} cores${q.quiet ? '' : ' (wait budget spent, measuring anyway)'}`,
          );
      },
      onRun: ({ scenario, context, result }) => {
        const w = result.window;
        const c = result.client;
        answered.set(scenario, (answered.get(scenario) ?? 0) + c.requests);
        const errors = c.errors + c.timeouts + c.non2xx > 0 ? `  ERRORS ${c.errors} errors, ${c.timeouts} timeouts, ${c.non2xx} non-2xx` : '';
        log(
          `${context.phase === 'warmup' ? 'warm-up ' : `round ${context.round + 1} `}${scenario.padEnd(8)} ${fmt(w.requestsPerSecond).padStart(6)} req/s  server ${fmt(w.serverUs, 1)} µs/req` +
            `  origin ${fmt(w.originUs, 1)}  client ${fmt(w.clientUs, 1)} µs/req (${fmt(w.clientCores, 2)} cores)  server-side ${fmt(w.serverSideCores, 2)} cores  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}${errors}`,
        );
      },
    });

    const date = dateStamp();
    const serverCpuCount = options.serverCpus === undefined ? machine.cores : options.serverCpus.split(',').length;
    const summaries = scenarios.map((s) => summarize(s.server, labels[s.server], results.get(s.name) ?? [], serverCpuCount));
    const comparisons = (['caddy', 'nginx'] as const).flatMap((o) => compareTo(summaries, o) ?? []);
    const clientCommand = `${options.clientCpus === undefined ? '' : `taskset -c ${options.clientCpus} `}node_modules/.bin/autocannon ${autocannonArgs({
      url: 'https://127.0.0.1:PORT/',
      serverName: SERVER_NAME,
      connections: options.connections,
      durationSec: 0,
      cpus: undefined,
    })
      .join(' ')
      .replace('-d 0', '-d T')}`;
    const commands = {
      keyedge: 'node dist/keyedge.cjs proxy --config <tmp>/proxy.json',
      keyserver: 'node dist/keyedge.cjs keyserver --config <tmp>/keyserver.json',
      nginx: 'nginx -p <tmp> -c <tmp>/nginx.conf -e <tmp>/nginx-error.log',
      caddy: 'caddy run --config <tmp>/caddy.json',
      origin: 'node dist/bench/lib/keepalive-origin.js --port P',
    };

    // Stop the proxy first when profiling: node writes --cpu-prof files at exit.
    let profiles: ProfileReport[] = [];
    if (options.cpuProfDir !== undefined) {
      await lab.servers.get('keyedge')?.stop(15_000);
      profiles = readProfiles(options.cpuProfDir, answered.get('keyedge') ?? 0);
    }

    const markdown = markdownReport({ machine, options, date, clientCommand, commands, versions }, summaries, skipped, comparisons, profiles);
    const keyedge = summaries.find((s) => s.server === 'keyedge');
    const caddy = comparisons.find((c) => c.other === 'caddy');
    const nginx = comparisons.find((c) => c.other === 'nginx');
    const json = {
      benchmark: 'keepalive',
      date,
      quick: options.quick,
      machine,
      versions,
      client: { command: clientCommand, connections: options.connections, cpus: options.clientCpus },
      servers: {
        ...commands,
        workers: options.workers,
        cpus: options.serverCpus,
        logLevel: options.logLevel,
        accessLog: options.accessLog,
        originPool: ORIGIN_POOL,
        protocols: Object.fromEntries(lab.protocols),
      },
      method: {
        rounds: options.rounds,
        measureMs: options.measureMs,
        warmupMs: options.warmupMs,
        rampMs: options.rampMs,
        settleMs: options.settleMs,
        order,
        contendedCores: CONTENDED_CORES,
        saturatedCores: SATURATED_CORES,
        quietWait: { budgetMs: options.quietBudgetMs, waitedMs: gate?.waitedMs ?? 0, waits: quietWaits },
      },
      proxyConfig: lab.configs.keyedge,
      nginxConfig: lab.configs.nginx,
      caddyConfig: lab.configs.caddy,
      targets: {
        /** keyedge server CPU per request below caddy's, in this run. */
        keyedgeBelowCaddy: caddy === undefined ? null : caddy.cpuRatio < 1,
        keyedgeVsCaddyCpu: caddy?.cpuRatio ?? null,
        keyedgeVsNginxCpu: nginx?.cpuRatio ?? null,
        keyedgeServerCpuUsPerRequest: keyedge?.serverUs.median ?? null,
      },
      comparisons,
      summary: [
        ...summaries.map(summaryRow),
        ...[...skipped].map(([server, reason]) => ({
          scenario: server,
          label: server,
          requestsPerSecond: Number.NaN,
          serverCpuUsPerRequest: Number.NaN,
          p50Ms: Number.NaN,
          p99Ms: Number.NaN,
          clientSaturated: false,
          errors: 0,
          spreadPct: Number.NaN,
          otherCores: Number.NaN,
          skipped: reason,
        })),
      ],
      scenarios: summaries,
      profiles,
      durationSeconds: (Date.now() - started) / 1000,
    };
    const written = writeReport(options.out, options.quick ? 'keepalive-quick' : 'keepalive', json, markdown, date);
    process.stdout.write(`${markdown}\n`);
    log(`wrote ${written.jsonPath} and ${written.markdownPath}`);
    const errors = summaries.reduce((n, s) => n + s.errors.clientErrors + s.errors.timeouts + s.errors.non2xx, 0);
    if (errors > 0) {
      log(`${errors} requests failed during measurement: the figures are suspect`);
      return 1;
    }
    return 0;
  } finally {
    if (lab !== undefined) {
      await lab.stop().catch(() => undefined);
      if (options.keepTemp) log(`kept ${lab.dir}`);
      lab.cleanup(options.keepTemp);
    }
  }
}

runBench('keepalive', main());
