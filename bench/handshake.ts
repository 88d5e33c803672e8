/**
 * Benchmark: CPU per full TLS 1.3 handshake through the keyless proxy, next to
 * the same proxy set-up holding the key in memory (issue "proxy part 1", #6).
 *
 * Every handshake is a new TCP connection from ApacheBench (`ab -f TLS1.3`, no
 * keep-alive) carrying one GET that the server proxies to the demo origin
 * (1 KiB page). For ECDSA P-256 and RSA-2048, in one run:
 *   keyless   `keyedge proxy` (cluster, N workers) + `keyedge keyserver`
 *             (SoftHSM2 token, unix socket): every handshake signature is a
 *             synchronous RPC from the OpenSSL provider to the key server
 *   inmemory  bench/lib/handshake-inmemory.ts: the proxy's own modules with
 *             the key as a PEM file in memory, same worker count
 * Server CPU = utime + stime of every server process (proxy primary and
 * workers, key server; in-memory primary and workers) from /proc over the
 * measurement window, ÷ full handshakes the server counted in that window.
 * Warm-up once, then interleaved rounds (bench/lib/rounds.ts); medians and
 * spread. See bench/README.md, section "handshake".
 *
 * Usage: node dist/bench/handshake.js [--quick] [options]   (--help)
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { abArgs, abVersion, ensureAb, startAb, type AbResult } from './lib/handshake-ab.js';
import { diffCounters, type HandshakeCounters, readHandshakeCounters, readKeyserverSigns, sumValues } from './lib/handshake-counters.js';
import { HANDSHAKE_KEYS, HandshakeLab, type HandshakeKey } from './lib/handshake-lab.js';
import { havePerf, perfRecord, type PerfSummary, removePerfMaps, summarizePerf, threadLabels } from './lib/handshake-perf.js';
import { onlineCpus, processTree, setAffinity, snapshot, type TrackedGroup, usageBetween, type WindowUsage } from './lib/handshake-procs.js';
import { describeMachine } from './lib/machine.js';
import { QuietGate } from './lib/quiet.js';
import { dateStamp, fmt, markdownTable, writeReport } from './lib/report.js';
import { runRounds, type RunContext, type Scenario, sleep } from './lib/rounds.js';
import { median, round, spread, type Spread } from './lib/stats.js';
import { numberOption } from './lib/args.js';

/** A window during which other processes used more than this many cores counts as contended. */
const CONTENDED_CORES = 0.25;
/** A process using at least this share of a core during a window counts as saturated. */
const SATURATED_CORES = 0.9;

const USAGE = `Usage: node dist/bench/handshake.js [options]

  --quick              3 rounds of 1.5 s, 1.5 s warm-up per scenario (whole run < 60 s)
  --out DIR            where to write <date>-handshake.{json,md} (quick: -quick)
                       (default bench/results)
  --rounds N           measuring rounds (default 5; quick 3)
  --measure SEC        seconds per measurement window (default 5; quick 1.5)
  --warmup SEC         warm-up seconds per scenario (default 5; quick 1.5)
  --concurrency N      ab -c: connections in flight (default 64)
  --workers N          workers of the proxy and of the in-memory server (default 2)
  --keys ec,rsa        key types (default both)
  --setups keyless,inmemory
                       what to run (default both; the hop needs both)
  --pin auto|none      auto (default, 2+ CPUs): servers on CPU 0..n-2, ab and this
                       bench on the last CPU; none: leave it to the scheduler
  --server-cpus LIST   taskset CPU list for the servers (overrides --pin)
  --client-cpus LIST   taskset CPU list for ab and this bench (overrides --pin)
  --keyserver-cpus LIST
                       taskset CPU list for the key server alone (default: with the
                       servers), e.g. 1 to give it the client's core
  --log-level LEVEL    proxy and in-memory log level (default info, the product's
                       default: one access-log line per request, to a file)
  --profile intermediate|modern
                       TLS profile of both servers (default intermediate)
  --quiet-wait SEC     before each measurement wait (up to SEC in total per run) for
                       other processes to use < ${CONTENDED_CORES} cores (default 60; quick 0)
  --perf DIR           profiling run instead of the measurement: servers under
                       node --perf-basic-prof, warm-up, then one window per scenario
                       under \`perf record\` (on-CPU samples of the server processes);
                       perf data in DIR, summary in <date>-handshake-perf.{json,md}
  --perf-hz N          perf sampling frequency (default 499)
  --keep-temp          keep the temp directory (token, certificates, configs, logs)
  --help
`;

type SetupId = 'keyless' | 'inmemory';

