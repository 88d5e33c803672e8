/**
 * Benchmark: CPU per TLS handshake through the keyless proxy, next to the same proxy holding the key in memory, the
 * node:https floor and nginx holding it three ways, also under other Node majors (--node 20,22,24); issues 6, 12, 13.
 * Set-ups: lab.ts; kinds: scenarios.ts; one run: measure.ts; figures and targets: summary.ts; Markdown: report.ts;
 * method and columns: bench/README.md, "handshake".
 *
 * Usage: node dist/bench/handshake/main.js [--quick] [options]   (--help)
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { listOf, parseCli, pinning, std, timing } from '../harness/cli.js';
import { shownCommand } from '../harness/spawn.js';
import { versionOf } from '../harness/install.js';
import { nodeBinary, nodeVersionOf, OWN_MAJOR, parseMajors } from '../harness/install.js';
import { havePerf, removePerfMaps, summarizePerf } from '../harness/perf.js';
import { processTree } from '../harness/proc-cpu.js';
import { setAffinity } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import type { RunContext } from '../harness/rounds.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { round } from '../harness/stats.js';
import { sumValues } from '../lab/counters.js';
import { abArgs, ensureAb } from './ab.js';
import { negotiates } from './alpn.js';
import { HANDSHAKE_KEYS, HandshakeLab, isNginx, SETUP_IDS } from './lab.js';
import { opensslSpeed, rawTokenRates } from './limits.js';
import { type BenchScenario, CounterReader, type Env, type RunResult, runScenario, trackedGroups } from './measure.js';
import { markdownReport, type PerfRow, perfMarkdown } from './report.js';
import { allScenarios, KEY_NAME, KINDS, selectScenarios } from './scenarios.js';
import { hops, type Limits, summarize, summaryEntries, targets } from './summary.js';

const TABLE = {
  quick: std.quick('2 rounds of 0.5 s, 0.75 s warm-up, ECDSA only, no TLS 1.2 or ALPN kinds, no limits, nginx only when installed (< 60 s)'),
  scenarios: {
    kind: 'string',
    arg: 'LIST',
    help: `only these scenarios: comma-separated ids kind/setup/key, * within a part, e.g. 'full-tls13/*/ecdsa' (kinds ${KINDS.join(', ')}; setups ${SETUP_IDS.join(', ')}, Node ones also <setup>-node<major>; keys ecdsa, rsa)`,
  },
  keys: { kind: 'string', arg: 'ec,rsa', def: 'ec,rsa', quick: 'ec', help: 'key types' },
  setups: { kind: 'string', arg: 'LIST', help: 'base set-ups (default all)' },
  node: std.node,
  out: std.out('handshake'),
  rounds: std.rounds(3, 2),
  measure: std.measure(4, 0.5),
  warmup: std.warmup(4, 0.75, 'per Node scenario (nginx: 1 s, quick 0.3)'),
  concurrency: { kind: 'number', arg: 'N', def: 64, min: 1, integer: true, help: 'ab -c: connections in flight' },
  'resume-loops': { kind: 'number', arg: 'N', def: 16, min: 1, integer: true, help: 'connections in flight of the resuming and ALPN clients' },
  workers: { kind: 'number', arg: 'N', min: 1, integer: true, help: 'workers of the proxies and the in-memory server (default: one per server CPU)' },
  install: std.install('nginx, libengine-pkcs11-openssl, p11-kit, p11-kit-modules'),
  limits: { kind: 'string', arg: 'yes|no', choices: ['yes', 'no'], help: 'openssl speed and raw C_Sign on the token (default yes; quick and --scenarios no)' },
  pin: std.pin,
  'server-cpus': std.serverCpus,
  'client-cpus': std.clientCpus,
  'keyserver-cpus': { kind: 'string', arg: 'LIST', help: 'taskset CPU list for the key server alone (default: with the servers)' },
  'log-level': std.logLevel,
  profile: { kind: 'string', arg: 'NAME', def: 'intermediate', choices: ['intermediate', 'modern'], help: 'TLS profile of the proxies' },
  'quiet-wait': std.quietWait,
  perf: { kind: 'string', arg: 'DIR', help: 'profiling run instead: servers under node --perf-basic-prof, one window per scenario under perf record' },
  'perf-hz': { kind: 'number', arg: 'N', def: 499, min: 1, integer: true, help: 'perf sampling frequency' },
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('handshake/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  const quick = v.quick;
  const keys = listOf(v.keys, '--keys', ['ec', 'rsa'] as const).map((id) => HANDSHAKE_KEYS.find((k) => k.id === id)!);
  const setups = listOf(v.setups ?? SETUP_IDS.join(','), '--setups', SETUP_IDS);
  const majors = parseMajors(v.node);
  // Quick leaves out the TLS 1.2 spot check and the ALPN pair unless asked for.
  const scenarios = selectScenarios(v.scenarios, allScenarios(majors)).filter(
    (s) =>
      keys.includes(s.key) &&
      setups.some((b) => s.setup === b || s.setup.startsWith(`${b}-node`)) &&
      (v.scenarios !== undefined || !quick || s.kind === 'full-tls13' || s.kind === 'resumed-tls13'),
  );
  if (scenarios.length === 0) throw new Error('no scenario left after --scenarios, --keys and --setups');
  const pins = pinning(v);
  return {
    ...timing(v, [1000, 250], [300, 100]),
    nginxWarmupMs: quick ? 300 : 1000,
    concurrency: v.concurrency,
    resumeLoops: v['resume-loops'],
    // One worker per core the servers may use, as the product defaults to: two workers on one core cost more per
    // handshake than they hide (bench/README.md).
    workers: v.workers ?? pins.serverCpuCount,
    keys,
    majors,
    scenarios,
    install: v.install === 'yes',
    limits: (v.limits ?? (!quick && v.scenarios === undefined ? 'yes' : 'no')) === 'yes',
    ...pins,
    keyserverCpus: v['keyserver-cpus'],
    logLevel: v['log-level'],
    profile: v.profile as 'intermediate' | 'modern',
    perfDir: v.perf === undefined ? undefined : resolve(v.perf),
    perfHz: v['perf-hz'],
    keepTemp: v['keep-temp'],
  };
}

