/**
 * Benchmark: CPU per TLS handshake through the keyless proxy, next to the same
 * proxy holding the key in memory and to nginx holding it three ways (issue
 * "proxy part 1", #6).
 *
 * Every handshake is a new TCP connection carrying one GET that the server
 * proxies to the demo origin (1 KiB page). Set-ups (bench/lib/handshake-lab.ts):
 *   keyless-unix   `keyedge proxy` (cluster, N workers) + `keyedge keyserver`
 *                  (SoftHSM2 token) over its unix socket
 *   keyless-tcp    the same over mutual TLS on 127.0.0.1
 *   inmemory       the real proxy cluster with PEM key files behind its KeySource
 *   nginx-file     nginx (one process), PEM key files
 *   nginx-engine   nginx, libp11 engine on the same token
 *   nginx-p11kit   nginx, libp11 engine on p11-kit-client → `p11-kit server` → the token
 * Kinds (bench/lib/handshake-scenarios.ts): full TLS 1.3 (ab -f TLS1.3), TLS 1.3
 * resumed with session tickets (bench/lib/handshake-resume.ts), full TLS 1.2
 * (ab -f TLS1.2, spot check). Server CPU = utime + stime of every process of
 * the set-up from /proc over the measurement window ÷ handshakes in it.
 * Servers are started once; warm-up, then interleaved rounds
 * (bench/lib/rounds.ts); medians and spread; the issue's targets as ratios;
 * and what one core can sign (openssl speed, raw C_Sign on the token).
 * See bench/README.md, section "handshake".
 *
 * Usage: node dist/bench/handshake.js [--quick] [options]   (--help)
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { numberOption } from './lib/args.js';
import { abArgs, abVersion, ensureAb, startAb, type AbResult } from './lib/handshake-ab.js';
import { diffCounters, type HandshakeCounters, readHandshakeCounters, readKeyserverSigns, sumValues } from './lib/handshake-counters.js';
import { HANDSHAKE_KEYS, HandshakeLab, type HandshakeKey, isKeyless, isNginx, SETUP_IDS, type SetupId } from './lib/handshake-lab.js';
import { opensslSpeed, type OpensslSpeed, rawTokenRates, type RawTokenRate } from './lib/handshake-limits.js';
import { readNginxStatus } from './lib/handshake-nginx.js';
import { havePerf, perfRecord, type PerfSummary, removePerfMaps, summarizePerf, threadLabels } from './lib/handshake-perf.js';
import { onlineCpus, processTree, setAffinity, snapshot, type TrackedGroup, usageBetween, type WindowUsage } from './lib/handshake-procs.js';
import { ResumeLoad } from './lib/handshake-resume.js';
import { type Kind, KINDS, KEY_NAME, type ScenarioSpec, selectScenarios } from './lib/handshake-scenarios.js';
import { describeMachine } from './lib/machine.js';
import { QuietGate } from './lib/quiet.js';
import { dateStamp, fmt, markdownTable, writeReport } from './lib/report.js';
import { runRounds, type RunContext, type Scenario, sleep } from './lib/rounds.js';
import { median, round, spread, type Spread } from './lib/stats.js';
import { installInterrupt, runBench } from './lib/interrupt.js';

/** A window during which other processes used more than this many cores counts as contended. */
const CONTENDED_CORES = 0.25;
/** A process using at least this share of a core during a window counts as saturated. */
const SATURATED_CORES = 0.9;
/** The issue's targets (#6). */
const TARGETS = {
  /** CPU per full keyless handshake ÷ nginx + p11-kit's: at most 1. */
  keylessVsP11kit: 1,
  /** Keyless hop (keyless − in memory) ÷ (nginx + p11-kit − nginx + engine): at most 2/3. */
  hopVsP11kitHop: 2 / 3,
  /** CPU per resumed keyless handshake ÷ nginx's: at most 1.3. */
  resumedVsNginx: 1.3,
} as const;

const USAGE = `Usage: node dist/bench/handshake.js [options]

  --quick              2 rounds of 0.5 s, 0.75 s warm-up, ECDSA only, no TLS 1.2, no
                       limits, nginx only when already installed (< 60 s)
  --scenarios LIST     only these scenarios: comma-separated ids, * within a part,
                       e.g. full-tls13/keyless-unix/ecdsa or 'full-tls13/*/ecdsa'
                       (ids: kind/setup/key; kinds ${KINDS.join(', ')};
                       setups ${SETUP_IDS.join(', ')}; keys ecdsa, rsa)
  --keys ec,rsa        key types (default both; quick ec)
  --setups LIST        set-ups (default all)
  --out DIR            where to write <date>-handshake.{json,md} (quick: -quick)
                       (default bench/results)
  --rounds N           measuring rounds (default 3; quick 2)
  --measure SEC        seconds per measurement window (default 4; quick 0.5)
  --warmup SEC         warm-up per Node scenario (default 4; quick 0.75); nginx gets 1 s (quick 0.3)
  --concurrency N      ab -c: connections in flight (default 64)
  --resume-loops N     connections in flight of the resuming client (default 16)
  --workers N          workers of the proxies and the in-memory server (default: one
                       per server CPU, the product's own rule; 1 when pinned on 2 CPUs)
  --install yes|no     apt-get install nginx, libengine-pkcs11-openssl, p11-kit,
                       p11-kit-modules when missing (root; default yes; quick no)
  --limits yes|no      openssl speed and raw C_Sign on the token (default yes;
                       quick and --scenarios no)
  --pin auto|none      auto (default, 2+ CPUs): servers on CPU 0..n-2, clients and this
                       bench on the last CPU; none: leave it to the scheduler
  --server-cpus LIST   taskset CPU list for the servers (overrides --pin)
  --client-cpus LIST   taskset CPU list for the clients and this bench (overrides --pin)
  --keyserver-cpus LIST
                       taskset CPU list for the key server alone (default: with the servers)
  --log-level LEVEL    proxy and in-memory log level (default info, the product's
                       default: one access-log line per request, to a file; nginx logs
                       access lines unless warn/error/silent)
  --profile intermediate|modern
                       TLS profile of the proxies (default intermediate)
  --quiet-wait SEC     before each measurement wait (up to SEC in total per run) for
                       other processes to use < ${CONTENDED_CORES} cores (default 60; quick 0)
  --perf DIR           profiling run instead of the measurement: servers under
                       node --perf-basic-prof, warm-up, then one window per scenario
                       under \`perf record\`; summary in <date>-handshake-perf.{json,md}
  --perf-hz N          perf sampling frequency (default 499)
  --keep-temp          keep the temp directory (token, certificates, configs, logs)
  --help
`;