interface Options {
  readonly quick: boolean;
  readonly out: string;
  readonly rounds: number;
  readonly measureMs: number;
  readonly warmupMs: number;
  readonly rampMs: number;
  readonly settleMs: number;
  readonly concurrency: number;
  readonly workers: number;
  readonly keys: readonly HandshakeKey[];
  readonly setups: readonly SetupId[];
  readonly serverCpus: string | undefined;
  readonly clientCpus: string | undefined;
  readonly keyserverCpus: string | undefined;
  readonly logLevel: string;
  readonly profile: 'intermediate' | 'modern';
  readonly quietBudgetMs: number;
  readonly perfDir: string | undefined;
  readonly perfHz: number;
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
      concurrency: { type: 'string', default: '64' },
      workers: { type: 'string', default: '2' },
      keys: { type: 'string', default: 'ec,rsa' },
      setups: { type: 'string', default: 'keyless,inmemory' },
      pin: { type: 'string', default: 'auto' },
      'server-cpus': { type: 'string' },
      'client-cpus': { type: 'string' },
      'keyserver-cpus': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      profile: { type: 'string', default: 'intermediate' },
      'quiet-wait': { type: 'string' },
      perf: { type: 'string' },
      'perf-hz': { type: 'string' },
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
  const keys = values.keys.split(',').map((id) => {
    const key = HANDSHAKE_KEYS.find((k) => k.id === id);
    if (key === undefined) throw new Error(`--keys takes ${HANDSHAKE_KEYS.map((k) => k.id).join(', ')}; got '${id}'`);
    return key;
  });
  const setups = values.setups.split(',').map((s) => {
    if (s !== 'keyless' && s !== 'inmemory') throw new Error(`--setups takes keyless, inmemory; got '${s}'`);
    return s;
  });
  if (values.pin !== 'auto' && values.pin !== 'none') throw new Error(`--pin takes auto or none, got '${values.pin}'`);
  if (values.profile !== 'intermediate' && values.profile !== 'modern') throw new Error(`--profile takes intermediate or modern, got '${values.profile}'`);
  const cpus = onlineCpus();
  const auto = values.pin === 'auto' && cpus.length >= 2;
  return {
    quick,
    out: values.out,
    rounds: Math.round(num(values.rounds, '--rounds', quick ? 3 : 5, 1)),
    measureMs: num(values.measure, '--measure', quick ? 1.5 : 5, 0.5) * 1000,
    warmupMs: num(values.warmup, '--warmup', quick ? 1.5 : 5, 0) * 1000,
    rampMs: quick ? 500 : 1000,
    settleMs: quick ? 150 : 300,
    concurrency: Math.round(num(values.concurrency, '--concurrency', 64, 1)),
    workers: Math.round(num(values.workers, '--workers', 2, 1)),
    keys,
    setups,
    serverCpus: values['server-cpus'] ?? (auto ? cpus.slice(0, -1).join(',') : undefined),
    clientCpus: values['client-cpus'] ?? (auto ? String(cpus[cpus.length - 1]) : undefined),
    keyserverCpus: values['keyserver-cpus'],
    logLevel: values['log-level'],
    profile: values.profile,
    quietBudgetMs: num(values['quiet-wait'], '--quiet-wait', quick ? 0 : 60, 0) * 1000,
    perfDir: values.perf === undefined ? undefined : resolve(values.perf),
    perfHz: Math.round(num(values['perf-hz'], '--perf-hz', 499, 1)),
    keepTemp: values['keep-temp'],
  };
}

// ---------------------------------------------------------------------------
// One run of one scenario

interface RunResult {
  /** Measurement window: counted by the server itself (admin counters), while ab keeps its connections in flight. */
  readonly window: {
    readonly seconds: number;
    readonly fullHandshakes: number;
    readonly resumedHandshakes: number;
    readonly failedHandshakes: number;
    /** Signatures the proxy received from the key server in the window (its own counter; 0 in memory). */
    readonly keylessSigns: number;
    readonly handshakesPerSecond: number;
    /** CPU µs per full handshake. */
    readonly serverUs: number;
    /** The proxy's processes (keyless) or the in-memory server's. */
    readonly proxyUs: number;
    readonly keyserverUs: number | undefined;
    readonly originUs: number;
    readonly clientUs: number;
    readonly clientCores: number;
    /** All server-side processes (proxy/in-memory, key server, origin), in cores. */
    readonly serverSideCores: number;
    readonly machineBusyCores: number;
    /** Cores used by processes that are neither ours nor this bench. */
    readonly otherCores: number;
    readonly usage: WindowUsage;
  };
  /** Whole ab run, idle to idle. */
  readonly run: {
    readonly ab: AbResult;
    readonly counters: HandshakeCounters;
    /** Key server signs by algorithm over the run (keyless only). */
    readonly keyserverSigns: Record<string, number> | undefined;
  };
}

interface BenchScenario extends Scenario<RunResult> {
  readonly setup: SetupId;
  readonly key: HandshakeKey;
}

interface Env {
  readonly lab: HandshakeLab;
  readonly options: Options;
  readonly csvDir: string;
}

function setupPort(env: Env, setup: SetupId): { port: number; admin: number } {
  return setup === 'keyless' ? { port: env.lab.ports.proxy, admin: env.lab.ports.proxyAdmin } : { port: env.lab.ports.inMemory, admin: env.lab.ports.inMemoryAdmin };
}

function groups(env: Env, abPid: number): TrackedGroup[] {
  const { lab } = env;
  return [
    { name: 'proxy', roots: () => [lab.proxy?.pid ?? -1] },
    { name: 'keyserver', roots: () => [lab.keyserver?.pid ?? -1] },
    { name: 'inmemory', roots: () => [lab.inMemory?.pid ?? -1] },
    { name: 'origin', roots: () => [lab.origin?.pid ?? -1] },
    { name: 'client', roots: () => [abPid] },
  ];
}

