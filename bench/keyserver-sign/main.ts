/**
 * Benchmark: signatures per second through the key server against the token's own ceiling (issue 4), for ECDSA P-256
 * and RSA-2048 on one SoftHSM2 token: raw pkcs11js sessions in this process (cores and 2 × cores: the faster is the
 * ceiling), the key server over its unix socket, and over mutual TLS 1.3. Warm-up, then interleaved rounds
 * (harness/runner.ts); per scenario medians, ratios to the ceiling, latency and CPU per sign. Method and figures:
 * bench/README.md, "keyserver-sign".
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { cleanRounds } from '../harness/runner.js';
import { listOf, parseCli, std, timing } from '../harness/cli.js';
import { fmt } from '../harness/report.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { KeyserverLab } from '../lab/keyserver.js';
import { BENCH_KEYS, type BenchKey, parsePipeline, type Pipeline, pipelineName } from './keys.js';
import { RawToken, type WindowResult } from './load.js';
import { markdownReport, scenariosJson, summarize, TARGET_RATIO } from './report.js';
import {
  type BenchScenario,
  EXPLORE_TOLERANCE,
  type ExploreRow,
  explorePipeline,
  type IdleLatencyRow,
  idleLatency,
  keyserverScenario,
  PIPELINE_CANDIDATES,
  rawScenario,
  type SignRig,
} from './scenarios.js';

const TABLE = {
  quick: std.quick('3 rounds of ~1 s, 1 s warm-up, short pipeline exploration (< 1 min)'),
  out: std.out('keyserver-sign'),
  rounds: std.rounds(5, 3),
  measure: std.measure(4, 1, 0.2),
  warmup: std.warmup(2, 1),
  client: {
    kind: 'string',
    arg: 'lean|library',
    def: 'lean',
    choices: ['lean', 'library'],
    help: "key-server client: the lean pipelining client or the project's KeyserverClient",
  },
  pipeline: { kind: 'string', arg: 'CxD', help: 'C connections x D requests in flight each, for both key types (skips the exploration), e.g. 2x32' },
  sessions: { kind: 'number', arg: 'N', min: 1, integer: true, help: "the key server's pkcs11.sessions (default: product default)" },
  'server-cpu-prof': { kind: 'string', arg: 'DIR', help: 'run the key server under node --cpu-prof, profile to DIR' },
  keys: { kind: 'string', arg: 'ec,rsa', def: BENCH_KEYS.map((k) => k.id).join(','), help: 'key types to run' },
  paths: { kind: 'string', arg: 'LIST', def: 'raw,unix,tls', help: 'paths to run (raw is needed for the ratios)' },
  'quiet-wait': std.quietWait,
  'extra-rounds': { kind: 'number', arg: 'N', def: 2, quick: 0, min: 0, integer: true, help: 'up to N more rounds while a scenario has < 3 clean rounds' },
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('keyserver-sign/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  const paths = listOf(v.paths, '--paths', ['raw', 'unix', 'tls'] as const);
  return {
    ...v,
    ...timing(v, [300, 150], [200, 50]),
    exploreMs: v.quick ? 250 : 1000,
    explorePasses: v.quick ? 1 : 2,
    idleMs: v.quick ? 300 : 2000,
    client: v.client as SignRig['client'],
    pipeline: v.pipeline === undefined ? undefined : parsePipeline(v.pipeline),
    keys: listOf(v.keys, '--keys', ['ec', 'rsa'] as const).map((id) => BENCH_KEYS.find((k) => k.id === id)!),
    // In this order whatever the order given.
    paths: (['raw', 'unix', 'tls'] as const).filter((p) => paths.includes(p)),
  };
}

/** The lab, the raw token opened in this process, the key ids, the pipeline per key, the exploration and the idle latencies. */
interface Lab {
  readonly lab: KeyserverLab;
  raw?: RawToken;
  rig?: SignRig;
  readonly keyIds: Map<string, string>;
  readonly chosen: Map<string, Pipeline>;
  readonly explore: ExploreRow[];
  readonly scenarios: BenchScenario[];
}

const cores = os.availableParallelism();
const rawSessionCounts = [...new Set([cores, 2 * cores])];

