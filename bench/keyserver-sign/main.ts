/**
 * Benchmark: signatures per second through the key server, against the
 * token's own ceiling (issue "key server", #4).
 *
 * For ECDSA P-256 (ECDSA_SHA256) and RSA-2048 (RSA_PSS_SHA256), on one
 * SoftHSM2 token in one run:
 *   raw    pkcs11js in this process, N sessions each looping C_SignInit +
 *          async C_Sign (N = cores and 2 × cores; the faster is the ceiling)
 *   unix   through the key server (its own process) over its unix socket
 *   tls    through the key server over mutual TLS 1.3 on 127.0.0.1
 * Each scenario is warmed up, then all are measured in interleaved rounds
 * (bench/harness/rounds.ts); the report gives per-scenario medians, min-max,
 * keyserver/raw ratios, latency percentiles and CPU per sign for the key
 * server and for this process. See bench/README.md.
 *
 * Usage: node dist/bench/keyserver-sign.js [--quick] [--out DIR] [options]
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type pkcs11js from 'pkcs11js';
import { loadKeyserverConfig } from '../../config/load.js';
import { tokenOptions } from '../../keyserver/server/daemon.js';
import { listKeys } from '../../keyserver/token/keys.js';
import { Token } from '../../keyserver/token/token.js';
import { BENCH_KEYS, type BenchKey, parsePipeline, type Pipeline, pipelineName } from './keys.js';
import { KeyserverLab, type KeyserverProcess } from '../lab/keyserver.js';
import { describeMachine } from '../harness/machine.js';
import { dateStamp, fmt } from '../harness/report.js';
import { cleanRounds, errorStatus, measureRounds, methodJson, publish, roundTag, stampedLog } from '../harness/bench.js';
import { measureWindow, RawSignLoad, type RawKey } from './load.js';
import { listOf, parseCli, std, timing } from '../harness/cli.js';
import { installInterrupt, runBench } from '../harness/main.js';
import { type IdleLatencyRow, summarize, TARGET_RATIO, markdownReport } from './report.js';
import { type BenchScenario, type Connected, connectLoad, type ExploreRow, explorePipeline, keyserverScenario, rawScenario } from './scenarios.js';

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

/** Candidate (connections, in flight per connection) settings tried by the exploration. */
export const PIPELINE_CANDIDATES: readonly Pipeline[] = [
  { connections: 1, depth: 32 },
  { connections: 1, depth: 64 },
  { connections: 2, depth: 32 },
  { connections: 2, depth: 64 },
  { connections: 4, depth: 32 },
  { connections: 4, depth: 64 },
];
/** A smaller setting within this fraction of the best is preferred: fewer in flight, lower latency, same throughput. */
export const EXPLORE_TOLERANCE = 0.03;

export type Transport = 'unix' | 'tls';
export type ClientKind = 'lean' | 'library';

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