/** The server processes of a set-up with their roles (keyless: proxy primary + workers + key server; in memory: primary + workers). */
function serverProcesses(env: Env, setup: SetupId): Map<number, string> {
  const { lab } = env;
  const out = new Map<number, string>();
  const cluster = (root: number | undefined, name: string) => {
    if (root === undefined) return;
    for (const pid of processTree(root)) out.set(pid, pid === root ? `${name} primary` : `${name} worker`);
  };
  if (setup === 'keyless') {
    cluster(lab.proxy?.pid, 'proxy');
    if (lab.keyserver !== undefined) out.set(lab.keyserver.pid, 'key server');
  } else cluster(lab.inMemory?.pid, 'in-memory');
  return out;
}

/** Thread labels of the processes each perf file recorded. */
const perfThreads = new Map<string, Map<number, string>>();

/** `perf`: record the set-up's server processes over the window into this file. */
async function runOnce(env: Env, setup: SetupId, key: HandshakeKey, durationMs: number, context: RunContext, perfFile?: string): Promise<RunResult> {
  const { options, lab } = env;
  const { port, admin } = setupPort(env, setup);
  const signs0 = setup === 'keyless' ? await readKeyserverSigns(lab.ports.keyserverAdmin) : undefined;
  const run0 = await readHandshakeCounters(admin);
  const ab = startAb({
    port,
    host: key.serverName,
    concurrency: options.concurrency,
    maxSeconds: (options.rampMs + durationMs) / 1000 + 30,
    csvPath: join(env.csvDir, `${setup}-${key.id}-${context.phase}-${context.round}.csv`),
    cpus: options.clientCpus,
  });
  let windowResult: Omit<RunResult['window'], never> | undefined;
  try {
    await sleep(options.rampMs, context.signal);
    const tracked = groups(env, ab.pid);
    const cA = await readHandshakeCounters(admin);
    const sA = snapshot(tracked);
    let recording: ReturnType<typeof perfRecord> | undefined;
    if (perfFile !== undefined) {
      const processes = serverProcesses(env, setup);
      perfThreads.set(perfFile, threadLabels(processes));
      recording = perfRecord([...processes.keys()], perfFile, durationMs / 1000, options.perfHz);
    }
    await sleep(durationMs, context.signal);
    await recording?.done;
    const cB = await readHandshakeCounters(admin);
    const sB = snapshot(tracked);
    if (ab.exited()) {
      const r = await ab.done;
      throw new Error(`ab exited before the window closed (status ${r.exitCode ?? r.signal}): ${r.stderr.join(' | ') || 'no message'}`);
    }
    const usage = usageBetween(sA, sB);
    const c = diffCounters(cA, cB);
    const g = (name: string) => usage.groups[name]?.cpuUs ?? 0;
    const per = (us: number) => (c.full > 0 ? us / c.full : Number.NaN);
    const proxyUs = setup === 'keyless' ? g('proxy') : g('inmemory');
    const keyserverUs = setup === 'keyless' ? g('keyserver') : undefined;
    const ours = g('proxy') + g('keyserver') + g('inmemory') + g('origin') + g('client');
    windowResult = {
      seconds: usage.seconds,
      fullHandshakes: c.full,
      resumedHandshakes: c.resumed,
      failedHandshakes: c.failed,
      keylessSigns: c.keylessSigns,
      handshakesPerSecond: c.full / usage.seconds,
      serverUs: per(proxyUs + (keyserverUs ?? 0)),
      proxyUs: per(proxyUs),
      keyserverUs: keyserverUs === undefined ? undefined : per(keyserverUs),
      originUs: per(g('origin')),
      clientUs: per(g('client')),
      clientCores: g('client') / 1e6 / usage.seconds,
      serverSideCores: (g('proxy') + g('keyserver') + g('inmemory') + g('origin')) / 1e6 / usage.seconds,
      machineBusyCores: usage.machineBusyCores,
      otherCores: Math.max(0, usage.machineBusyCores - ours / 1e6 / usage.seconds - usage.selfCores),
      usage,
    };
  } finally {
    ab.stop();
  }
  const abResult = await ab.done;
  // Connections ab abandoned on SIGINT fail on the server side now: wait until the counters stop moving (at most 5 s)
  // so the run totals are idle to idle.
  let run1 = await readHandshakeCounters(admin);
  let signs1 = setup === 'keyless' ? await readKeyserverSigns(lab.ports.keyserverAdmin) : undefined;
  for (let i = 0; i < 50; i++) {
    await sleep(Math.max(100, options.settleMs / 2));
    const again = await readHandshakeCounters(admin);
    const signsAgain = setup === 'keyless' ? await readKeyserverSigns(lab.ports.keyserverAdmin) : undefined;
    const same = JSON.stringify([again, signsAgain]) === JSON.stringify([run1, signs1]);
    run1 = again;
    signs1 = signsAgain;
    if (same) break;
  }
  const keyserverSigns =
    signs0 === undefined || signs1 === undefined
      ? undefined
      : Object.fromEntries(Object.keys({ ...signs0, ...signs1 }).map((k) => [k, (signs1[k] ?? 0) - (signs0[k] ?? 0)]).filter(([, v]) => v !== 0));
  return { window: windowResult!, run: { ab: abResult, counters: diffCounters(run0, run1), keyserverSigns } };
}

