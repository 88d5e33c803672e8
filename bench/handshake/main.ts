/**
 * Benchmark: CPU per TLS handshake through the keyless proxy, next to the same proxy holding the key in memory, the
 * node:https floor and nginx holding it three ways, also under other Node majors (--node 20,22,24); issues 6, 12, 13.
 * Set-ups: lab.ts; kinds: scenarios.ts; one run: measure.ts; figures and targets: summary.ts; result: report.ts;
 * method and columns: bench/README.md, "handshake".
 *
 * Usage: node dist/bench/handshake/main.js [--quick] [options]   (--help)
 */
import { listOf, parseCli, pinning, std, timing } from '../harness/cli.js';
import { nodeBinary, nodeVersionOf, OWN_MAJOR, parseMajors, versionOf } from '../harness/install.js';
import { processTree, setAffinity } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import type { RunContext } from '../harness/rounds.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { sumValues } from '../lab/counters.js';
import { ensureAb } from './ab.js';
import { negotiates } from './alpn.js';
import { HANDSHAKE_KEYS, HandshakeLab, isNginx, SETUP_IDS } from './lab.js';
import { type Limits, measureLimits } from './limits.js';
import { type BenchScenario, type RunResult, runScenario, trackedGroups } from './measure.js';
import { handshakeReport } from './summary.js';
import { allScenarios, KINDS, type ScenarioSpec, selectScenarios } from './scenarios.js';