export function parseOptions(argv: string[]) {
  const v = parseCli('keyserver-sign/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  const quick = v.quick;
  const keys = listOf(
    v.keys,
    '--keys',
    BENCH_KEYS.map((k) => k.id),
  ).map((id) => BENCH_KEYS.find((k) => k.id === id)!);
  return {
    ...timing(v, [300, 150], [200, 50]),
    exploreMs: quick ? 250 : 1000,
    /** Rounds added (whole rounds, all scenarios) while a scenario has fewer than 3 clean rounds. */
    maxExtraRounds: v['extra-rounds'],
    explorePasses: quick ? 1 : 2,
    client: v.client as ClientKind,
    pipeline: v.pipeline === undefined ? undefined : parsePipeline(v.pipeline),
    sessions: v.sessions,
    serverCpuProf: v['server-cpu-prof'],
    keepTemp: v['keep-temp'],
    keys,
    paths: new Set(listOf(v.paths, '--paths', ['raw', 'unix', 'tls'] as const)),
  };
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (options === undefined) return 0;
  const cores = os.availableParallelism();
  const rawSessionCounts = [...new Set([cores, 2 * cores])];
  const poolThreads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  if (poolThreads < Math.max(...rawSessionCounts)) {
    process.stderr.write(`warning: libuv has ${poolThreads} threads for up to ${Math.max(...rawSessionCounts)} raw sessions; raw figures will be low\n`);
  }
  const machine = describeMachine();
  const started = Date.now();
  const log = stampedLog(started);

  let lab: KeyserverLab | undefined;
  const signal = installInterrupt(log, () => {
    if (!options.keepTemp) lab?.cleanup();
  });

  const scenarios: BenchScenario[] = [];
  let token: Token | undefined;
  let server: KeyserverProcess | undefined;
  const rawSessions: pkcs11js.Handle[] = [];
  try {
    lab = new KeyserverLab({ ...(options.sessions !== undefined ? { sessions: options.sessions } : {}) });
    log(`temp dir ${lab.dir}`);
    const keyIds = new Map<string, string>();
    for (const key of options.keys) {
      keyIds.set(key.id, await lab.generateKey(key.type, key.label));
      log(`generated ${key.title} key ${keyIds.get(key.id)!.slice(0, 16)}… with keyedge key generate`);
    }
    signal.throwIfAborted();

    // The raw side: the same token, opened in this process.
    const config = loadKeyserverConfig(lab.configPath);
    token = Token.open(tokenOptions(config));
    const tokenKeys = listKeys(token);
    for (let i = 0; i < Math.max(...rawSessionCounts); i++) rawSessions.push(token.openSession());
    const digests = Array.from({ length: 16 }, () => randomBytes(32));

    server = await lab.startServer({
      ...(options.serverCpuProf !== undefined ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', options.serverCpuProf] } : {}),
    });
    const running = server;
    log(`key server pid ${server.pid}, unix ${server.unixPath}, tcp 127.0.0.1:${server.tcpPort}, sessions ${config.pkcs11.sessions}`);

    const connectFor = (key: BenchKey, transport: Transport) => (p: Pipeline) =>
      connectLoad(running, lab!, transport, options.client, p, Buffer.from(keyIds.get(key.id)!, 'hex'), key, digests);

    // Pipeline setting per key type: given, or explored on the unix socket.
    const chosen = new Map<string, Pipeline>();
    const explore: ExploreRow[] = [];
    for (const key of options.keys) {
      if (options.pipeline !== undefined || (!options.paths.has('unix') && !options.paths.has('tls'))) {
        if (options.pipeline !== undefined) chosen.set(key.id, options.pipeline);
        continue;
      }
      log(`exploring pipeline settings for ${key.title} (${options.explorePasses} pass(es) of ${options.exploreMs} ms each)`);
      const result = await explorePipeline(key, connectFor(key, 'unix'), running.pid, options, signal, log);
      chosen.set(key.id, result.chosen);
      explore.push(...result.rows);
    }

    for (const key of options.keys) {
      const tokenKey = tokenKeys.find((k) => k.keyId === keyIds.get(key.id));
      if (tokenKey === undefined) throw new Error(`key ${keyIds.get(key.id)} not found in the token`);
      const rawKey: RawKey = { handle: tokenKey.privateHandle, mechanism: key.mechanism, outputBytes: key.outputBytes };
      if (options.paths.has('raw'))
        for (const n of rawSessionCounts) scenarios.push(rawScenario(key, token.pkcs11, rawSessions.slice(0, n), rawKey, digests, options));
      for (const transport of (['unix', 'tls'] as const).filter((t) => options.paths.has(t))) {
        const p = chosen.get(key.id)!;
        scenarios.push(keyserverScenario(key, transport, p, () => connectFor(key, transport)(p), running.pid, options));
      }
    }

    log(`warm-up ${options.warmupMs / 1000} s per scenario, then ${options.rounds} rounds of ${options.measureMs / 1000} s over ${scenarios.length} scenarios`);
    const { order, results, quietWait } = await measureRounds(scenarios, options, [running.pid], signal, log, {
      extraRounds: {
        max: options.maxExtraRounds,
        needed: (sofar) => {
          const short = [...sofar].filter(([, rs]) => cleanRounds(rs, (r) => r.machine.otherCores).cleanRounds < 3).map(([name]) => name);
          if (short.length > 0) log(`fewer than 3 clean rounds for ${short.join(', ')}: one more round`);
          return short.length > 0;
        },
      },
      onRun: ({ scenario, context, result }) => {
        const server = result.server !== undefined ? ` server ${fmt(result.server.cpuUsPerSign, 1)} µs/sign (${fmt(result.server.cpuCores, 2)} cores)` : '';
        const errors = result.errors > 0 ? ` ERRORS ${result.errors}: ${result.firstError}` : '';
        log(
          `${roundTag(context)}${scenario.padEnd(12)} ${fmt(result.signsPerSecond).padStart(8)} signs/s` +
            `  p50 ${fmt(result.latency.p50Us)} p99 ${fmt(result.latency.p99Us)} µs  bench ${fmt(result.clientCpuUsPerSign, 1)} µs/sign (${fmt(result.clientCpuCores, 2)} cores)${server} machine ${fmt(result.machine.busyCores, 2)} busy, others ${fmt(result.machine.otherCores, 2)}${errors}`,
        );
      },
    });

    // Round trip with nothing else in flight: what one handshake waits for on an idle key server.
    const idle: IdleLatencyRow[] = [];
    const idleMs = options.quick ? 300 : 2000;
    for (const key of options.keys) {
      const tokenKey = tokenKeys.find((k) => k.keyId === keyIds.get(key.id))!;
      const single: Pipeline = { connections: 1, depth: 1 };
      for (const path of (['raw', 'unix', 'tls'] as const).filter((p) => options.paths.has(p))) {
        signal.throwIfAborted();
        let connected: Connected | undefined;
        const load =
          path === 'raw'
            ? new RawSignLoad(
                token.pkcs11,
                rawSessions.slice(0, 1),
                { handle: tokenKey.privateHandle, mechanism: key.mechanism, outputBytes: key.outputBytes },
                digests,
              )
            : (connected = await connectFor(key, path)(single)).load;
        try {
          const r = await measureWindow(load, {
            durationMs: idleMs,
            rampMs: options.rampMs,
            ...(path === 'raw' ? {} : { serverPid: running.pid }),
            signal: signal,
          });
          idle.push({ key: key.title, path, signsPerSecond: r.signsPerSecond, p50Us: r.latency.p50Us, p99Us: r.latency.p99Us, errors: r.errors });
          log(
            `idle latency ${key.id} ${path.padEnd(4)} p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs (${fmt(r.signsPerSecond)} signs/s, 1 in flight)`,
          );
        } finally {
          connected?.close();
        }
      }
    }

    const { summaries, ceilings } = summarize(scenarios, results);
    const date = dateStamp();
    const settings = {
      rawSessions: rawSessionCounts,
      keyserverSessions: config.pkcs11.sessions,
      pipeline: Object.fromEntries([...chosen].map(([k, p]) => [k, pipelineName(p)])),
    };
    const markdown = markdownReport(machine, options, settings, summaries, ceilings, explore, idle, order.length, date);
    const json = {
      benchmark: 'keyserver-sign',
      date,
      quick: options.quick,
      machine,
      method: methodJson(options, order, quietWait, {
        roundsRun: order.length,
        maxExtraRounds: options.maxExtraRounds,
        client: options.client,
        exploration: {
          candidates: PIPELINE_CANDIDATES.map(pipelineName),
          durationMs: options.exploreMs,
          passes: options.explorePasses,
          tolerance: EXPLORE_TOLERANCE,
        },
        targetRatio: TARGET_RATIO,
      }),
      settings,
      keys: options.keys.map((k) => ({ id: k.id, title: k.title, type: k.type, algorithm: k.algorithmName, keyId: keyIds.get(k.id) })),
      keyserverConfig: lab.config,
      exploration: explore,
      idleLatency: idle,
      scenarios: summaries.map((s) => ({
        name: s.name,
        key: s.key.id,
        path: s.path,
        setting: s.setting,
        ceiling: ceilings.get(s.key.id) === s.name,
        signsPerSecond: s.signsPerSecond,
        vsRaw: s.vsRaw,
        p50Us: s.p50Us,
        p99Us: s.p99Us,
        serverCpuUsPerSign: s.serverCpuUsPerSign,
        serverMainThreadUsPerSign: s.serverMainThreadUsPerSign,
        serverOtherThreadsUsPerSign: s.serverOtherThreadsUsPerSign,
        benchProcessCpuUsPerSign: s.clientCpuUsPerSign,
        totalCpuUsPerSign: s.totalCpuUsPerSign,
        machineBusyCores: s.machineBusyCores,
        otherCores: s.otherCores,
        errors: s.errors,
        cleanRounds: s.cleanRounds,
        usedRounds: s.usedRounds,
        rounds: s.perRound,
      })),
      durationSeconds: (Date.now() - started) / 1000,
    };
    // A quick run never overwrites the day's full results.
    publish(options.out, options.quick ? 'keyserver-sign-quick' : 'keyserver-sign', json, markdown, date, log);
    return errorStatus(
      summaries.reduce((n, s) => n + s.errors, 0),
      'requests',
      log,
    );
  } finally {
    for (const s of scenarios) s.close();
    if (server !== undefined) {
      await server.stop();
      if (options.serverCpuProf !== undefined) log(`key server CPU profile in ${options.serverCpuProf}`);
    }
    if (token !== undefined) {
      for (const s of rawSessions) token.closeSession(s);
      token.close();
    }
    if (lab !== undefined) {
      if (options.keepTemp) log(`kept ${lab.dir}`);
      else lab.cleanup();
    }
  }
}

/**
 * Raw runs use up to 2 × cores sessions, each holding a libuv pool thread
 * during C_Sign. An ES module cannot size the pool for itself (its imports
 * went through it already), so with too few threads the bench runs itself
 * again with UV_THREADPOOL_SIZE set.
 */
function relaunchWithPool(): Promise<number> | undefined {
  const needed = 2 * os.availableParallelism();
  if (process.env.UV_THREADPOOL_SIZE !== undefined || needed <= 4) return undefined;
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(needed) },
  });
  // The terminal's Ctrl-C reaches the child too (same process group); a kill of this pid is passed on.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => child.kill('SIGTERM'));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal !== null ? 128 + (os.constants.signals[signal] ?? 0) : 1))));
}

const relaunched = relaunchWithPool();
runBench('keyserver-sign', relaunched ?? main());