// ---------------------------------------------------------------------------
// Summary

interface ScenarioSummary {
  readonly name: string;
  readonly setup: SetupId;
  readonly key: HandshakeKey;
  readonly handshakesPerSecond: Spread;
  readonly serverUs: Spread;
  readonly proxyUs: Spread;
  readonly keyserverUs: Spread | undefined;
  readonly originUs: number;
  readonly clientUs: number;
  readonly clientCores: number;
  readonly serverSideCores: number;
  /** The client used ≥ SATURATED_CORES in the median round: the rate is what one ab core could drive, a lower bound of the server's. */
  readonly clientSaturated: boolean;
  readonly serverSaturated: boolean;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly machineBusyCores: number;
  readonly otherCores: number;
  readonly cleanRounds: number;
  readonly usedRounds: readonly number[];
  /** Failed requests (ab), non-2xx (ab), failed handshakes in the windows (server). */
  readonly errors: { readonly abFailed: number; readonly non2xx: number; readonly windowFailedHandshakes: number; readonly abStderrLines: number };
  readonly resumed: number;
  /** Over all measured runs: key server signs (matching algorithm) ÷ full handshakes the proxy counted; should be 1. */
  readonly signCheck:
    | {
        /** Key server: successful signs with this key's algorithm (its admin counter). */
        readonly signs: number;
        /** The proxy's own count of signatures received (keyless_signs_total). */
        readonly proxySigns: number;
        readonly fullHandshakes: number;
        readonly failedHandshakes: number;
        readonly resumed: number;
        readonly ratio: number;
        readonly ok: boolean;
      }
    | undefined;
  readonly perRound: readonly RunResult[];
}

const ALGORITHM: Record<HandshakeKey['id'], string> = { ec: 'ECDSA_SHA256', rsa: 'RSA_PSS_SHA256' };

function summarize(scenario: BenchScenario, all: readonly RunResult[], serverCpuCount: number): ScenarioSummary {
  const clean = all.map((r, i) => ({ r, i })).filter(({ r }) => r.window.otherCores <= CONTENDED_CORES);
  const used = clean.length >= Math.min(3, all.length) ? clean : all.map((r, i) => ({ r, i }));
  const rs = used.map(({ r }) => r);
  const w = (f: (r: RunResult['window']) => number) => median(rs.map((r) => f(r.window)));
  let signCheck: ScenarioSummary['signCheck'];
  if (scenario.setup === 'keyless') {
    const signs = all.reduce((n, r) => n + sumValues(r.run.keyserverSigns ?? {}), 0);
    const matching = all.reduce((n, r) => n + (r.run.keyserverSigns?.[ALGORITHM[scenario.key.id]] ?? 0), 0);
    const full = all.reduce((n, r) => n + r.run.counters.full, 0);
    const failed = all.reduce((n, r) => n + r.run.counters.failed, 0);
    const proxySigns = all.reduce((n, r) => n + r.run.counters.keylessSigns, 0);
    const resumed = all.reduce((n, r) => n + r.run.counters.resumed, 0);
    // Every full handshake signs once, nothing resumes, and the key server signed exactly what the proxy asked for;
    // a handshake ab abandoned at SIGINT after the server's CertificateVerify was signed but failed.
    signCheck = {
      signs: matching,
      proxySigns,
      fullHandshakes: full,
      failedHandshakes: failed,
      resumed,
      ratio: matching / full,
      ok: signs === matching && matching === proxySigns && resumed === 0 && matching >= full && matching <= full + failed,
    };
  }
  return {
    name: scenario.name,
    setup: scenario.setup,
    key: scenario.key,
    handshakesPerSecond: spread(rs.map((r) => r.window.handshakesPerSecond)),
    serverUs: spread(rs.map((r) => r.window.serverUs)),
    proxyUs: spread(rs.map((r) => r.window.proxyUs)),
    keyserverUs: scenario.setup === 'keyless' ? spread(rs.map((r) => r.window.keyserverUs ?? Number.NaN)) : undefined,
    originUs: w((x) => x.originUs),
    clientUs: w((x) => x.clientUs),
    clientCores: w((x) => x.clientCores),
    serverSideCores: w((x) => x.serverSideCores),
    clientSaturated: w((x) => x.clientCores) >= SATURATED_CORES,
    serverSaturated: w((x) => x.serverSideCores) >= SATURATED_CORES * serverCpuCount,
    p50Us: median(rs.map((r) => r.run.ab.p50Us)),
    p99Us: median(rs.map((r) => r.run.ab.p99Us)),
    machineBusyCores: w((x) => x.machineBusyCores),
    otherCores: w((x) => x.otherCores),
    cleanRounds: clean.length,
    usedRounds: used.map(({ i }) => i),
    errors: {
      abFailed: all.reduce((n, r) => n + r.run.ab.failedRequests, 0),
      non2xx: all.reduce((n, r) => n + r.run.ab.non2xx, 0),
      windowFailedHandshakes: all.reduce((n, r) => n + r.window.failedHandshakes, 0),
      abStderrLines: all.reduce((n, r) => n + r.run.ab.stderrLines, 0),
    },
    resumed: all.reduce((n, r) => n + r.run.counters.resumed, 0),
    signCheck,
    perRound: all,
  };
}

