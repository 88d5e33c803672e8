/**
 * Benchmark: signatures per second through the key server against the
 * token's own ceiling (issue 4), for ECDSA P-256 and RSA-2048 on one SoftHSM2
 * token: raw pkcs11js sessions in this process (cores and 2 × cores: the
 * faster is the ceiling), the key server over its unix socket, and over
 * mutual TLS 1.3. Warm-up, then interleaved rounds (harness/bench.ts); per
 * scenario medians, ratios to the ceiling, latency and CPU per sign. Method
 * and figures: bench/README.md, "keyserver-sign".
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { cleanRounds, errorStatus, measureRounds, methodJson, publish, roundTag, stampedLog } from '../harness/bench.js';
import { listOf, parseCli, std, timing } from '../harness/cli.js';
import { describeMachine } from '../harness/machine.js';
import { installInterrupt, runBench } from '../harness/main.js';
import { dateStamp, fmt } from '../harness/report.js';
import { KeyserverLab } from '../lab/keyserver.js';
import { BENCH_KEYS, type BenchKey, parsePipeline, type Pipeline, pipelineName } from './keys.js';
import { RawToken } from './load.js';
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

export const TABLE = {
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

export function parseOptions(argv: string[]) {
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

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (options === undefined) return 0;
  const cores = os.availableParallelism();
  const rawSessionCounts = [...new Set([cores, 2 * cores])];
  const poolThreads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  if (poolThreads < 2 * cores) process.stderr.write(`warning: libuv has ${poolThreads} threads for up to ${2 * cores} raw sessions; raw figures will be low\n`);
  const machine = describeMachine();
  const started = Date.now();
  const log = stampedLog(started);
  const lab = new KeyserverLab(options.sessions === undefined ? {} : { sessions: options.sessions });
  const signal = installInterrupt(log, () => lab.cleanup(options['keep-temp']));
  const scenarios: BenchScenario[] = [];
  let raw: RawToken | undefined;
  try {
    log(`temp dir ${lab.dir}`);
    const keyIds = new Map<string, string>();
    for (const key of options.keys) {
      keyIds.set(key.id, await lab.generateKey(key.type, key.label));
      log(`generated ${key.title} key ${keyIds.get(key.id)!.slice(0, 16)}… with keyedge key generate`);
    }
    signal.throwIfAborted();
    // The raw side: the same token, opened in this process.
    const rawToken = new RawToken(lab.configPath, 2 * cores);
    raw = rawToken;
    const config = rawToken.config;
    const digests = Array.from({ length: 16 }, () => randomBytes(32));
    const server = await lab.startServer(
      options['server-cpu-prof'] === undefined ? {} : { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', options['server-cpu-prof']] },
    );
    log(`key server pid ${server.pid}, unix ${server.unixPath}, tcp 127.0.0.1:${server.tcpPort}, sessions ${config.pkcs11.sessions}`);
    const rig: SignRig = { lab, server, client: options.client, digests, keyIds, rampMs: options.rampMs };
    const rawLoad = (key: BenchKey, sessions: number) => rawToken.load((k) => k.keyId === keyIds.get(key.id), key, sessions, digests);

    // The pipeline setting per key type: given, or explored on the unix socket.
    const chosen = new Map<string, Pipeline>();
    const explore: ExploreRow[] = [];
    const transports = options.paths.filter((p) => p !== 'raw');
    for (const key of options.keys) {
      if (options.pipeline !== undefined) chosen.set(key.id, options.pipeline);
      if (options.pipeline !== undefined || transports.length === 0) continue;
      log(`exploring pipeline settings for ${key.title} (${options.explorePasses} pass(es) of ${options.exploreMs} ms each)`);
      const result = await explorePipeline(rig, key, options.exploreMs, options.explorePasses, signal, log);
      chosen.set(key.id, result.chosen);
      explore.push(...result.rows);
    }
    for (const key of options.keys) {
      if (options.paths.includes('raw')) for (const n of rawSessionCounts) scenarios.push(rawScenario(key, rawLoad(key, n), options.rampMs));
      for (const transport of transports) scenarios.push(keyserverScenario(rig, key, transport, chosen.get(key.id)!));
    }

    log(`warm-up ${options.warmupMs / 1000} s per scenario, then ${options.rounds} rounds of ${options.measureMs / 1000} s over ${scenarios.length} scenarios`);
    const { order, results, quietWait } = await measureRounds(scenarios, options, [server.pid], signal, log, {
      extraRounds: {
        max: options['extra-rounds'],
        needed: (sofar) => {
          const short = [...sofar].filter(([, rs]) => cleanRounds(rs, (r) => r.machine.otherCores).cleanRounds < 3).map(([name]) => name);
          if (short.length > 0) log(`fewer than 3 clean rounds for ${short.join(', ')}: one more round`);
          return short.length > 0;
        },
      },
      onRun: ({ scenario, context, result: r }) => {
        const onServer = r.server === undefined ? '' : ` server ${fmt(r.server.cpuUsPerSign, 1)} µs/sign (${fmt(r.server.cpuCores, 2)} cores)`;
        log(
          `${roundTag(context)}${scenario.padEnd(12)} ${fmt(r.signsPerSecond).padStart(8)} signs/s  p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs  ` +
            `bench ${fmt(r.clientCpuUsPerSign, 1)} µs/sign (${fmt(r.clientCpuCores, 2)} cores)${onServer} machine ${fmt(r.machine.busyCores, 2)} busy, others ${fmt(r.machine.otherCores, 2)}` +
            (r.errors > 0 ? ` ERRORS ${r.errors}: ${r.firstError}` : ''),
        );
      },
    });
    const idle: IdleLatencyRow[] = [];
    for (const key of options.keys) {
      for (const path of options.paths) idle.push(await idleLatency(rig, key, path, () => rawLoad(key, 1), options.idleMs, signal, log));
    }

    const { summaries, ceilings } = summarize(scenarios, results);
    const date = dateStamp();
    const settings = {
      rawSessions: rawSessionCounts,
      keyserverSessions: config.pkcs11.sessions,
      pipeline: Object.fromEntries([...chosen].map(([k, p]) => [k, pipelineName(p)])),
    };
    const method = methodJson(options, order, quietWait, {
      roundsRun: order.length,
      maxExtraRounds: options['extra-rounds'],
      client: options.client,
      exploration: {
        candidates: PIPELINE_CANDIDATES.map(pipelineName),
        durationMs: options.exploreMs,
        passes: options.explorePasses,
        tolerance: EXPLORE_TOLERANCE,
      },
      targetRatio: TARGET_RATIO,
    });
    const json = {
      benchmark: 'keyserver-sign',
      date,
      quick: options.quick,
      machine,
      method,
      settings,
      keys: options.keys.map((k) => ({ id: k.id, title: k.title, type: k.type, algorithm: k.algorithmName, keyId: keyIds.get(k.id) })),
      keyserverConfig: lab.config,
      exploration: explore,
      idleLatency: idle,
      scenarios: scenariosJson(summaries, ceilings),
      durationSeconds: (Date.now() - started) / 1000,
    };
    const markdown = markdownReport(machine, options, settings, summaries, ceilings, explore, idle, order.length, date);
    // A quick run never overwrites the day's full results.
    publish(options.out, options.quick ? 'keyserver-sign-quick' : 'keyserver-sign', json, markdown, date, log);
    return errorStatus(
      summaries.reduce((n, s) => n + s.errors, 0),
      'requests',
      log,
    );
  } finally {
    for (const s of scenarios) s.close();
    raw?.close();
    // The key server's graceful stop writes its --cpu-prof profile.
    await lab.stop();
    if (options['server-cpu-prof'] !== undefined) log(`key server CPU profile in ${options['server-cpu-prof']}`);
    if (options['keep-temp']) log(`kept ${lab.dir}`);
    lab.cleanup(options['keep-temp']);
  }
}

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

runBench('keyserver-sign', relaunchWithPool() ?? main());