interface Options {
  readonly quick: boolean;
  readonly out: string;
  readonly rounds: number;
  readonly measureMs: number;
  readonly warmupMs: number;
  readonly nginxWarmupMs: number;
  readonly rampMs: number;
  readonly settleMs: number;
  readonly concurrency: number;
  readonly resumeLoops: number;
  readonly workers: number;
  readonly keys: readonly HandshakeKey[];
  readonly scenarios: readonly ScenarioSpec[];
  readonly install: boolean;
  readonly limits: boolean;
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

function yesNo(value: string | undefined, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (value === 'yes') return true;
  if (value === 'no') return false;
  throw new Error(`${name} takes yes or no, got '${value}'`);
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      scenarios: { type: 'string' },
      out: { type: 'string', default: 'bench/results' },
      rounds: { type: 'string' },
      measure: { type: 'string' },
      warmup: { type: 'string' },
      concurrency: { type: 'string', default: '64' },
      'resume-loops': { type: 'string', default: '16' },
      workers: { type: 'string' },
      keys: { type: 'string' },
      setups: { type: 'string' },
      install: { type: 'string' },
      limits: { type: 'string' },
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
  const keys = (values.keys ?? (quick ? 'ec' : 'ec,rsa')).split(',').map((id) => {
    const key = HANDSHAKE_KEYS.find((k) => k.id === id);
    if (key === undefined) throw new Error(`--keys takes ${HANDSHAKE_KEYS.map((k) => k.id).join(', ')}; got '${id}'`);
    return key;
  });
  const setups = (values.setups ?? SETUP_IDS.join(',')).split(',').map((s) => {
    if (!(SETUP_IDS as readonly string[]).includes(s)) throw new Error(`--setups takes ${SETUP_IDS.join(', ')}; got '${s}'`);
    return s as SetupId;
  });
  // Quick leaves out the TLS 1.2 spot check unless asked for.
  const scenarios = selectScenarios(values.scenarios).filter(
    (s) => keys.includes(s.key) && setups.includes(s.setup) && (values.scenarios !== undefined || !quick || s.kind !== 'full-tls12'),
  );
  if (scenarios.length === 0) throw new Error('no scenario left after --scenarios, --keys and --setups');
  if (values.pin !== 'auto' && values.pin !== 'none') throw new Error(`--pin takes auto or none, got '${values.pin}'`);
  if (values.profile !== 'intermediate' && values.profile !== 'modern') throw new Error(`--profile takes intermediate or modern, got '${values.profile}'`);
  const cpus = onlineCpus();
  const auto = values.pin === 'auto' && cpus.length >= 2;
  return {
    quick,
    out: values.out,
    rounds: Math.round(num(values.rounds, '--rounds', quick ? 2 : 3, 1)),
    measureMs: num(values.measure, '--measure', quick ? 0.5 : 4, 0.3) * 1000,
    warmupMs: num(values.warmup, '--warmup', quick ? 0.75 : 4, 0) * 1000,
    nginxWarmupMs: quick ? 300 : 1000,
    rampMs: quick ? 250 : 1000,
    settleMs: quick ? 100 : 300,
    concurrency: Math.round(num(values.concurrency, '--concurrency', 64, 1)),
    resumeLoops: Math.round(num(values['resume-loops'], '--resume-loops', 16, 1)),
    // One worker per core the servers may use, as the product defaults to: two
    // workers on one core cost more per handshake than they hide (bench/README.md).
    workers: Math.round(num(values.workers, '--workers', auto ? cpus.length - 1 : cpus.length, 1)),
    keys,
    scenarios,
    install: yesNo(values.install, '--install', !quick),
    limits: yesNo(values.limits, '--limits', !quick && values.scenarios === undefined),
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
// Processes and counters of each set-up

/** The process groups of a set-up: the TLS front (proxy, nginx) and what holds the key apart from it. */
const SETUP_GROUPS: Readonly<Record<SetupId, { readonly front: string; readonly key: string | undefined }>> = {
  'keyless-unix': { front: 'proxy', key: 'keyserver' },
  'keyless-tcp': { front: 'proxy-tcp', key: 'keyserver' },
  inmemory: { front: 'inmemory', key: undefined },
  'nginx-file': { front: 'nginx-file', key: undefined },
  'nginx-engine': { front: 'nginx-engine', key: undefined },
  'nginx-p11kit': { front: 'nginx-p11kit', key: 'p11kit' },
};

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** What the report says runs in each set-up. */
function setupProcesses(setup: SetupId, workers: number): string {
  switch (setup) {
    case 'keyless-unix':
      return `proxy ${plural(workers, 'worker')} + key server (unix)`;
    case 'keyless-tcp':
      return `proxy ${plural(workers, 'worker')} + key server (mTLS)`;
    case 'inmemory':
      return plural(workers, 'worker');
    case 'nginx-file':
      return 'nginx 1 process';
    case 'nginx-engine':
      return 'nginx 1 process (SoftHSM2 in it)';
    case 'nginx-p11kit':
      return 'nginx 1 process + p11-kit server';
  }
}

function trackedGroups(lab: HandshakeLab, clientPid: number | undefined): TrackedGroup[] {
  const nginx = (variant: 'file' | 'engine' | 'p11kit') => () => [lab.nginx?.instances.get(variant)?.process?.pid ?? -1];
  return [
    { name: 'proxy', roots: () => [lab.proxy?.pid ?? -1] },
    { name: 'proxy-tcp', roots: () => [lab.proxyTcp?.pid ?? -1] },
    { name: 'keyserver', roots: () => [lab.keyserver?.pid ?? -1] },
    { name: 'inmemory', roots: () => [lab.inMemory?.pid ?? -1] },
    { name: 'origin', roots: () => [lab.origin?.pid ?? -1] },
    { name: 'nginx-file', roots: nginx('file') },
    { name: 'nginx-engine', roots: nginx('engine') },
    { name: 'nginx-p11kit', roots: nginx('p11kit') },
    { name: 'p11kit', roots: () => [lab.nginx?.p11kitServer?.pid ?? -1] },
    { name: 'client', roots: () => [clientPid ?? -1] },
  ];
}

/** Every pid a set-up's server consists of, with a role for perf's report. */
function serverProcesses(lab: HandshakeLab, setup: SetupId): Map<number, string> {
  const out = new Map<number, string>();
  const { front, key } = SETUP_GROUPS[setup];
  for (const group of trackedGroups(lab, undefined).filter((g) => g.name === front || g.name === key)) {
    for (const root of group.roots()) {
      if (root <= 0) continue;
      for (const pid of processTree(root)) out.set(pid, pid === root ? `${group.name}` : `${group.name} child`);
    }
  }
  return out;
}

/**
 * The server's own handshake counters. Proxy and in-memory: their admin
 * metrics. nginx: stub_status, whose `requests` counts every request, the
 * status requests included (fetch may reuse the status connection, so
 * `handled` connections would not count them one by one): the bench
 * subtracts its own reads, and with one GET per connection `full` = TLS
 * connections that carried their request (nginx does not tell full from
 * resumed or failed handshakes; ab's and the resuming client's own counts
 * cover that).
 */
class CounterReader {
  readonly #statusReads = new Map<number, number>();
  constructor(readonly lab: HandshakeLab) {}

  async read(setup: SetupId): Promise<HandshakeCounters> {
    const endpoint = this.lab.ports.endpoints[setup];
    if (!isNginx(setup)) return readHandshakeCounters(endpoint.admin);
    const reads = (this.#statusReads.get(endpoint.admin) ?? 0) + 1;
    this.#statusReads.set(endpoint.admin, reads);
    const status = await readNginxStatus(endpoint.admin);
    return { full: status.requests - reads, resumed: 0, failed: 0, requests: {}, keylessSigns: 0 };
  }
}

// ---------------------------------------------------------------------------
// One run of one scenario

interface WindowFigures {
  readonly seconds: number;
  /** Handshakes of the scenario's kind in the window: full (server-counted) for ab kinds, completed connections (client-counted) for resumed. */
  readonly handshakes: number;
  /** Server counters over the window (nginx: connections as `full`). */
  readonly server: HandshakeCounters;
  /** Key server signs in the window, all algorithms (keyless set-ups). */
  readonly keyserverSigns: number | undefined;
  readonly handshakesPerSecond: number;
  /** CPU µs per handshake: the set-up's processes (front + key holder). */
  readonly serverUs: number;
  readonly frontUs: number;
  readonly keyUs: number | undefined;
  readonly originUs: number;
  readonly clientUs: number;
  readonly clientCores: number;
  /** All server-side processes (front, key holder, origin), in cores. */
  readonly serverSideCores: number;
  readonly machineBusyCores: number;
  /** Cores used by processes that are neither ours nor this bench. */
  readonly otherCores: number;
  /** Resumed kind: connections that offered a ticket, of those resumed, and latency in the window. */
  readonly resume:
    | { readonly offered: number; readonly resumed: number; readonly offeredNotResumed: number; readonly p50Us: number; readonly p99Us: number }
    | undefined;
  readonly usage: WindowUsage;
}

interface RunResult {
  readonly window: WindowFigures;
  /** The whole run, idle to idle. */
  readonly run: {
    /** ab kinds. */
    readonly ab: AbResult | undefined;
    /** Resumed kind: the client's failures over the whole run. */
    readonly clientErrors: number;
    readonly clientFirstError: string | undefined;
    readonly counters: HandshakeCounters;
    /** Key server signs by algorithm over the run (keyless only). */
    readonly keyserverSigns: Record<string, number> | undefined;
  };
}

interface BenchScenario extends Scenario<RunResult> {
  readonly spec: ScenarioSpec;
}

interface Env {
  readonly lab: HandshakeLab;
  readonly options: Options;
  readonly counters: CounterReader;
  readonly ca: string;
  readonly perfThreads: Map<string, Map<number, string>>;
}

function windowFigures(
  spec: ScenarioSpec,
  usage: WindowUsage,
  server: HandshakeCounters,
  handshakes: number,
  keyserverSigns: number | undefined,
  clientFromSelf: boolean,
): Omit<WindowFigures, 'resume'> {
  const g = (name: string | undefined) => (name === undefined ? 0 : (usage.groups[name]?.cpuUs ?? 0));
  const { front, key } = SETUP_GROUPS[spec.setup];
  const per = (us: number) => (handshakes > 0 ? us / handshakes : Number.NaN);
  const clientCpu = clientFromSelf ? usage.selfCores * usage.seconds * 1e6 : g('client');
  const ours = Object.values(usage.groups).reduce((n, x) => n + x.cpuUs, 0) / 1e6 / usage.seconds;
  return {
    seconds: usage.seconds,
    handshakes,
    server,
    keyserverSigns,
    handshakesPerSecond: handshakes / usage.seconds,
    serverUs: per(g(front) + g(key)),
    frontUs: per(g(front)),
    keyUs: key === undefined ? undefined : per(g(key)),
    originUs: per(g('origin')),
    clientUs: per(clientCpu),
    clientCores: clientCpu / 1e6 / usage.seconds,
    serverSideCores: (g(front) + g(key) + g('origin')) / 1e6 / usage.seconds,
    machineBusyCores: usage.machineBusyCores,
    otherCores: Math.max(0, usage.machineBusyCores - ours - usage.selfCores),
    usage,
  };
}

async function keyserverSignsNow(env: Env, spec: ScenarioSpec): Promise<Record<string, number> | undefined> {
  return isKeyless(spec.setup) ? readKeyserverSigns(env.lab.ports.keyserverAdmin) : undefined;
}

function signsBetween(a: Record<string, number> | undefined, b: Record<string, number> | undefined): Record<string, number> | undefined {
  if (a === undefined || b === undefined) return undefined;
  return Object.fromEntries(
    Object.keys({ ...a, ...b })
      .map((k) => [k, (b[k] ?? 0) - (a[k] ?? 0)])
      .filter(([, v]) => v !== 0),
  );
}

/** Reads the server's counters (and the key server's signs) until they stop moving, at most 5 s: idle to idle. */
async function settledCounters(env: Env, spec: ScenarioSpec): Promise<{ counters: HandshakeCounters; signs: Record<string, number> | undefined }> {
  let counters = await env.counters.read(spec.setup);
  let signs = await keyserverSignsNow(env, spec);
  for (let i = 0; i < 50; i++) {
    await sleep(Math.max(100, env.options.settleMs / 2));
    const again = await env.counters.read(spec.setup);
    const signsAgain = await keyserverSignsNow(env, spec);
    const same = JSON.stringify([again, signsAgain]) === JSON.stringify([counters, signs]);
    counters = again;
    signs = signsAgain;
    if (same) break;
  }
  return { counters, signs };
}

function startPerf(env: Env, spec: ScenarioSpec, durationMs: number, perfFile: string | undefined): ReturnType<typeof perfRecord> | undefined {
  if (perfFile === undefined) return undefined;
  const processes = serverProcesses(env.lab, spec.setup);
  env.perfThreads.set(perfFile, threadLabels(processes));
  return perfRecord([...processes.keys()], perfFile, durationMs / 1000, env.options.perfHz);
}

/** Full handshakes with ab: start ab, ramp, window, SIGINT, wait for the server to go idle. */
async function runAb(env: Env, spec: ScenarioSpec, durationMs: number, context: RunContext, perfFile: string | undefined): Promise<RunResult> {
  const { options, lab } = env;
  const endpoint = lab.ports.endpoints[spec.setup];
  const signs0 = await keyserverSignsNow(env, spec);
  const run0 = await env.counters.read(spec.setup);
  const ab = startAb({
    port: endpoint.port,
    host: spec.key.serverName,
    concurrency: options.concurrency,
    maxSeconds: (options.rampMs + durationMs) / 1000 + 30,
    csvPath: join(lab.dir, `${spec.id.replaceAll('/', '_')}-${context.phase}-${context.round}.csv`),
    cpus: options.clientCpus,
    protocol: spec.kind === 'full-tls12' ? 'TLS1.2' : 'TLS1.3',
  });
  let window: WindowFigures | undefined;
  try {
    await sleep(options.rampMs, context.signal);
    const tracked = trackedGroups(lab, ab.pid);
    const sA = await keyserverSignsNow(env, spec);
    const cA = await env.counters.read(spec.setup);
    const uA = snapshot(tracked);
    const recording = startPerf(env, spec, durationMs, perfFile);
    await sleep(durationMs, context.signal);
    await recording?.done;
    const cB = await env.counters.read(spec.setup);
    const uB = snapshot(tracked);
    const sB = await keyserverSignsNow(env, spec);
    if (ab.exited()) {
      const r = await ab.done;
      throw new Error(`ab exited before the window closed (status ${r.exitCode ?? r.signal}): ${r.stderr.join(' | ') || 'no message'}`);
    }
    const c = diffCounters(cA, cB);
    const ks = signsBetween(sA, sB);
    window = { ...windowFigures(spec, usageBetween(uA, uB), c, c.full, ks === undefined ? undefined : sumValues(ks), false), resume: undefined };
  } finally {
    ab.stop();
  }
  const abResult = await ab.done;
  // Connections ab abandoned on SIGINT fail on the server side now: wait until the counters stop moving.
  const end = await settledCounters(env, spec);
  return {
    window,
    run: {
      ab: abResult,
      clientErrors: 0,
      clientFirstError: undefined,
      counters: diffCounters(run0, end.counters),
      keyserverSigns: signsBetween(signs0, end.signs),
    },
  };
}

/** Resumed handshakes: the resuming client in this process; its first connections (full) fall in the ramp-up. */
async function runResumed(env: Env, spec: ScenarioSpec, durationMs: number, context: RunContext, perfFile: string | undefined): Promise<RunResult> {
  const { options, lab } = env;
  const signs0 = await keyserverSignsNow(env, spec);
  const run0 = await env.counters.read(spec.setup);
  const load = new ResumeLoad({ port: lab.ports.endpoints[spec.setup].port, serverName: spec.key.serverName, ca: env.ca, loops: options.resumeLoops });
  load.start();
  let window: WindowFigures | undefined;
  try {
    await sleep(options.rampMs, context.signal);
    const tracked = trackedGroups(lab, undefined);
    const sA = await keyserverSignsNow(env, spec);
    const cA = await env.counters.read(spec.setup);
    const l0 = { completed: load.completed, offered: load.offered, resumed: load.resumed, notResumed: load.offeredNotResumed };
    load.latency.reset();
    load.recording = true;
    const uA = snapshot(tracked);
    const recording = startPerf(env, spec, durationMs, perfFile);
    await sleep(durationMs, context.signal);
    await recording?.done;
    const uB = snapshot(tracked);
    load.recording = false;
    const l1 = { completed: load.completed, offered: load.offered, resumed: load.resumed, notResumed: load.offeredNotResumed };
    const cB = await env.counters.read(spec.setup);
    const sB = await keyserverSignsNow(env, spec);
    const ks = signsBetween(sA, sB);
    const latency = load.latency.summary();
    window = {
      ...windowFigures(spec, usageBetween(uA, uB), diffCounters(cA, cB), l1.completed - l0.completed, ks === undefined ? undefined : sumValues(ks), true),
      resume: {
        offered: l1.offered - l0.offered,
        resumed: l1.resumed - l0.resumed,
        offeredNotResumed: l1.notResumed - l0.notResumed,
        p50Us: latency.p50Us,
        p99Us: latency.p99Us,
      },
    };
  } finally {
    await load.stop();
  }
  const end = await settledCounters(env, spec);
  return {
    window,
    run: {
      ab: undefined,
      clientErrors: load.errors,
      clientFirstError: load.firstError,
      counters: diffCounters(run0, end.counters),
      keyserverSigns: signsBetween(signs0, end.signs),
    },
  };
}

// ---------------------------------------------------------------------------
// Summary

interface ScenarioSummary {
  readonly id: string;
  readonly kind: Kind;
  readonly setup: SetupId;
  readonly key: HandshakeKey;
  readonly processes: string;
  readonly handshakesPerSecond: Spread;
  readonly serverUs: Spread;
  readonly frontUs: number;
  readonly keyUs: number | undefined;
  readonly originUs: number;
  readonly clientUs: number;
  readonly clientCores: number;
  readonly serverSideCores: number;
  /** The client used ≥ SATURATED_CORES in the median round: the rate is what one client core could drive, a lower bound of the server's. */
  readonly clientSaturated: boolean;
  readonly serverSaturated: boolean;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly machineBusyCores: number;
  readonly otherCores: number;
  readonly cleanRounds: number;
  readonly usedRounds: readonly number[];
  /** ab failed requests / non-2xx, TLS handshakes the server saw fail inside the windows, the resuming client's failures. */
  readonly errors: {
    readonly abFailed: number;
    readonly non2xx: number;
    readonly windowFailedHandshakes: number;
    readonly clientErrors: number;
    readonly firstClientError: string | undefined;
  };
  readonly totalErrors: number;
  /** Full keyless kinds, over all measured runs: key server signs (matching algorithm) ÷ full handshakes the proxy counted; should be 1. */
  readonly signCheck:
    | {
        readonly signs: number;
        readonly proxySigns: number;
        readonly fullHandshakes: number;
        readonly failedHandshakes: number;
        readonly resumed: number;
        readonly ratio: number;
        readonly ok: boolean;
      }
    | undefined;
  /** Resumed kind, over the windows: tickets offered and resumed; key server signs and server-side full handshakes (keyless). */
  readonly resumeCheck:
    | {
        readonly offered: number;
        readonly resumed: number;
        readonly offeredNotResumed: number;
        readonly keyserverSigns: number | undefined;
        readonly serverFullHandshakes: number | undefined;
        readonly ok: boolean;
      }
    | undefined;
  readonly perRound: readonly RunResult[];
}

const ALGORITHM: Record<HandshakeKey['id'], string> = { ec: 'ECDSA_SHA256', rsa: 'RSA_PSS_SHA256' };

function summarize(scenario: BenchScenario, all: readonly RunResult[], serverCpuCount: number, workers: number): ScenarioSummary {
  const { spec } = scenario;
  const clean = all.map((r, i) => ({ r, i })).filter(({ r }) => r.window.otherCores <= CONTENDED_CORES);
  const used = clean.length >= Math.min(3, all.length) ? clean : all.map((r, i) => ({ r, i }));
  const rs = used.map(({ r }) => r);
  const w = (f: (r: WindowFigures) => number) => median(rs.map((r) => f(r.window)));
  let signCheck: ScenarioSummary['signCheck'];
  if (isKeyless(spec.setup) && spec.kind !== 'resumed-tls13') {
    // TLS 1.3 RSA signs RSA-PSS; TLS 1.2 ECDHE-ECDSA signs with ECDSA: the same algorithms on the wire to the key server.
    const signs = all.reduce((n, r) => n + sumValues(r.run.keyserverSigns ?? {}), 0);
    const matching = all.reduce((n, r) => n + (r.run.keyserverSigns?.[ALGORITHM[spec.key.id]] ?? 0), 0);
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
  let resumeCheck: ScenarioSummary['resumeCheck'];
  if (spec.kind === 'resumed-tls13') {
    const sum = (f: (r: RunResult) => number) => all.reduce((n, r) => n + f(r), 0);
    const offered = sum((r) => r.window.resume?.offered ?? 0);
    const resumed = sum((r) => r.window.resume?.resumed ?? 0);
    const keyserverSigns = isKeyless(spec.setup) ? sum((r) => r.window.keyserverSigns ?? 0) : undefined;
    const serverFullHandshakes = isNginx(spec.setup) ? undefined : sum((r) => r.window.server.full);
    resumeCheck = {
      offered,
      resumed,
      offeredNotResumed: sum((r) => r.window.resume?.offeredNotResumed ?? 0),
      keyserverSigns,
      serverFullHandshakes,
      ok: offered > 0 && resumed === offered && (keyserverSigns ?? 0) === 0 && (serverFullHandshakes ?? 0) === 0,
    };
  }
  const errors = {
    abFailed: all.reduce((n, r) => n + (r.run.ab?.failedRequests ?? 0), 0),
    non2xx: all.reduce((n, r) => n + (r.run.ab?.non2xx ?? 0), 0),
    windowFailedHandshakes: all.reduce((n, r) => n + r.window.server.failed, 0),
    clientErrors: all.reduce((n, r) => n + r.run.clientErrors, 0),
    firstClientError: all.find((r) => r.run.clientFirstError !== undefined)?.run.clientFirstError,
  };
  const { key } = SETUP_GROUPS[spec.setup];
  return {
    id: spec.id,
    kind: spec.kind,
    setup: spec.setup,
    key: spec.key,
    processes: setupProcesses(spec.setup, workers),
    handshakesPerSecond: spread(rs.map((r) => r.window.handshakesPerSecond)),
    serverUs: spread(rs.map((r) => r.window.serverUs)),
    frontUs: w((x) => x.frontUs),
    keyUs: key === undefined ? undefined : w((x) => x.keyUs ?? Number.NaN),
    originUs: w((x) => x.originUs),
    clientUs: w((x) => x.clientUs),
    clientCores: w((x) => x.clientCores),
    serverSideCores: w((x) => x.serverSideCores),
    clientSaturated: w((x) => x.clientCores) >= SATURATED_CORES,
    serverSaturated: w((x) => x.serverSideCores) >= SATURATED_CORES * serverCpuCount,
    p50Us: median(rs.map((r) => r.run.ab?.p50Us ?? r.window.resume?.p50Us ?? Number.NaN)),
    p99Us: median(rs.map((r) => r.run.ab?.p99Us ?? r.window.resume?.p99Us ?? Number.NaN)),
    machineBusyCores: w((x) => x.machineBusyCores),
    otherCores: w((x) => x.otherCores),
    cleanRounds: clean.length,
    usedRounds: used.map(({ i }) => i),
    errors,
    totalErrors: errors.abFailed + errors.non2xx + errors.windowFailedHandshakes + errors.clientErrors,
    signCheck,
    resumeCheck,
    perRound: all,
  };
}

interface TargetRow {
  readonly name: string;
  readonly key: string;
  readonly value: number;
  readonly limit: number;
  readonly met: boolean | undefined;
  readonly detail: string;
}

function find(summaries: readonly ScenarioSummary[], kind: Kind, setup: SetupId, key: HandshakeKey['id']): ScenarioSummary | undefined {
  return summaries.find((s) => s.kind === kind && s.setup === setup && s.key.id === key);
}

/** The issue's targets, from the medians of this run. A row is left out when a scenario it needs did not run. */
function targets(summaries: readonly ScenarioSummary[]): TargetRow[] {
  const out: TargetRow[] = [];
  for (const key of HANDSHAKE_KEYS) {
    const get = (setup: SetupId) => find(summaries, 'full-tls13', setup, key.id)?.serverUs.median;
    const a = get('keyless-unix');
    const c = get('inmemory');
    const e = get('nginx-engine');
    const f = get('nginx-p11kit');
    if (a !== undefined && f !== undefined) {
      const value = a / f;
      out.push({
        name: 'full handshake CPU: keyless (unix) ÷ nginx + p11-kit',
        key: key.title,
        value,
        limit: TARGETS.keylessVsP11kit,
        met: value <= TARGETS.keylessVsP11kit,
        detail: `${fmt(a)} ÷ ${fmt(f)} µs`,
      });
    }
    if (a !== undefined && c !== undefined && e !== undefined && f !== undefined) {
      const hop = a - c;
      const ref = f - e;
      const value = hop / ref;
      out.push({
        name: 'keyless hop ÷ p11-kit hop: (keyless − in memory) ÷ (nginx+p11-kit − nginx+engine)',
        key: key.title,
        value,
        limit: TARGETS.hopVsP11kitHop,
        met: ref > 0 ? value <= TARGETS.hopVsP11kitHop : undefined,
        detail: `${fmt(hop)} ÷ ${fmt(ref)} µs`,
      });
    }
  }
  for (const key of HANDSHAKE_KEYS) {
    const k = find(summaries, 'resumed-tls13', 'keyless-unix', key.id);
    const n = find(summaries, 'resumed-tls13', 'nginx-file', key.id);
    if (k !== undefined && n !== undefined) {
      const value = k.serverUs.median / n.serverUs.median;
      out.push({
        name: 'resumed handshake CPU: keyless ÷ nginx',
        key: key.title,
        value,
        limit: TARGETS.resumedVsNginx,
        met: value <= TARGETS.resumedVsNginx,
        detail: `${fmt(k.serverUs.median)} ÷ ${fmt(n.serverUs.median)} µs`,
      });
    }
    for (const s of [k, n]) {
      if (s?.resumeCheck === undefined) continue;
      const r = s.resumeCheck;
      out.push({
        name: `resumed: every offered ticket resumed${r.keyserverSigns === undefined ? '' : ', 0 key server signs'} (${s.setup})`,
        key: key.title,
        value: r.offered > 0 ? r.resumed / r.offered : Number.NaN,
        limit: 1,
        met: r.ok,
        detail:
          `${fmt(r.resumed)} of ${fmt(r.offered)} offered` +
          (r.keyserverSigns === undefined ? '' : `; key server signs ${r.keyserverSigns}`) +
          (r.serverFullHandshakes === undefined ? '' : `; server full handshakes ${r.serverFullHandshakes}`),
      });
    }
  }
  return out;
}

interface HopRow {
  readonly key: HandshakeKey;
  readonly setup: SetupId;
  readonly hopUs: number;
  readonly frontHopUs: number;
  readonly keyUs: number;
  readonly perRoundUs: readonly number[];
}

/** Keyless − in memory (full TLS 1.3), per transport, and per round (neighbours in time). */
function hops(summaries: readonly ScenarioSummary[]): HopRow[] {
  const out: HopRow[] = [];
  for (const key of HANDSHAKE_KEYS) {
    const m = find(summaries, 'full-tls13', 'inmemory', key.id);
    if (m === undefined) continue;
    for (const setup of ['keyless-unix', 'keyless-tcp'] as const) {
      const k = find(summaries, 'full-tls13', setup, key.id);
      if (k === undefined) continue;
      const rounds = Math.min(k.perRound.length, m.perRound.length);
      out.push({
        key,
        setup,
        hopUs: k.serverUs.median - m.serverUs.median,
        frontHopUs: k.frontUs - m.frontUs,
        keyUs: k.keyUs ?? Number.NaN,
        perRoundUs: Array.from({ length: rounds }, (_, i) => k.perRound[i]!.window.serverUs - m.perRound[i]!.window.serverUs),
      });
    }
  }
  return out;
}

interface Limits {
  readonly openssl: OpensslSpeed | { readonly error: string } | undefined;
  readonly rawToken: readonly RawTokenRate[] | { readonly error: string } | undefined;
  readonly cpus: string | undefined;
}

/** The `summary` array of the result JSON, the shape `npm run bench`, its chart and result comparison read. */
function summaryEntries(summaries: readonly ScenarioSummary[], skipped: ReadonlyMap<SetupId, string>, requested: readonly ScenarioSpec[]) {
  const ran = summaries.map((s) => ({
    scenario: s.id,
    label: `${s.kind === 'full-tls13' ? 'full TLS 1.3' : s.kind === 'full-tls12' ? 'full TLS 1.2' : 'resumed TLS 1.3'}, ${SETUP_TITLE[s.setup]}, ${s.key.title}`,
    handshakesPerSecond: round(s.handshakesPerSecond.median, 1),
    serverCpuUsPerHandshake: round(s.serverUs.median, 1),
    p50Ms: round(s.p50Us / 1000, 2),
    p99Ms: round(s.p99Us / 1000, 2),
    clientSaturated: s.clientSaturated,
    errors: s.totalErrors,
    spreadPct: round(s.handshakesPerSecond.spreadPct, 1),
  }));
  const notRun = requested
    .filter((spec) => skipped.has(spec.setup))
    .map((spec) => ({
      scenario: spec.id,
      label: `${spec.kind}, ${SETUP_TITLE[spec.setup]}, ${spec.key.title}`,
      handshakesPerSecond: Number.NaN,
      serverCpuUsPerHandshake: Number.NaN,
      p50Ms: Number.NaN,
      p99Ms: Number.NaN,
      clientSaturated: false,
      errors: 0,
      spreadPct: Number.NaN,
      skipped: skipped.get(spec.setup)!,
    }));
  return [...ran, ...notRun];
}

// ---------------------------------------------------------------------------
// Report

const SETUP_TITLE: Record<SetupId, string> = {
  'keyless-unix': 'keyless (unix)',
  'keyless-tcp': 'keyless (mTLS)',
  inmemory: 'in memory',
  'nginx-file': 'nginx key file',
  'nginx-engine': 'nginx + pkcs11 engine',
  'nginx-p11kit': 'nginx + p11-kit',
};

const KIND_TITLE: Record<Kind, string> = {
  'full-tls13': 'Full TLS 1.3 handshakes (ab -f TLS1.3, new connection per request)',
  'resumed-tls13': 'Resumed TLS 1.3 handshakes (session tickets, node:tls client, new connection per request)',
  'full-tls12': 'Full TLS 1.2 handshakes, spot check (ab -f TLS1.2)',
};

function rangeText(s: Spread, decimals = 0): string {
  return `${fmt(s.min, decimals)}–${fmt(s.max, decimals)} (${fmt(s.spreadPct, 0)}%)`;
}

interface ReportContext {
  readonly machine: ReturnType<typeof describeMachine>;
  readonly options: Options;
  readonly date: string;
  readonly ab: string | undefined;
  readonly abCommand: string;
  readonly nginxVersion: string | undefined;
  readonly tls: string | undefined;
  readonly skipped: ReadonlyMap<SetupId, string>;
  readonly limits: Limits;
}

function scenarioTable(kind: Kind, summaries: readonly ScenarioSummary[]): string {
  const rows = summaries
    .filter((s) => s.kind === kind)
    .map((s) => [
      s.key.title,
      SETUP_TITLE[s.setup],
      s.processes,
      `${s.clientSaturated ? '≥ ' : ''}${fmt(s.handshakesPerSecond.median)}${s.usedRounds.length > s.cleanRounds ? ' †' : ''}`,
      rangeText(s.handshakesPerSecond),
      `**${fmt(s.serverUs.median)}**`,
      rangeText(s.serverUs),
      s.keyUs === undefined ? `${fmt(s.frontUs)}` : `${fmt(s.frontUs)} + ${fmt(s.keyUs)}`,
      fmt(s.originUs),
      `${fmt(s.clientUs)} (${fmt(s.clientCores, 2)})`,
      `${fmt(s.serverSideCores, 2)}`,
      `${fmt(s.p50Us / 1000, 1)} / ${fmt(s.p99Us / 1000, 1)}`,
      String(s.totalErrors),
      s.signCheck !== undefined
        ? `signs/hs ${fmt(s.signCheck.ratio, 3)}${s.signCheck.ok ? '' : ' ✗'}`
        : s.resumeCheck !== undefined
          ? `resumed ${fmt(s.resumeCheck.resumed)}/${fmt(s.resumeCheck.offered)}${s.resumeCheck.keyserverSigns === undefined ? '' : `, signs ${s.resumeCheck.keyserverSigns}`}${s.resumeCheck.ok ? '' : ' ✗'}`
          : '–',
      `${s.cleanRounds}/${s.perRound.length}`,
      `${fmt(s.machineBusyCores, 2)} / ${fmt(s.otherCores, 2)}`,
    ]);
  return markdownTable(
    [
      'Key',
      'Set-up',
      'processes',
      'handshakes/s',
      'min–max (spread)',
      'server µs/hs',
      'min–max (spread)',
      'front + key holder µs',
      'origin µs',
      'client µs (cores)',
      'server-side cores',
      'p50 / p99 ms',
      'errors',
      'check',
      'clean rounds',
      'busy / others (cores)',
    ],
    rows,
    ['left', 'left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'left', 'right', 'right'],
  );
}

/** How much other load the windows saw: on a shared machine this says how far the absolute figures can be trusted. */
function contentionLine(summaries: readonly ScenarioSummary[]): string {
  const windows = summaries.flatMap((s) => s.perRound.map((r) => r.window.otherCores));
  const contended = windows.filter((c) => c > CONTENDED_CORES).length;
  return (
    `Other load: ${contended} of ${windows.length} windows had more than ${CONTENDED_CORES} cores of other processes (median ${fmt(median(windows), 2)}, max ${fmt(Math.max(...windows), 2)} cores)` +
    (contended > 0 ? ': the server core was shared, absolute figures read high and rates low; compare set-ups within this run.' : '.')
  );
}

function markdownReport(ctx: ReportContext, summaries: readonly ScenarioSummary[], targetRows: readonly TargetRow[], hopRows: readonly HopRow[]): string {
  const { machine, options, limits } = ctx;
  const pin =
    (options.serverCpus === undefined
      ? 'no pinning (scheduler decides)'
      : `servers (proxies, key server, in-memory, nginx, p11-kit server, origin) on CPU ${options.serverCpus}; clients and this bench on CPU ${options.clientCpus}`) +
    (options.keyserverCpus === undefined ? '' : `; key server moved to CPU ${options.keyserverCpus}`);
  const kinds = KINDS.filter((k) => summaries.some((s) => s.kind === k));
  const targetTable =
    targetRows.length === 0
      ? '(needs the scenarios the targets compare)'
      : markdownTable(
          ['Target', 'Key', 'value', 'limit', 'met', 'from'],
          targetRows.map((t) => [t.name, t.key, fmt(t.value, 2), `≤ ${fmt(t.limit, 2)}`, t.met === undefined ? '?' : t.met ? 'yes' : '**no**', t.detail]),
          ['left', 'left', 'right', 'right', 'left', 'left'],
        );
  const hopTable =
    hopRows.length === 0
      ? '(needs keyless and in memory)'
      : markdownTable(
          ['Key', 'Transport', '**hop µs/hs**', 'of which proxy / key server', 'per round (min–max)'],
          hopRows.map((h) => [
            h.key.title,
            SETUP_TITLE[h.setup],
            `**${fmt(h.hopUs)}**`,
            `${fmt(h.frontHopUs)} / ${fmt(h.keyUs)}`,
            `${fmt(Math.min(...h.perRoundUs))}–${fmt(Math.max(...h.perRoundUs))}`,
          ]),
          ['left', 'left', 'right', 'right', 'right'],
        );
  const limitLines: string[] = [];
  if (limits.openssl !== undefined) {
    limitLines.push(
      'error' in limits.openssl
        ? `- openssl speed: failed (${limits.openssl.error})`
        : `- \`${limits.openssl.command}\`: ECDSA P-256 ${fmt(limits.openssl.ecdsaP256SignsPerSecond)} signs/s (${fmt(1e6 / limits.openssl.ecdsaP256SignsPerSecond, 0)} µs each), RSA-2048 ${fmt(limits.openssl.rsa2048SignsPerSecond)} signs/s (${fmt(1e6 / limits.openssl.rsa2048SignsPerSecond, 0)} µs each)`,
    );
  }
  if (limits.rawToken !== undefined) {
    if ('error' in limits.rawToken) limitLines.push(`- raw C_Sign: failed (${limits.rawToken.error})`);
    else {
      for (const r of limits.rawToken) {
        limitLines.push(
          `- raw pkcs11js C_SignInit + C_Sign on the token, ${HANDSHAKE_KEYS.find((k) => k.id === r.key)!.title}, ${r.sessions} sessions: ${fmt(r.signsPerSecond)} signs/s, ${fmt(r.cpuUsPerSign)} µs CPU per sign${r.errors > 0 ? `, ${r.errors} errors` : ''}`,
        );
      }
    }
  }
  const skipped = [...ctx.skipped].map(([setup, reason]) => `- ${setup}: skipped, ${reason}`);
  return [
    `# handshake, ${ctx.date}${options.quick ? ' (quick)' : ''}`,
    '',
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB; ${machine.kernel}; load average at start ${machine.loadAverageAtStart.join(' ')}`,
    `Software: Node ${machine.node}, OpenSSL ${machine.openssl}, ${machine.softhsm2 !== undefined ? `SoftHSM2 ${machine.softhsm2}` : 'SoftHSM2 (version unknown)'}, ${ctx.ab ?? 'ab (version unknown)'}${ctx.nginxVersion === undefined ? '' : `, nginx ${ctx.nginxVersion}`}`,
    `Command: \`${machine.commandLine}\``,
    `Client: \`${ctx.abCommand}\` (${options.concurrency} connections in flight, a new TCP connection and full handshake per request; negotiated ${ctx.tls ?? '?'}); resumed: ${options.resumeLoops} node:tls connections in flight in this bench's process, each offering the newest ticket it got.`,
    `Servers: proxies and in-memory server ${options.workers} workers each (node:cluster), TLS profile ${options.profile}, log level ${options.logLevel}; nginx one process (master_process off, the worker), access log ${options.logLevel === 'warn' || options.logLevel === 'error' || options.logLevel === 'silent' ? 'off' : 'on'}.`,
    `Pinning: ${pin}.`,
    contentionLine(summaries),
    `Method: warm-up ${options.warmupMs / 1000} s per Node scenario (${options.nginxWarmupMs / 1000} s nginx), then ${options.rounds} interleaved rounds; each run starts the client, waits ${options.rampMs} ms, measures a ${options.measureMs / 1000} s window, then stops the client.`,
    ...(skipped.length > 0 ? ['', ...skipped] : []),
    '',
    '## Targets (issue #6)',
    '',
    targetTable,
    '',
    ...kinds.flatMap((k) => [`## ${KIND_TITLE[k]}`, '', scenarioTable(k, summaries), '']),
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
    'signatures ÷ full handshakes the proxy counted over every run, idle to idle (1 = one signature per handshake; ✗ outside',
    '[full, full + failed]); resumed = tickets resumed / offered in the windows, and key server signs in them (must be 0).',
    `Rounds are clean when other processes used ≤ ${CONTENDED_CORES} cores in the window; medians use the clean rounds when at least 3`,
    'are (else all, marked †). Per-round figures for every window are in the JSON.',
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// Profiling run (--perf)

interface PerfRow {
  readonly scenario: string;
  readonly handshakes: number;
  /** Sampled CPU of the recorded processes per handshake in the window (perf's own overhead included). */
  readonly sampledUsPerHandshake: number;
  readonly summary: PerfSummary;
}

function perfMarkdown(rows: readonly PerfRow[], machine: ReturnType<typeof describeMachine>, options: Options, date: string): string {
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
      markdownTable(
        ['process, threads', 'share %', 'µs/hs'],
        r.summary.byProcess.map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]),
        ['left', 'right', 'right'],
      ),
      '',
      markdownTable(
        ['binary', 'share %', 'µs/hs'],
        r.summary.byBinary.slice(0, 8).map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]),
        ['left', 'right', 'right'],
      ),
      '',
      markdownTable(
        ['binary / symbol (self)', 'share %', 'µs/hs'],
        r.summary.bySymbol.slice(0, 25).map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]),
        ['left', 'right', 'right'],
      ),
      '',
      markdownTable(
        ['JS function (inclusive)', 'share %', 'µs/hs'],
        r.summary.jsInclusive.slice(0, 30).map((l) => [l.name, fmt(l.pct, 1), perHs(r, l.pct)]),
        ['left', 'right', 'right'],
      ),
      '',
    ]),
  ].join('\n');
}