interface HopSummary {
  readonly key: HandshakeKey;
  readonly keylessUs: number;
  readonly inMemoryUs: number;
  /** keyless − in-memory server µs per handshake, from the medians. */
  readonly hopUs: number;
  /** Of the hop: in the proxy's processes (provider RPC, blocking) and in the key server. */
  readonly hopProxyUs: number;
  readonly hopKeyserverUs: number;
  /** Per round, keyless − in-memory of the same round (neighbours in time). */
  readonly perRoundUs: readonly number[];
  readonly ratio: number;
  readonly rateRatio: number;
}

function hops(summaries: readonly ScenarioSummary[]): HopSummary[] {
  const out: HopSummary[] = [];
  for (const key of HANDSHAKE_KEYS) {
    const k = summaries.find((s) => s.setup === 'keyless' && s.key.id === key.id);
    const m = summaries.find((s) => s.setup === 'inmemory' && s.key.id === key.id);
    if (k === undefined || m === undefined) continue;
    const rounds = Math.min(k.perRound.length, m.perRound.length);
    const perRoundUs = Array.from({ length: rounds }, (_, i) => k.perRound[i]!.window.serverUs - m.perRound[i]!.window.serverUs);
    out.push({
      key,
      keylessUs: k.serverUs.median,
      inMemoryUs: m.serverUs.median,
      hopUs: k.serverUs.median - m.serverUs.median,
      hopProxyUs: k.proxyUs.median - m.proxyUs.median,
      hopKeyserverUs: k.keyserverUs?.median ?? Number.NaN,
      perRoundUs,
      ratio: k.serverUs.median / m.serverUs.median,
      rateRatio: k.handshakesPerSecond.median / m.handshakesPerSecond.median,
    });
  }
  return out;
}

const SETUP_TITLE: Record<SetupId, string> = { keyless: 'keyless', inmemory: 'in memory' };

function range(s: Spread, decimals = 0): string {
  return `${fmt(s.min, decimals)}–${fmt(s.max, decimals)} (${fmt(s.spreadPct, 0)}%)`;
}

interface ReportContext {
  readonly machine: ReturnType<typeof describeMachine>;
  readonly options: Options;
  readonly date: string;
  readonly ab: string | undefined;
  readonly abCommand: string;
  readonly commands: Record<string, string>;
  readonly tls: string | undefined;
}

