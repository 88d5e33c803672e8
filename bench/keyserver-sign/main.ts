/**
 * Benchmark: signatures per second through the key server against the token's own ceiling (issue 4), for ECDSA P-256
 * and RSA-2048 on one SoftHSM2 token: raw pkcs11js sessions here (cores and 2 × cores: the faster is the ceiling), the
 * key server over its unix socket and over mutual TLS 1.3. A description for harness/runner.ts; load.ts and report.ts
 * do the rest. Method and figures: bench/README.md, "keyserver-sign".
 */
import { spawn } from 'node:child_process';
import os from 'node:os';
import { listOf, parseCli, std, timing } from '../harness/cli.js';
import { fmt } from '../harness/report.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { KeyserverLab } from '../lab/keyserver.js';
import * as sign from './load.js';
import { report } from './report.js';

const TABLE = {
  quick: std.quick('3 rounds of ~1 s, 1 s warm-up (< 1 min)'),
  out: std.out('keyserver-sign'),
  rounds: std.rounds(5, 3),
  measure: std.measure(4, 1, 0.2),
  warmup: std.warmup(2, 1),
  pipeline: { kind: 'string', arg: 'CxD', help: 'C connections x D requests in flight each, for both key types (default: ec 4x64, rsa 2x64)' },
  sessions: { kind: 'number', arg: 'N', min: 1, integer: true, help: "the key server's pkcs11.sessions (default: product default)" },
  keys: { kind: 'string', arg: 'ec,rsa', def: sign.BENCH_KEYS.map((k) => k.id).join(','), help: 'key types to run' },
  paths: { kind: 'string', arg: 'LIST', def: 'raw,unix,tls', help: 'paths to run (raw is needed for the ratios)' },
  'quiet-wait': std.quietWait,
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('keyserver-sign/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  const paths = listOf(v.paths, '--paths', ['raw', 'unix', 'tls'] as const);
  const keys = listOf(v.keys, '--keys', ['ec', 'rsa'] as const).map((id) => sign.BENCH_KEYS.find((k) => k.id === id)!);
  return {
    ...v,
    ...timing(v, [300, 150], [200, 50]),
    idleMs: v.quick ? 300 : 2000,
    keys,
    /** The key server's pipeline setting per key id: --pipeline, else the key's own. */
    pipelines: new Map(keys.map((k) => [k.id, sign.parsePipeline(v.pipeline ?? k.pipeline)])),
    // In this order whatever the order given.
    paths: (['raw', 'unix', 'tls'] as const).filter((p) => paths.includes(p)),
  };
}

/** The lab, the rig once the key server runs, the scenarios. */
export type Lab = { readonly lab: KeyserverLab; rig?: sign.SignRig; readonly scenarios: sign.BenchScenario[] };

const cores = os.availableParallelism();

const KEYSERVER_SIGN: MeasuringBench<Options, Lab, sign.BenchScenario, sign.WindowResult> = {
  name: 'keyserver-sign',
  parse: parseOptions,
  async setup(o, { log }, hold) {
    const lab = new KeyserverLab(o.sessions === undefined ? {} : { sessions: o.sessions });
    const held: Lab = { lab, scenarios: [] };
    hold(held);
    log(`temp dir ${lab.dir}`);
    held.rig = await sign.startRig(lab, o.keys, { rampMs: o.rampMs, rawSessions: 2 * cores }, log);
    return held;
  },
  async scenarios(held, o) {
    for (const key of o.keys)
      for (const path of o.paths) {
        const targets: sign.Target[] =
          path === 'raw' ? sign.RAW_SESSION_COUNTS.map((sessions) => ({ path, sessions })) : [{ path, pipeline: o.pipelines.get(key.id)! }];
        held.scenarios.push(...targets.map((target) => sign.benchScenario(held.rig!, key, target)));
      }
    return held.scenarios;
  },
  ownPids: (held) => [held.rig!.server.pid],
  plan: (o, scenarios) => `warm-up ${o.warmupMs / 1000} s per scenario, then ${o.rounds} rounds of ${o.measureMs / 1000} s over ${scenarios.length} scenarios`,
  rounds: () => ({ failSoft: false }),
  pad: 12,
  line: (r) =>
    `${fmt(r.signsPerSecond).padStart(8)} signs/s  p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs  ` +
    `bench ${fmt(r.clientCpuUsPerSign, 1)} µs/sign (${fmt(r.clientCpuCores, 2)} cores)` +
    (r.server === undefined ? '' : ` server ${fmt(r.server.cpuUsPerSign, 1)} µs/sign (${fmt(r.server.cpuCores, 2)} cores)`) +
    ` machine ${fmt(r.machine.busyCores, 2)} busy, others ${fmt(r.machine.otherCores, 2)}${r.errors > 0 ? ` ERRORS ${r.errors}: ${r.firstError}` : ''}`,
  report,
  async close({ lab, scenarios, rig }, o, log) {
    for (const s of scenarios) s.close();
    rig?.raw?.close();
    await lab.stop();
    if (o['keep-temp']) log(`kept ${lab.dir}`);
    lab.cleanup(o['keep-temp']);
  },
  kill: ({ lab }, o) => lab.cleanup(o['keep-temp']),
};

/**
 * Raw runs hold up to 2 × cores libuv pool threads in C_Sign. An ES module cannot size the pool for itself (its imports
 * went through it already), so with too few threads the bench runs itself again with UV_THREADPOOL_SIZE set.
 */
function relaunchWithPool(): Promise<number> | undefined {
  const needed = 2 * cores;
  if (process.env.UV_THREADPOOL_SIZE !== undefined || needed <= 4) return undefined;
  const env = { ...process.env, UV_THREADPOOL_SIZE: String(needed) };
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit', env });
  // The terminal's Ctrl-C reaches the child too (same process group); a kill of this pid is passed on.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => child.kill('SIGTERM'));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal !== null ? 128 + (os.constants.signals[signal] ?? 0) : 1))));
}

runMeasuring(KEYSERVER_SIGN, relaunchWithPool());