// ---------------------------------------------------------------------------
// Main

async function measureLimits(lab: HandshakeLab, options: Options, log: (line: string) => void, signal: AbortSignal): Promise<Limits> {
  const cpus = options.serverCpus;
  let openssl: Limits['openssl'];
  try {
    openssl = await opensslSpeed(cpus, signal);
    log(`openssl speed: ECDSA P-256 ${fmt(openssl.ecdsaP256SignsPerSecond)} signs/s, RSA-2048 ${fmt(openssl.rsa2048SignsPerSecond)} signs/s`);
  } catch (err) {
    openssl = { error: (err as Error).message.split('\n')[0]! };
    log(`openssl speed failed: ${openssl.error}`);
  }
  let rawToken: Limits['rawToken'];
  // The raw loop runs in this process: move it (all threads) to the servers' CPUs for the measurement.
  if (cpus !== undefined) setAffinity(process.pid, cpus);
  try {
    const sessions = cpus === undefined ? 2 : cpus.split(',').length * 2;
    rawToken = await rawTokenRates(lab.keyserverLab.configPath, options.keys, sessions, options.quick ? 500 : 2000, options.quick ? 100 : 300, signal);
    for (const r of rawToken) log(`raw C_Sign ${r.key}: ${fmt(r.signsPerSecond)} signs/s, ${fmt(r.cpuUsPerSign)} µs CPU per sign`);
  } catch (err) {
    rawToken = { error: (err as Error).message.split('\n')[0]! };
    log(`raw C_Sign failed: ${rawToken.error}`);
  } finally {
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
  }
  return { openssl, rawToken, cpus };
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (options === undefined) return 0;
  const started = Date.now();
  const log = (line: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  if (options.scenarios.some((s) => s.kind !== 'resumed-tls13')) ensureAb(log);
  const machine = describeMachine();
  const ab = abVersion();

  let lab: HandshakeLab | undefined;
  const signal = installInterrupt(log, () => lab?.cleanup(options.keepTemp));

  try {
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    const profiling = options.perfDir !== undefined;
    if (options.perfDir !== undefined) {
      if (!havePerf()) throw new Error('--perf needs perf (Debian: apt-get install -y linux-perf)');
      mkdirSync(options.perfDir, { recursive: true });
    }
    const setups = SETUP_IDS.filter((s) => options.scenarios.some((x) => x.setup === s));
    lab = await HandshakeLab.create(
      {
        setups,
        installNginx: options.install,
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
    signal.throwIfAborted();
    await lab.start(log);
    signal.throwIfAborted();
    const running = lab;
    const env: Env = { lab, options, counters: new CounterReader(lab), ca: readFileSync(lab.caFile, 'utf8'), perfThreads: new Map() };

    const scenarios: BenchScenario[] = options.scenarios
      .filter((spec) => running.has(spec.setup))
      .map((spec) => ({
        name: spec.id,
        spec,
        run: (durationMs: number, context: RunContext) => {
          const duration = context.phase === 'warmup' && isNginx(spec.setup) ? Math.min(durationMs, options.nginxWarmupMs) : durationMs;
          const perfFile =
            options.perfDir !== undefined && context.phase === 'measure' ? join(options.perfDir, `${spec.id.replaceAll('/', '_')}.perf.data`) : undefined;
          return spec.kind === 'resumed-tls13' ? runResumed(env, spec, duration, context, perfFile) : runAb(env, spec, duration, context, perfFile);
        },
      }));
    if (scenarios.length === 0) throw new Error(`every scenario asked for was skipped: ${[...lab.skipped.values()].join('; ')}`);

    const limits: Limits =
      options.limits && !profiling ? await measureLimits(lab, options, log, signal) : { openssl: undefined, rawToken: undefined, cpus: undefined };

    const ownPids = () =>
      trackedGroups(running, undefined)
        .flatMap((g) => g.roots())
        .filter((p) => p > 0)
        .flatMap((p) => processTree(p));
    const gate =
      options.quietBudgetMs > 0
        ? new QuietGate({ maxOtherCores: CONTENDED_CORES, sampleMs: 250, ownPids: ownPids(), signal: signal }, options.quietBudgetMs)
        : undefined;
    const quietWaits: { scenario: string; round: number; waitedMs: number; otherCores: number; quiet: boolean }[] = [];
    log(
      `warm-up ${options.warmupMs / 1000} s per Node scenario (${options.nginxWarmupMs / 1000} s nginx), then ${profiling ? 1 : options.rounds} round(s) of ${options.measureMs / 1000} s over ${scenarios.length} scenarios` +
        (options.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${options.serverCpus}, clients on CPU ${options.clientCpus}`),
    );
    const { order, results } = await runRounds(scenarios, {
      rounds: profiling ? 1 : options.rounds,
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
        const split = w.keyUs === undefined ? '' : ` (front ${fmt(w.frontUs)} + key ${fmt(w.keyUs)})`;
        const signs = result.run.keyserverSigns === undefined ? '' : ` signs ${sumValues(result.run.keyserverSigns)}/${result.run.counters.full} full`;
        const resume = w.resume === undefined ? '' : ` resumed ${w.resume.resumed}/${w.resume.offered}`;
        const abErr = result.run.ab === undefined ? 0 : result.run.ab.failedRequests + result.run.ab.non2xx;
        const errors =
          abErr + w.server.failed + result.run.clientErrors > 0
            ? ` ERRORS client ${abErr + result.run.clientErrors} TLS failed ${w.server.failed}${result.run.clientFirstError ? ` (${result.run.clientFirstError})` : ''}`
            : '';
        log(
          `${context.phase === 'warmup' ? 'warm-up ' : `round ${context.round + 1} `}${scenario.padEnd(32)} ${fmt(w.handshakesPerSecond).padStart(6)} hs/s  server ${fmt(w.serverUs)} µs/hs${split}` +
            `  client ${fmt(w.clientUs)} µs/hs (${fmt(w.clientCores, 2)} cores)  server-side ${fmt(w.serverSideCores, 2)}  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}${signs}${resume}${errors}`,
        );
      },
    });

    const date = dateStamp();
    const serverCpuCount = options.serverCpus === undefined ? machine.cores : options.serverCpus.split(',').length;
    const summaries = scenarios.map((s) => summarize(s, results.get(s.name) ?? [], serverCpuCount, options.workers));
    const firstAb = summaries.find((s) => s.kind === 'full-tls13')?.perRound[0]?.run.ab;
    const ctx: ReportContext = {
      machine,
      options,
      date,
      ab,
      abCommand: `${options.clientCpus === undefined ? '' : `taskset -c ${options.clientCpus} `}ab ${abArgs({
        port: 0,
        host: 'KEY.bench.localhost',
        concurrency: options.concurrency,
        maxSeconds: 0,
        csvPath: 'FILE.csv',
        cpus: undefined,
      })
        .map((a) => (a.includes(' ') ? `'${a}'` : a))
        .join(' ')
        .replace(/-t \d+/, '-t T')
        .replace(/-n \d+/, '-n N')
        .replace('127.0.0.1:0', '127.0.0.1:PORT')}`,
      nginxVersion: lab.nginxTools?.version,
      tls: firstAb === undefined ? undefined : `${firstAb.tlsProtocol ?? '?'}, ${firstAb.serverTempKey ?? '?'}`,
      skipped: lab.skipped,
      limits,
    };

    if (options.perfDir !== undefined) {
      const perfDir = options.perfDir;
      const rows: PerfRow[] = [];
      for (const s of scenarios) {
        const window = results.get(s.name)?.[0]?.window;
        if (window === undefined) continue;
        const file = join(perfDir, `${s.name.replaceAll('/', '_')}.perf.data`);
        const summary = await summarizePerf(file, options.perfHz, env.perfThreads.get(file) ?? new Map());
        rows.push({
          scenario: s.name,
          handshakes: window.handshakes,
          sampledUsPerHandshake: ((summary.samples / options.perfHz) * 1e6) / window.handshakes,
          summary,
        });
      }
      const md = perfMarkdown(rows, machine, options, date);
      const written = writeReport(
        options.out,
        'handshake-perf',
        {
          benchmark: 'handshake-perf',
          date,
          machine,
          command: machine.commandLine,
          options,
          perf: rows,
          scenarios: summaries.map((s) => ({ name: s.id, window: s.perRound[0]?.window })),
        },
        md,
        date,
      );
      process.stdout.write(`${md}\n`);
      log(`wrote ${written.jsonPath} and ${written.markdownPath}; perf data in ${perfDir} (perf report -i FILE)`);
      return 0;
    }

    const targetRows = targets(summaries);
    const hopRows = hops(summaries);
    const markdown = markdownReport(ctx, summaries, targetRows, hopRows);
    const json = {
      benchmark: 'handshake',
      date,
      quick: options.quick,
      command: machine.commandLine,
      machine,
      summary: summaryEntries(summaries, lab.skipped, options.scenarios),
      targets: targetRows.map((t) => ({ ...t, value: round(t.value, 3), limit: round(t.limit, 3) })),
      skipped: Object.fromEntries(lab.skipped),
      client: { ab, command: ctx.abCommand, concurrency: options.concurrency, resumeLoops: options.resumeLoops, cpus: options.clientCpus },
      servers: {
        workers: options.workers,
        nginx:
          lab.nginxTools === undefined
            ? undefined
            : { version: lab.nginxTools.version, processes: 1, masterProcess: false, engine: lab.nginxTools.engine, p11kitClient: lab.nginxTools.p11kitClient },
        cpus: options.serverCpus,
        keyserverCpus: options.keyserverCpus ?? options.serverCpus,
        logLevel: options.logLevel,
        tlsProfile: options.profile,
      },
      method: {
        rounds: options.rounds,
        measureMs: options.measureMs,
        warmupMs: options.warmupMs,
        nginxWarmupMs: options.nginxWarmupMs,
        rampMs: options.rampMs,
        settleMs: options.settleMs,
        order,
        contendedCores: CONTENDED_CORES,
        saturatedCores: SATURATED_CORES,
        quietWait: { budgetMs: options.quietBudgetMs, waitedMs: gate?.waitedMs ?? 0, waits: quietWaits },
      },
      limits,
      keys: options.keys.map((k) => ({ id: k.id, name: KEY_NAME[k.id], title: k.title, type: k.type, serverName: k.serverName, keyId: lab!.keyIds.get(k.id) })),
      proxyConfig: lab.proxyConfig,
      proxyTcpConfig: lab.proxyTcpConfig,
      inMemoryConfig: lab.inMemoryConfig,
      keyless_hop: hopRows.map((h) => ({
        key: h.key.id,
        setup: h.setup,
        hopUs: round(h.hopUs),
        frontHopUs: round(h.frontHopUs),
        keyUs: round(h.keyUs),
        perRoundUs: h.perRoundUs.map((v) => round(v)),
      })),
      scenarios: summaries.map((s) => ({ ...s, key: s.key.id })),
      durationSeconds: (Date.now() - started) / 1000,
    };
    const written = writeReport(options.out, options.quick ? 'handshake-quick' : 'handshake', json, markdown, date);
    process.stdout.write(`${markdown}\n`);
    log(`wrote ${written.jsonPath} and ${written.markdownPath}`);
    const errors = summaries.reduce((n, s) => n + s.totalErrors, 0);
    const badSigns = summaries.filter((s) => s.signCheck !== undefined && !s.signCheck.ok);
    if (badSigns.length > 0) log(`sign count does not match handshakes for ${badSigns.map((s) => s.id).join(', ')}: see the JSON`);
    if (errors > 0) {
      log(`${errors} requests or handshakes failed during measurement: the figures are suspect`);
      return 1;
    }
    return badSigns.length > 0 ? 1 : 0;
  } finally {
    if (lab !== undefined) {
      // V8's /tmp/perf-<pid>.map files (--perf-basic-prof) of every Node server process.
      const pids = [lab.proxy, lab.proxyTcp, lab.inMemory].flatMap((p) => (p === undefined ? [] : processTree(p.pid))).concat(lab.keyserver?.pid ?? []);
      await lab.stop().catch(() => undefined);
      if (options.perfDir !== undefined) removePerfMaps(pids);
      if (options.keepTemp) log(`kept ${lab.dir}`);
      lab.cleanup(options.keepTemp);
    }
  }
}

runBench('handshake', main());