function markdownReport(ctx: ReportContext, summaries: readonly ScenarioSummary[], hopRows: readonly HopSummary[]): string {
  const { machine, options } = ctx;
  const rows = summaries.map((s) => [
    s.key.title,
    SETUP_TITLE[s.setup],
    `${s.clientSaturated ? '≥ ' : ''}${fmt(s.handshakesPerSecond.median)}${s.usedRounds.length > s.cleanRounds ? ' †' : ''}`,
    range(s.handshakesPerSecond),
    `**${fmt(s.serverUs.median)}**`,
    range(s.serverUs),
    s.setup === 'keyless' ? `${fmt(s.proxyUs.median)} + ${fmt(s.keyserverUs?.median ?? Number.NaN)}` : `${fmt(s.proxyUs.median)} + 0`,
    fmt(s.originUs),
    `${fmt(s.clientUs)} (${fmt(s.clientCores, 2)}${s.clientSaturated ? ', saturated' : ''})`,
    `${fmt(s.serverSideCores, 2)}${s.serverSaturated ? ' (saturated)' : ''}`,
    `${fmt(s.p50Us / 1000, 1)} / ${fmt(s.p99Us / 1000, 1)}`,
    `${s.errors.abFailed} / ${s.errors.non2xx} / ${s.errors.windowFailedHandshakes}`,
    s.signCheck === undefined ? '–' : `${fmt(s.signCheck.ratio, 3)}${s.signCheck.ok ? '' : ' ✗'}`,
    `${s.cleanRounds}/${s.perRound.length}`,
    `${fmt(s.machineBusyCores, 2)} / ${fmt(s.otherCores, 2)}`,
  ]);
  const table = markdownTable(
    [
      'Key',
      'Key held',
      'handshakes/s',
      'min–max (spread)',
      'server µs/handshake',
      'min–max (spread)',
      'proxy + key server µs',
      'origin µs',
      'client µs (cores)',
      'server-side cores',
      'p50 / p99 ms',
      'errors ab failed / non-2xx / TLS failed',
      'signs / handshake',
      'clean rounds',
      'machine busy / others (cores)',
    ],
    rows,
    ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
  const hopTable =
    hopRows.length === 0
      ? '(needs both setups)'
      : markdownTable(
          ['Key', 'keyless µs/hs', 'in memory µs/hs', '**keyless hop µs/hs**', 'of which proxy / key server', 'hop per round (min–max)', 'keyless ÷ in memory (CPU)', 'handshakes/s keyless ÷ in memory'],
          hopRows.map((h) => [
            h.key.title,
            fmt(h.keylessUs),
            fmt(h.inMemoryUs),
            `**${fmt(h.hopUs)}**`,
            `${fmt(h.hopProxyUs)} / ${fmt(h.hopKeyserverUs)}`,
            `${fmt(Math.min(...h.perRoundUs))}–${fmt(Math.max(...h.perRoundUs))}`,
            fmt(h.ratio, 2),
            fmt(h.rateRatio, 2),
          ]),
          ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
        );
  const pin =
    (options.serverCpus === undefined ? 'no pinning (scheduler decides)' : `servers (proxy, key server, in-memory, origin) on CPU ${options.serverCpus}; ab and this bench on CPU ${options.clientCpus}`) +
    (options.keyserverCpus === undefined ? '' : `; key server moved to CPU ${options.keyserverCpus}`);
  return [
    `# handshake, ${ctx.date}${options.quick ? ' (quick)' : ''}`,
    '',
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB; ${machine.kernel}; load average at start ${machine.loadAverageAtStart.join(' ')}`,
    `Software: Node ${machine.node}, OpenSSL ${machine.openssl}, ${machine.softhsm2 !== undefined ? `SoftHSM2 ${machine.softhsm2}` : 'SoftHSM2 (version unknown)'}, ${ctx.ab ?? 'ab (version unknown)'}`,
    `Command: \`${machine.commandLine}\``,
    `Client: \`${ctx.abCommand}\` (${options.concurrency} connections in flight, a new TCP connection and full handshake per request; negotiated ${ctx.tls ?? '?'})`,
    `Servers: keyless \`${ctx.commands.proxy}\` + \`${ctx.commands.keyserver}\`; in memory \`${ctx.commands.inMemory}\`; origin \`${ctx.commands.origin}\`. ${options.workers} workers each (node:cluster, SCHED_NONE), TLS profile ${options.profile}, log level ${options.logLevel}.`,
    `Pinning: ${pin}.`,
    `Method: warm-up ${options.warmupMs / 1000} s per scenario, then ${options.rounds} interleaved rounds; each run starts ab, waits ${options.rampMs} ms, then measures a ${options.measureMs / 1000} s window while ab keeps ${options.concurrency} connections in flight, then stops ab (SIGINT).`,
    '',
    table,
    '',
    '## Keyless hop (server CPU per handshake, keyless − in memory)',
    '',
    hopTable,
    '',
    'Columns: handshakes/s = full handshakes the server counted in the window ÷ its length, median over rounds ("≥": ab used',
    `≥ ${SATURATED_CORES} of its core in the median round, so the rate is what one client core could drive, a lower bound of the`,
    'server\'s). **server µs/handshake** = utime+stime from /proc of every server process (keyless: proxy primary + workers +',
    'key server; in memory: primary + workers) over the window ÷ full handshakes in it; the figure to compare. "proxy + key',
    'server" splits it. origin µs = the demo origin (same for both, not in the server figure). client = ab\'s CPU per handshake',
    '(its cores in brackets). server-side cores = proxy/in-memory + key server + origin, in cores of the window. p50/p99 =',
    'ab\'s per-request time (connect + handshake + GET), median over rounds, mostly queueing at this concurrency. errors = ab',
    'failed requests / non-2xx answers / TLS handshakes the server saw fail inside the windows (summed over all rounds).',
    'signs / handshake = key server signatures (its admin counter, the key\'s algorithm) ÷ full handshakes the proxy counted,',
    'over every measured ab run from idle to idle: 1 means one signature per handshake and no session resumption (✗ when',
    'outside [full, full + failed]: a handshake ab abandons at SIGINT may have been signed). Rounds are clean when other',
    `processes used ≤ ${CONTENDED_CORES} cores in the window; medians use the clean rounds when at least 3 are (else all, marked †).`,
    'Per-round figures for every window are in the JSON.',
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// Profiling run (--perf)

interface PerfRow {
  readonly scenario: string;
  readonly handshakes: number;
  /** Sampled CPU of the recorded processes per full handshake in the window (perf's own overhead included). */
  readonly sampledUsPerHandshake: number;
  readonly summary: PerfSummary;
}

function perfMarkdown(rows: readonly PerfRow[], machine: ReturnType<typeof describeMachine>, options: Options, date: string): string {
  const perHs = (r: PerfRow, pct: number) => fmt((r.sampledUsPerHandshake * pct) / 100, 0);
  return [
    `# handshake: where the server CPU goes (perf), ${date}`,
    '',
    `Command: \`${machine.commandLine}\``,
    `Servers under \`node --perf-basic-prof\`, warmed up ${options.warmupMs / 1000} s per scenario, then one ${options.measureMs / 1000} s window per scenario under`,
    `\`perf record -F ${options.perfHz} -g -p <server pids>\` (keyless: proxy primary + workers + key server; in memory: primary + workers).`,
    'On-CPU samples: a worker blocked in the keyless RPC costs nothing here. µs/hs = share × sampled CPU ÷ full handshakes in the',
    'window; sampling adds a little overhead. "node" is V8 and OpenSSL (statically linked); JS functions are inclusive (children).',
    '',
    ...rows.flatMap((r) => [
      `## ${r.scenario}: ${fmt(r.sampledUsPerHandshake)} µs sampled per handshake (${r.handshakes} handshakes, ${r.summary.samples} samples)`,
      '',
      markdownTable(['process, threads', 'share %', 'µs/hs'], r.summary.byProcess.map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]), ['left', 'right', 'right']),
      '',
      markdownTable(['binary', 'share %', 'µs/hs'], r.summary.byBinary.slice(0, 8).map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]), ['left', 'right', 'right']),
      '',
      markdownTable(['binary / symbol (self)', 'share %', 'µs/hs'], r.summary.bySymbol.slice(0, 25).map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]), ['left', 'right', 'right']),
      '',
      markdownTable(['JS function (inclusive)', 'share %', 'µs/hs'], r.summary.jsInclusive.slice(0, 30).map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]), ['left', 'right', 'right']),
      '',
    ]),
  ].join('\n');
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (options === undefined) return 0;
  const started = Date.now();
  const log = (line: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  ensureAb(log);
  const machine = describeMachine();
  const ab = abVersion();

  const abort = new AbortController();
  let lab: HandshakeLab | undefined;
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      lab?.cleanup(options.keepTemp);
      process.exit(130);
    }
    interrupted = true;
    log(`${signal}: stopping (again to force)`);
    abort.abort(new Error(`interrupted by ${signal}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => lab?.cleanup(options.keepTemp));

  try {
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    const profiling = options.perfDir !== undefined;
    if (options.perfDir !== undefined) {
      if (!havePerf()) throw new Error('--perf needs perf (Debian: apt-get install -y linux-perf)');
      mkdirSync(options.perfDir, { recursive: true });
    }
    lab = await HandshakeLab.create(
      {
        workers: options.workers,
        logLevel: options.logLevel,
        profile: options.profile,
        serverCpus: options.serverCpus,
        keyserverCpus: options.keyserverCpus,
        keys: options.keys,
        ...(profiling ? { nodeArgs: ['--perf-basic-prof'] } : {}),
      },
      log,
    );
    log(`temp dir ${lab.dir}`);
    abort.signal.throwIfAborted();
    await lab.start(log);
    abort.signal.throwIfAborted();
    const env: Env = { lab, options, csvDir: lab.dir };
    const running = lab;

    const scenarios: BenchScenario[] = [];
    for (const key of options.keys) {
      for (const setup of options.setups) {
        scenarios.push({
          name: `${setup}-${key.id}`,
          setup,
          key,
          run: (durationMs, context) =>
            runOnce(env, setup, key, durationMs, context, options.perfDir !== undefined && context.phase === 'measure' ? join(options.perfDir, `${setup}-${key.id}.perf.data`) : undefined),
        });
      }
    }
    const ownPids = () => [running.proxy, running.inMemory, running.origin].flatMap((p) => (p === undefined ? [] : processTree(p.pid))).concat(running.keyserver?.pid ?? []);
    const gate =
      options.quietBudgetMs > 0
        ? new QuietGate({ maxOtherCores: CONTENDED_CORES, sampleMs: 250, ownPids: ownPids(), signal: abort.signal }, options.quietBudgetMs)
        : undefined;
    const quietWaits: { scenario: string; round: number; waitedMs: number; otherCores: number; quiet: boolean }[] = [];
    log(
      `warm-up ${options.warmupMs / 1000} s per scenario, then ${profiling ? 1 : options.rounds} round(s) of ${options.measureMs / 1000} s over ${scenarios.length} scenarios` +
        (options.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${options.serverCpus}, ab on CPU ${options.clientCpus}`),
    );
    const { order, results } = await runRounds(scenarios, {
      rounds: profiling ? 1 : options.rounds,
      warmupMs: options.warmupMs,
      measureMs: options.measureMs,
      settleMs: options.settleMs,
      signal: abort.signal,
      beforeRun: async (scenario, context) => {
        if (gate === undefined || context.phase !== 'measure') return;
        const q = await gate.wait();
        quietWaits.push({ scenario, round: context.round, ...q });
        if (!q.quiet || q.waitedMs > 300) log(`waited ${fmt(q.waitedMs / 1000, 1)} s for other load to drop: ${fmt(q.otherCores, 2)} cores${q.quiet ? '' : ' (wait budget spent, measuring anyway)'}`);
      },
      onRun: ({ scenario, context, result }) => {
        const w = result.window;
        const ks = w.keyserverUs === undefined ? '' : ` (proxy ${fmt(w.proxyUs)} + key server ${fmt(w.keyserverUs)})`;
        const signs = result.run.keyserverSigns === undefined ? '' : ` signs ${sumValues(result.run.keyserverSigns)}/${result.run.counters.full} hs`;
        const errors = result.run.ab.failedRequests + result.run.ab.non2xx + w.failedHandshakes > 0 ? ` ERRORS ab failed ${result.run.ab.failedRequests} non-2xx ${result.run.ab.non2xx} TLS failed ${w.failedHandshakes}` : '';
        log(
          `${context.phase === 'warmup' ? 'warm-up ' : `round ${context.round + 1} `}${scenario.padEnd(13)} ${fmt(w.handshakesPerSecond).padStart(6)} hs/s  server ${fmt(w.serverUs)} µs/hs${ks}` +
            `  client ${fmt(w.clientUs)} µs/hs (${fmt(w.clientCores, 2)} cores)  server-side ${fmt(w.serverSideCores, 2)} cores  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}${signs}${errors}`,
        );
      },
    });

    const date = dateStamp();
    const serverCpuCount = options.serverCpus === undefined ? machine.cores : options.serverCpus.split(',').length;
    const summaries = scenarios.map((s) => summarize(s, results.get(s.name) ?? [], serverCpuCount));
    const hopRows = hops(summaries);
    const firstAb = summaries[0]?.perRound[0]?.run.ab;
    const ctx: ReportContext = {
      machine,
      options,
      date,
      ab,
      abCommand: `${options.clientCpus === undefined ? '' : `taskset -c ${options.clientCpus} `}ab ${abArgs({ port: 0, host: 'KEY.bench.localhost', concurrency: options.concurrency, maxSeconds: 0, csvPath: 'FILE.csv', cpus: undefined })
        .map((a) => (a.includes(' ') ? `'${a}'` : a))
        .join(' ')
        .replace(/-t \d+/, '-t T')
        .replace(/-n \d+/, '-n N')
        .replace('127.0.0.1:0', '127.0.0.1:PORT')}`,
      commands: {
        proxy: 'node dist/keyserver/cli/keyedge.cjs proxy --config <tmp>/proxy.json',
        keyserver: 'node dist/keyserver/cli/keyedge.cjs keyserver --config <tmp>/keyserver.json',
        inMemory: 'node dist/bench/lib/handshake-inmemory.js --config <tmp>/inmemory.json',
        origin: 'node dist/keyserver/cli/keyedge.cjs demo-origin --port P',
      },
      tls: firstAb === undefined ? undefined : `${firstAb.tlsProtocol ?? '?'}, ${firstAb.serverTempKey ?? '?'}`,
    };

    if (options.perfDir !== undefined) {
      const perfDir = options.perfDir;
      const rows: PerfRow[] = [];
      for (const s of scenarios) {
        const window = results.get(s.name)?.[0]?.window;
        if (window === undefined) continue;
        const file = join(perfDir, `${s.name}.perf.data`);
        const summary = await summarizePerf(file, options.perfHz, perfThreads.get(file) ?? new Map());
        rows.push({ scenario: s.name, handshakes: window.fullHandshakes, sampledUsPerHandshake: (summary.samples / options.perfHz) * 1e6 / window.fullHandshakes, summary });
      }
      const md = perfMarkdown(rows, machine, options, date);
      const written = writeReport(options.out, 'handshake-perf', { benchmark: 'handshake-perf', date, machine, options, perf: rows, scenarios: summaries.map((s) => ({ name: s.name, window: s.perRound[0]?.window })) }, md, date);
      process.stdout.write(`${md}\n`);
      log(`wrote ${written.jsonPath} and ${written.markdownPath}; perf data in ${perfDir} (perf report -i FILE)`);
      return 0;
    }

    const markdown = markdownReport(ctx, summaries, hopRows);
    const json = {
      benchmark: 'handshake',
      date,
      quick: options.quick,
      machine,
      client: { ab, command: ctx.abCommand, concurrency: options.concurrency, cpus: options.clientCpus },
      servers: { ...ctx.commands, workers: options.workers, cpus: options.serverCpus, keyserverCpus: options.keyserverCpus ?? options.serverCpus, logLevel: options.logLevel, tlsProfile: options.profile },
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
      keys: options.keys.map((k) => ({ id: k.id, title: k.title, type: k.type, serverName: k.serverName, keyId: lab!.keyIds.get(k.id) })),
      proxyConfig: lab.proxyConfig,
      inMemoryConfig: lab.inMemoryConfig,
      keyless_hop: hopRows.map((h) => ({ ...h, key: h.key.id, hopUs: round(h.hopUs), perRoundUs: h.perRoundUs.map((v) => round(v)) })),
      scenarios: summaries.map((s) => ({ ...s, key: s.key.id })),
      durationSeconds: (Date.now() - started) / 1000,
    };
    const written = writeReport(options.out, options.quick ? 'handshake-quick' : 'handshake', json, markdown, date);
    process.stdout.write(`${markdown}\n`);
    log(`wrote ${written.jsonPath} and ${written.markdownPath}`);
    const errors = summaries.reduce((n, s) => n + s.errors.abFailed + s.errors.non2xx + s.errors.windowFailedHandshakes, 0);
    const badSigns = summaries.filter((s) => s.signCheck !== undefined && !s.signCheck.ok);
    if (badSigns.length > 0) log(`sign count does not match handshakes for ${badSigns.map((s) => s.name).join(', ')}: see the JSON`);
    if (errors > 0) {
      log(`${errors} requests or handshakes failed during measurement: the figures are suspect`);
      return 1;
    }
    return badSigns.length > 0 ? 1 : 0;
  } finally {
    if (lab !== undefined) {
      // V8's /tmp/perf-<pid>.map files (--perf-basic-prof) of every server process.
      const pids = [lab.proxy, lab.inMemory].flatMap((p) => (p === undefined ? [] : processTree(p.pid))).concat(lab.keyserver?.pid ?? []);
      await lab.stop().catch(() => undefined);
      if (options.perfDir !== undefined) removePerfMaps(pids);
      if (options.keepTemp) log(`kept ${lab.dir}`);
      lab.cleanup(options.keepTemp);
    }
  }
}

let interrupted = false;
main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (interrupted) {
      process.stderr.write('handshake: interrupted; everything it started is stopped\n');
      process.exitCode = 130;
      return;
    }
    process.stderr.write(`handshake: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