/** openssl speed and raw C_Sign on the server CPUs, each reporting its error instead of failing the run. */
async function measureLimits(lab: HandshakeLab, options: Options, log: (line: string) => void, signal: AbortSignal): Promise<Limits> {
  const cpus = options.serverCpus;
  const tried = async <T>(what: string, f: () => Promise<T>, say: (x: T) => string[]): Promise<T | { error: string }> => {
    try {
      const x = await f();
      for (const line of say(x)) log(line);
      return x;
    } catch (err) {
      const error = (err as Error).message.split('\n')[0]!;
      log(`${what} failed: ${error}`);
      return { error };
    }
  };
  const openssl = await tried(
    'openssl speed',
    () => opensslSpeed(cpus, signal),
    (o) => [`openssl speed: ECDSA P-256 ${fmt(o.ecdsaP256SignsPerSecond)} signs/s, RSA-2048 ${fmt(o.rsa2048SignsPerSecond)} signs/s`],
  );
  // The raw loop runs in this process: move it (all threads) to the servers' CPUs for the measurement.
  if (cpus !== undefined) setAffinity(process.pid, cpus);
  const sessions = cpus === undefined ? 2 : cpus.split(',').length * 2;
  const [windowMs, rampMs] = options.quick ? [500, 100] : [2000, 300];
  const rawToken = await tried(
    'raw C_Sign',
    () => rawTokenRates(lab.keyserverLab.configPath, options.keys, sessions, windowMs, rampMs, signal),
    (rates) => rates.map((r) => `raw C_Sign ${r.key}: ${fmt(r.signsPerSecond)} signs/s, ${fmt(r.cpuUsPerSign)} µs CPU per sign`),
  );
  if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
  return { openssl, rawToken, cpus };
}

interface Lab {
  readonly lab: HandshakeLab;
  readonly env: Env;
  /** ALPN h2 scenarios whose server does not negotiate h2, with the reason. */
  readonly noH2: Map<string, string>;
  readonly nodeVersions: Map<number, string>;
  readonly ab: string | undefined;
  limits?: Limits;
}