const KEYSERVER_SIGN: MeasuringBench<Options, Lab, BenchScenario, WindowResult> = {
  name: 'keyserver-sign',
  parse: parseOptions,
  async setup(options, { log, signal }, hold) {
    const poolThreads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    if (poolThreads < 2 * cores)
      process.stderr.write(`warning: libuv has ${poolThreads} threads for up to ${2 * cores} raw sessions; raw figures will be low\n`);
    const lab = new KeyserverLab(options.sessions === undefined ? {} : { sessions: options.sessions });
    const held: Lab = { lab, keyIds: new Map(), chosen: new Map(), explore: [], scenarios: [] };
    hold(held);
    const { keyIds } = held;
    log(`temp dir ${lab.dir}`);
    for (const key of options.keys) {
      keyIds.set(key.id, await lab.generateKey(key.type, key.label));
      log(`generated ${key.title} key ${keyIds.get(key.id)!.slice(0, 16)}… with keyedge key generate`);
    }
    signal.throwIfAborted();
    // The raw side: the same token, opened in this process.
    held.raw = new RawToken(lab.configPath, 2 * cores);
    const prof = options['server-cpu-prof'];
    const server = await lab.startServer(prof === undefined ? {} : { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', prof] });
    log(`key server pid ${server.pid}, unix ${server.unixPath}, tcp 127.0.0.1:${server.tcpPort}, sessions ${held.raw.config.pkcs11.sessions}`);
    const digests = Array.from({ length: 16 }, () => randomBytes(32));
    held.rig = { lab, server, client: options.client, digests, keyIds, rampMs: options.rampMs };
    return held;
  },
  async scenarios(held, options, { log, signal }) {
    const rig = held.rig!;
    // The pipeline setting per key type: given, or explored on the unix socket.
    const transports = options.paths.filter((p) => p !== 'raw');
    for (const key of options.keys) {
      if (options.pipeline !== undefined) held.chosen.set(key.id, options.pipeline);
      if (options.pipeline !== undefined || transports.length === 0) continue;
      log(`exploring pipeline settings for ${key.title} (${options.explorePasses} pass(es) of ${options.exploreMs} ms each)`);
      const result = await explorePipeline(rig, key, options.exploreMs, options.explorePasses, signal, log);
      held.chosen.set(key.id, result.chosen);
      held.explore.push(...result.rows);
    }
    for (const key of options.keys) {
      if (options.paths.includes('raw')) for (const n of rawSessionCounts) held.scenarios.push(rawScenario(key, rawLoad(held, key, n), options.rampMs));
      for (const transport of transports) held.scenarios.push(keyserverScenario(rig, key, transport, held.chosen.get(key.id)!));
    }
    return held.scenarios;
  },
  ownPids: (held) => [held.rig!.server.pid],
  plan: (o, scenarios) => `warm-up ${o.warmupMs / 1000} s per scenario, then ${o.rounds} rounds of ${o.measureMs / 1000} s over ${scenarios.length} scenarios`,
  rounds: (options, log) => ({
    failSoft: false,
    extraRounds: {
      max: options['extra-rounds'],
      needed: (sofar) => {
        const short = [...sofar].filter(([, rs]) => cleanRounds(rs, (r) => r.machine.otherCores).cleanRounds < 3).map(([name]) => name);
        if (short.length > 0) log(`fewer than 3 clean rounds for ${short.join(', ')}: one more round`);
        return short.length > 0;
      },
    },
  }),
  pad: 12,
  line(r) {
    const onServer = r.server === undefined ? '' : ` server ${fmt(r.server.cpuUsPerSign, 1)} µs/sign (${fmt(r.server.cpuCores, 2)} cores)`;
    return (
      `${fmt(r.signsPerSecond).padStart(8)} signs/s  p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs  ` +
      `bench ${fmt(r.clientCpuUsPerSign, 1)} µs/sign (${fmt(r.clientCpuCores, 2)} cores)${onServer} machine ${fmt(r.machine.busyCores, 2)} busy, others ${fmt(r.machine.otherCores, 2)}` +
      (r.errors > 0 ? ` ERRORS ${r.errors}: ${r.firstError}` : '')
    );
  },
  async report(held, options, scenarios, { results, order, method }, { log, signal, machine, date }) {
    const { lab, rig, keyIds, chosen, explore } = held;
    const idle: IdleLatencyRow[] = [];
    for (const key of options.keys) {
      for (const path of options.paths) idle.push(await idleLatency(rig!, key, path, () => rawLoad(held, key, 1), options.idleMs, signal, log));
    }
    const { summaries, ceilings } = summarize(scenarios, results);
    const settings = {
      rawSessions: rawSessionCounts,
      keyserverSessions: held.raw!.config.pkcs11.sessions,
      pipeline: Object.fromEntries([...chosen].map(([k, p]) => [k, pipelineName(p)])),
    };
    const exploration = {
      candidates: PIPELINE_CANDIDATES.map(pipelineName),
      durationMs: options.exploreMs,
      passes: options.explorePasses,
      tolerance: EXPLORE_TOLERANCE,
    };
    const extra = { roundsRun: order.length, maxExtraRounds: options['extra-rounds'], client: options.client, exploration, targetRatio: TARGET_RATIO };
    const json = {
      method: method(extra),
      settings,
      keys: options.keys.map((k) => ({ id: k.id, title: k.title, type: k.type, algorithm: k.algorithmName, keyId: keyIds.get(k.id) })),
      keyserverConfig: lab.config,
      exploration: explore,
      idleLatency: idle,
      scenarios: scenariosJson(summaries, ceilings),
    };
    const markdown = markdownReport(machine, options, settings, summaries, ceilings, explore, idle, order.length, date);
    return { json, markdown, errors: summaries.reduce((n, s) => n + s.errors, 0), what: 'requests' };
  },
  async close(held, options, log) {
    for (const s of held.scenarios) s.close();
    held.raw?.close();
    // The key server's graceful stop writes its --cpu-prof profile.
    await held.lab.stop();
    if (options['server-cpu-prof'] !== undefined) log(`key server CPU profile in ${options['server-cpu-prof']}`);
    if (options['keep-temp']) log(`kept ${held.lab.dir}`);
    held.lab.cleanup(options['keep-temp']);
  },
  kill: (held, options) => held.lab.cleanup(options['keep-temp']),
};

const rawLoad = (held: Lab, key: BenchKey, sessions: number) => held.raw!.load((k) => k.keyId === held.keyIds.get(key.id), key, sessions, held.rig!.digests);

/**
 * Raw runs hold up to 2 × cores libuv pool threads in C_Sign. An ES module
 * cannot size the pool for itself (its imports went through it already), so
 * with too few threads the bench runs itself again with UV_THREADPOOL_SIZE set.
 */
function relaunchWithPool(): Promise<number> | undefined {
  const needed = 2 * os.availableParallelism();
  if (process.env.UV_THREADPOOL_SIZE !== undefined || needed <= 4) return undefined;
  const env = { ...process.env, UV_THREADPOOL_SIZE: String(needed) };
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit', env });
  // The terminal's Ctrl-C reaches the child too (same process group); a kill of this pid is passed on.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => child.kill('SIGTERM'));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal !== null ? 128 + (os.constants.signals[signal] ?? 0) : 1))));
}

runMeasuring(KEYSERVER_SIGN, relaunchWithPool());