const SCENARIO_IDS = `e.g. 'full-tls13/*/ecdsa' (kinds ${KINDS.join(', ')}; setups ${SETUP_IDS.join(', ')}, Node ones also <setup>-node<major>; keys ecdsa, rsa)`;
const TABLE = {
  quick: std.quick('2 rounds of 0.5 s, 0.75 s warm-up, ECDSA only, no TLS 1.2 or ALPN kinds, no limits, nginx only when installed (< 60 s)'),
  scenarios: { kind: 'string', arg: 'LIST', help: `only these scenarios: comma-separated ids kind/setup/key, * within a part, ${SCENARIO_IDS}` },
  keys: { kind: 'string', arg: 'ec,rsa', def: 'ec,rsa', quick: 'ec', help: 'key types' },
  node: std.node,
  out: std.out('handshake'),
  rounds: std.rounds(3, 2),
  measure: std.measure(4, 0.5),
  warmup: std.warmup(4, 0.75, 'per Node scenario (nginx: 1 s, quick 0.3)'),
  concurrency: { kind: 'number', arg: 'N', def: 64, min: 1, integer: true, help: 'ab -c: connections in flight' },
  'resume-loops': { kind: 'number', arg: 'N', def: 16, min: 1, integer: true, help: 'connections in flight of the resuming and ALPN clients' },
  workers: { kind: 'number', arg: 'N', min: 1, integer: true, help: 'workers of the proxies and the in-memory server (default: one per server CPU)' },
  install: std.install('nginx, libengine-pkcs11-openssl, p11-kit, p11-kit-modules'),
  limits: { kind: 'string', arg: 'yes|no', choices: ['yes', 'no'], help: 'openssl speed on the server CPUs (default yes; quick and --scenarios no)' },
  pin: std.pin,
  'server-cpus': std.serverCpus,
  'client-cpus': std.clientCpus,
  'log-level': std.logLevel,
  profile: { kind: 'string', arg: 'NAME', def: 'intermediate', choices: ['intermediate', 'modern'], help: 'TLS profile of the proxies' },
  'quiet-wait': std.quietWait,
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('handshake/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  const { quick, concurrency } = v;
  const keys = listOf(v.keys, '--keys', ['ec', 'rsa'] as const).map((id) => HANDSHAKE_KEYS.find((k) => k.id === id)!);
  const majors = parseMajors(v.node);
  // Quick leaves out the TLS 1.2 spot check and the ALPN pair unless asked for.
  const wanted = (s: ScenarioSpec) => keys.includes(s.key) && (v.scenarios !== undefined || !quick || s.kind === 'full-tls13' || s.kind === 'resumed-tls13');
  const scenarios = selectScenarios(v.scenarios, allScenarios(majors)).filter(wanted);
  if (scenarios.length === 0) throw new Error('no scenario left after --scenarios and --keys');
  const pins = pinning(v);
  // One worker per server core, as the product defaults to: two on one core cost more per handshake than they hide.
  const workers = v.workers ?? pins.serverCpuCount;
  const limits = (v.limits ?? (!quick && v.scenarios === undefined ? 'yes' : 'no')) === 'yes';
  const [resumeLoops, logLevel, profile, keepTemp] = [v['resume-loops'], v['log-level'], v.profile as 'intermediate' | 'modern', v['keep-temp']];
  const run = { concurrency, resumeLoops, workers, keys, majors, scenarios, install: v.install === 'yes', limits, logLevel, profile, keepTemp };
  return { ...timing(v, [1000, 250], [300, 100]), ...pins, ...run, nginxWarmupMs: quick ? 300 : 1000 };
}

export interface Lab {
  readonly lab: HandshakeLab;
  /** ALPN h2 scenarios whose server does not negotiate h2, with the reason. */
  readonly noH2: Map<string, string>;
  readonly nodeVersions: Map<number, string>;
  /** ab's version line. */
  readonly ab: string | undefined;
  limits?: Limits;
}

export type HandshakeBench = MeasuringBench<Options, Lab, BenchScenario, RunResult>;

const HANDSHAKE: HandshakeBench = {
  name: 'handshake',
  parse: parseOptions,
  async setup(options, { log, signal }, hold) {
    if (options.scenarios.some((s) => s.kind !== 'resumed-tls13')) ensureAb(log);
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    const nodeBinaries = new Map(options.majors.filter((m) => m !== OWN_MAJOR).map((m) => [m, nodeBinary(m, log)] as const));
    const nodeVersions = new Map([[OWN_MAJOR, `${process.version} (OpenSSL ${process.versions.openssl})`]]);
    for (const [m, bin] of nodeBinaries) nodeVersions.set(m, nodeVersionOf(bin));
    if (options.majors.length > 1) log(`Node servers under ${[...nodeVersions.values()].join(', ')}`);
    const lab = await HandshakeLab.create(options, nodeBinaries, log);
    const held: Lab = { lab, noH2: new Map(), nodeVersions, ab: versionOf('ab', ['-V']) };
    hold(held);
    log(`temp dir ${lab.dir}`);
    signal.throwIfAborted();
    await lab.start(log);
    return held;
  },
  async scenarios(held, options, { log, signal }) {
    const { lab, noH2 } = held;
    // ALPN h2: a server that does not negotiate h2 (keyedge before its HTTP/2 support) is skipped with a note.
    for (const spec of options.scenarios.filter((s) => s.kind === 'alpn-h2' && lab.has(s.setup))) {
      const picked = await negotiates({ port: lab.ports.endpoints[spec.setup]!.port, serverName: spec.key.serverName, ca: lab.ca, protocol: 'h2' });
      if (picked !== 'h2') noH2.set(spec.id, `does not negotiate h2 (ALPN answer: ${picked || 'none'})`);
    }
    for (const [id, reason] of noH2) log(`${id}: skipped, the server ${reason}`);
    // nginx needs no JIT warm-up: its warm-up runs are short.
    const run = (spec: ScenarioSpec) => (ms: number, context: RunContext) =>
      runScenario(lab, spec, context.phase === 'warmup' && isNginx(spec.setup) ? Math.min(ms, options.nginxWarmupMs) : ms, context);
    const scenarios = options.scenarios.filter((s) => lab.has(s.setup) && !noH2.has(s.id)).map((spec) => ({ name: spec.id, spec, run: run(spec) }));
    if (scenarios.length === 0) throw new Error(`every scenario asked for was skipped: ${[...lab.skipped.values()].join('; ')}`);
    held.limits = options.limits ? await measureLimits(options.serverCpus, log, signal) : { openssl: undefined, cpus: undefined };
    return scenarios;
  },
  ownPids: ({ lab }) => {
    const roots = trackedGroups(lab, undefined).flatMap((g) => g.roots());
    return roots.filter((p) => p > 0).flatMap(processTree);
  },
  plan: (o, scenarios) =>
    `warm-up ${o.warmupMs / 1000} s per Node scenario (${o.nginxWarmupMs / 1000} s nginx), then ${o.rounds} round(s) of ${o.measureMs / 1000} s over ${scenarios.length} scenarios` +
    (o.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${o.serverCpus}, clients on CPU ${o.clientCpus}`),
  pad: 32,
  line({ window: w, run }) {
    const split = w.keyUs === undefined ? '' : ` (front ${fmt(w.frontUs)} + key ${fmt(w.keyUs)})`;
    const signs = run.keyserverSigns === undefined ? '' : ` signs ${sumValues(run.keyserverSigns)}/${run.counters.full} full`;
    const resume = w.resume === undefined ? '' : ` resumed ${w.resume.resumed}/${w.resume.offered}`;
    const failed = (run.ab === undefined ? 0 : run.ab.failedRequests + run.ab.non2xx) + run.clientErrors;
    const errors = failed + w.server.failed > 0 ? ` ERRORS client ${failed} TLS failed ${w.server.failed} ${run.clientFirstError ?? ''}` : '';
    const cores = `server-side ${fmt(w.serverSideCores, 2)}  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}`;
    return `${fmt(w.handshakesPerSecond).padStart(6)} hs/s  server ${fmt(w.serverUs)} µs/hs${split}  client ${fmt(w.clientUs)} µs/hs (${fmt(w.clientCores, 2)} cores)  ${cores}${signs}${resume}${errors}`;
  },
  report: handshakeReport,
  close: ({ lab }, options, log) => lab.close(options.keepTemp, log),
  kill: ({ lab }, options) => lab.cleanup(options.keepTemp),
};

runMeasuring(HANDSHAKE);