const HANDSHAKE: MeasuringBench<Options, Lab, BenchScenario, RunResult> = {
  name: 'handshake',
  parse: parseOptions,
  async setup(options, { log, signal }, hold) {
    if (options.scenarios.some((s) => s.kind !== 'resumed-tls13')) ensureAb(log);
    const ab = versionOf('ab', ['-V']);
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    if (options.perfDir !== undefined) {
      if (!havePerf()) throw new Error('--perf needs perf (Debian: apt-get install -y linux-perf)');
      mkdirSync(options.perfDir, { recursive: true });
    }
    const setups = [...new Set(options.scenarios.map((x) => x.setup))];
    const nodeBinaries = new Map(options.majors.filter((m) => m !== OWN_MAJOR).map((m) => [m, nodeBinary(m, log)] as const));
    const nodeVersions = new Map([[OWN_MAJOR, `${process.version} (OpenSSL ${process.versions.openssl})`]]);
    for (const [m, bin] of nodeBinaries) nodeVersions.set(m, nodeVersionOf(bin));
    if (options.majors.length > 1) log(`Node servers under ${[...nodeVersions.values()].join(', ')}`);
    const nodeArgs = options.perfDir !== undefined ? ['--perf-basic-prof'] : [];
    const lab = await HandshakeLab.create({ ...options, setups, installNginx: options.install, nodeBinaries, nodeArgs }, log);
    const env: Env = { lab, options, counters: new CounterReader(lab), ca: readFileSync(lab.caFile, 'utf8'), perfThreads: new Map() };
    const held: Lab = { lab, env, noH2: new Map(), nodeVersions, ab };
    hold(held);
    log(`temp dir ${lab.dir}`);
    signal.throwIfAborted();
    await lab.start(log);
    return held;
  },
  async scenarios(held, options, { log, signal }) {
    const { lab, env, noH2 } = held;
    // ALPN h2: a server that does not negotiate h2 (keyedge before its HTTP/2 support) is skipped with a note.
    for (const spec of options.scenarios.filter((s) => s.kind === 'alpn-h2' && lab.has(s.setup))) {
      const picked = await negotiates({ port: lab.ports.endpoints[spec.setup]!.port, serverName: spec.key.serverName, ca: env.ca, protocol: 'h2' });
      if (picked !== 'h2') noH2.set(spec.id, `does not negotiate h2 (ALPN answer: ${picked || 'none'})`);
    }
    for (const [id, reason] of noH2) log(`${id}: skipped, the server ${reason}`);
    const scenarios = options.scenarios
      .filter((spec) => lab.has(spec.setup) && !noH2.has(spec.id))
      .map((spec) => ({
        name: spec.id,
        spec,
        run: (durationMs: number, context: RunContext) => {
          const duration = context.phase === 'warmup' && isNginx(spec.setup) ? Math.min(durationMs, options.nginxWarmupMs) : durationMs;
          const perfFile = options.perfDir !== undefined && context.phase === 'measure' ? perfFileOf(options.perfDir, spec.id) : undefined;
          return runScenario(env, spec, duration, context, perfFile);
        },
      }));
    if (scenarios.length === 0) throw new Error(`every scenario asked for was skipped: ${[...lab.skipped.values()].join('; ')}`);
    const none = { openssl: undefined, rawToken: undefined, cpus: undefined };
    held.limits = options.limits && options.perfDir === undefined ? await measureLimits(lab, options, log, signal) : none;
    return scenarios;
  },
  ownPids: ({ lab }) =>
    trackedGroups(lab, undefined)
      .flatMap((g) => g.roots())
      .filter((p) => p > 0)
      .flatMap((p) => processTree(p)),
  plan: (o, scenarios) =>
    `warm-up ${o.warmupMs / 1000} s per Node scenario (${o.nginxWarmupMs / 1000} s nginx), then ${o.perfDir !== undefined ? 1 : o.rounds} round(s) of ${o.measureMs / 1000} s over ${scenarios.length} scenarios` +
    (o.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${o.serverCpus}, clients on CPU ${o.clientCpus}`),
  rounds: (o) => ({ rounds: o.perfDir !== undefined ? 1 : o.rounds }),
  pad: 32,
  line({ window: w, run }) {
    const split = w.keyUs === undefined ? '' : ` (front ${fmt(w.frontUs)} + key ${fmt(w.keyUs)})`;
    const signs = run.keyserverSigns === undefined ? '' : ` signs ${sumValues(run.keyserverSigns)}/${run.counters.full} full`;
    const resume = w.resume === undefined ? '' : ` resumed ${w.resume.resumed}/${w.resume.offered}`;
    const abErr = run.ab === undefined ? 0 : run.ab.failedRequests + run.ab.non2xx;
    const errors =
      abErr + w.server.failed + run.clientErrors > 0
        ? ` ERRORS client ${abErr + run.clientErrors} TLS failed ${w.server.failed}${run.clientFirstError ? ` (${run.clientFirstError})` : ''}`
        : '';
    return (
      `${fmt(w.handshakesPerSecond).padStart(6)} hs/s  server ${fmt(w.serverUs)} µs/hs${split}  client ${fmt(w.clientUs)} µs/hs (${fmt(w.clientCores, 2)} cores)` +
      `  server-side ${fmt(w.serverSideCores, 2)}  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}${signs}${resume}${errors}`
    );
  },
  async report(held, options, scenarios, { results, failures, method }, { log, machine, date }) {
    const { lab, env, noH2, nodeVersions, ab } = held;
    const failed = (name: string) => failures.filter((f) => f.scenario === name && f.phase === 'measure').length;
    const summaries = scenarios.map((s) => summarize(s, results.get(s.name) ?? [], options.serverCpuCount, options.workers, failed(s.name)));
    if (options.perfDir !== undefined) {
      const rows: PerfRow[] = [];
      for (const s of scenarios) {
        const window = results.get(s.name)?.[0]?.window;
        if (window === undefined) continue;
        const file = perfFileOf(options.perfDir, s.name);
        const summary = await summarizePerf(file, options.perfHz, env.perfThreads.get(file) ?? new Map());
        rows.push({
          scenario: s.name,
          handshakes: window.handshakes,
          sampledUsPerHandshake: ((summary.samples / options.perfHz) * 1e6) / window.handshakes,
          summary,
        });
      }
      log(`perf data in ${options.perfDir} (perf report -i FILE)`);
      const json = {
        benchmark: 'handshake-perf',
        command: machine.commandLine,
        options,
        perf: rows,
        scenarios: summaries.map((s) => ({ name: s.id, window: s.perRound[0]?.window })),
      };
      return { json, markdown: perfMarkdown(rows, machine, options, date), errors: 0, what: '', file: 'handshake-perf' };
    }
    const targetRows = targets(summaries, options.majors);
    const hopRows = hops(summaries);
    const firstAb = summaries.find((s) => s.kind === 'full-tls13')?.perRound[0]?.run.ab;
    const abShown = abArgs({ port: 0, host: 'KEY.bench.localhost', concurrency: options.concurrency, maxSeconds: 0, csvPath: 'FILE.csv', cpus: undefined });
    const abCommand = shownCommand(options.clientCpus, 'ab', abShown, [
      [/-t \d+/, '-t T'],
      [/-n \d+/, '-n N'],
      [/127\.0\.0\.1:0/, '127.0.0.1:PORT'],
    ]);
    const skipped = new Map([...lab.skipped, ...[...noH2].map(([id, reason]) => [id, `the server ${reason}`] as const)]);
    const tools = lab.nginxTools;
    const tls = firstAb === undefined ? undefined : `${firstAb.tlsProtocol ?? '?'}, ${firstAb.serverTempKey ?? '?'}`;
    const ctx = { machine, options, date, ab, abCommand, nginxVersion: tools?.version, tls, skipped, limits: held.limits!, nodeVersions, failures };
    const json = {
      command: machine.commandLine,
      summary: summaryEntries(summaries, (spec) => lab.skipped.get(spec.setup) ?? noH2.get(spec.id), options.scenarios),
      targets: targetRows.map((t) => ({ ...t, value: round(t.value, 3), limit: t.limit === undefined ? null : round(t.limit, 3) })),
      skipped: Object.fromEntries(skipped),
      client: { ab, command: abCommand, concurrency: options.concurrency, resumeLoops: options.resumeLoops, cpus: options.clientCpus },
      servers: {
        workers: options.workers,
        nginx: tools && { version: tools.version, processes: 1, masterProcess: false, engine: tools.engine, p11kitClient: tools.p11kitClient },
        cpus: options.serverCpus,
        keyserverCpus: options.keyserverCpus ?? options.serverCpus,
        logLevel: options.logLevel,
        tlsProfile: options.profile,
      },
      method: method({ nginxWarmupMs: options.nginxWarmupMs }),
      failedRounds: failures,
      limits: held.limits,
      keys: options.keys.map((k) => ({ id: k.id, name: KEY_NAME[k.id], title: k.title, type: k.type, serverName: k.serverName, keyId: lab.keyIds.get(k.id) })),
      nodeVersions: Object.fromEntries(nodeVersions),
      serverConfigs: Object.fromEntries(lab.configs),
      keyless_hop: hopRows.map((h) => ({
        ...{ key: h.key.id, setup: h.setup, hopUs: round(h.hopUs), frontHopUs: round(h.frontHopUs), keyUs: round(h.keyUs) },
        perRoundUs: h.perRoundUs.map((v) => round(v)),
      })),
      scenarios: summaries.map((s) => ({ ...s, key: s.key.id })),
    };
    const badSigns = summaries.filter((s) => s.signCheck !== undefined && !s.signCheck.ok);
    if (badSigns.length > 0) log(`sign count does not match handshakes for ${badSigns.map((s) => s.id).join(', ')}: see the JSON`);
    const errors = summaries.reduce((n, s) => n + s.totalErrors, 0);
    return { json, markdown: markdownReport(ctx, summaries, targetRows, hopRows), errors, what: 'requests or handshakes', status: badSigns.length > 0 ? 1 : 0 };
  },
  async close({ lab }, options, log) {
    // V8's /tmp/perf-<pid>.map files (--perf-basic-prof) of every Node server process.
    const pids = [...lab.servers.values()].flatMap((p) => processTree(p.pid)).concat(lab.keyserver?.pid ?? []);
    await lab.close(options.keepTemp, log);
    if (options.perfDir !== undefined) removePerfMaps(pids);
  },
  kill: ({ lab }, options) => lab.cleanup(options.keepTemp),
};

const perfFileOf = (dir: string, id: string): string => join(dir, `${id.replaceAll('/', '_')}.perf.data`);

runMeasuring(HANDSHAKE);
