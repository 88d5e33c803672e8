/**
 * Benchmark: CPU per TLS handshake through the keyless proxy, next to the same proxy holding the key in memory, the
 * node:https floor and nginx holding it three ways, also under other Node majors (--node 20,22,24); issues 6, 12, 13.
 * Here: the options, the bench for harness/runner.ts, and one run; method: bench/README.md, "handshake".
 * Usage: node dist/bench/handshake/main.js [--quick] (--help)
 */
import { join } from 'node:path';
import { listOf, parseCli, pinning, std, timing } from '../harness/cli.js';
import { findOrInstall, parseMajors } from '../harness/install.js';
import { perUnit, processTree, setAffinity, snapshot, type TrackedGroup, usageBetween } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import { type RunContext, type Scenario, sleep } from '../harness/rounds.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { diffCounters, type HandshakeCounters, readHandshakeCounters, readKeyserverSigns, sumValues } from '../lab/counters.js';
import { readNginxStatus } from '../lab/nginx.js';
import { type AbResult, startAb } from './ab.js';
import { AlpnLoad, negotiates } from './alpn.js';
import { HANDSHAKE_KEYS, HandshakeLab, isKeyless, isNginx, keyHolder, SETUP_IDS, type SetupId } from './lab.js';
import { measureLimits } from './limits.js';
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
  workers: { kind: 'number', arg: 'N', min: 1, integer: true, help: 'workers of the proxies and the in-memory server (default: one per server CPU)' },
  install: std.install('nginx, libengine-pkcs11-openssl, p11-kit, p11-kit-modules'),
  limits: { kind: 'string', arg: 'yes|no', choices: ['yes', 'no'], help: 'openssl speed on the server CPUs (default yes; quick and --scenarios no)' },
  pin: std.pin,
  'server-cpus': std.serverCpus,
  'client-cpus': std.clientCpus,
  'log-level': std.logLevel,
  profile: { kind: 'string', arg: 'NAME', def: 'intermediate', choices: ['intermediate', 'modern'], help: 'TLS profile of the proxies' },
  paced: {
    kind: 'number',
    arg: 'N',
    min: 1,
    help: 'the in-process clients (resumed, ALPN) start at most N connections a second, the same for every server (default: as fast as they can)',
  },
  'quiet-wait': std.quietWait,
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('handshake/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  const { quick } = v;
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
  const [logLevel, profile, keepTemp] = [v['log-level'], v.profile as 'intermediate' | 'modern', v['keep-temp']];
  const run = {
    concurrency: 64,
    resumeLoops: 16,
    paced: v.paced,
    workers,
    keys,
    majors,
    scenarios,
    install: v.install === 'yes',
    limits,
    logLevel,
    profile,
    keepTemp,
  };
  return { ...timing(v, [1000, 250], [300, 100]), ...pins, ...run, nginxWarmupMs: quick ? 300 : 1000 };
}

export type HandshakeBench = MeasuringBench<Options, HandshakeLab, BenchScenario, RunResult>;

const HANDSHAKE: HandshakeBench = {
  name: 'handshake',
  parse: parseOptions,
  async setup(options, { log, signal }, hold) {
    const ab = options.scenarios.some((s) => s.kind !== 'resumed-tls13') ? findOrInstall('ab', 'apache2-utils', true, log) : undefined;
    if (ab?.ok === false) throw new Error(`ab (ApacheBench): ${ab.reason}`);
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    const lab = await HandshakeLab.create(options, log);
    hold(lab);
    log(`temp dir ${lab.dir}`);
    signal.throwIfAborted();
    await lab.start(log);
    return lab;
  },
  async scenarios(lab, options, { log, signal }) {
    for (const spec of options.scenarios.filter((s) => s.kind === 'alpn-h2' && lab.setups.includes(s.setup))) {
      const picked = await negotiates({ port: lab.ports.endpoints[spec.setup]!.port, serverName: spec.key.serverName, ca: lab.ca, protocol: 'h2' });
      if (picked !== 'h2') lab.skip(spec.id, `the server does not negotiate h2 (ALPN answer: ${picked || 'none'})`, log);
    }
    const run = (spec: ScenarioSpec) => (ms: number, context: RunContext) =>
      runScenario(lab, spec, context.phase === 'warmup' && isNginx(spec.setup) ? Math.min(ms, options.nginxWarmupMs) : ms, context);
    const scenarios = options.scenarios
      .filter((s) => lab.setups.includes(s.setup) && !lab.skipped.has(s.id))
      .map((spec) => ({ name: spec.id, spec, run: run(spec) }));
    if (scenarios.length === 0) throw new Error(`every scenario asked for was skipped: ${[...lab.skipped.values()].join('; ')}`);
    lab.limits = options.limits ? await measureLimits(options.serverCpus, signal) : undefined;
    if (lab.limits) log(lab.limits.line);
    return scenarios;
  },
  ownPids: (lab) => {
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
  close: (lab, options, log) => lab.close(options.keepTemp, log),
  kill: (lab, options) => lab.cleanup(options.keepTemp),
};

function trackedGroups(lab: HandshakeLab, clientPid: number | undefined): TrackedGroup[] {
  const group = (name: string, pid: number | undefined) => ({ name, roots: () => [pid ?? -1] });
  const nginx = [...(lab.nginx?.instances ?? [])].map(([variant, i]) => group(`nginx-${variant}`, i.process?.pid));
  const others = [group('keyserver', lab.keyserver?.pid), group('origin', lab.origin?.pid), group('p11kit', lab.nginx?.p11kitServer?.pid)];
  return [...[...lab.servers].map(([setup, p]) => group(setup, p.pid)), ...nginx, ...others, group('client', clientPid)];
}

const statusReads = new Map<number, number>();

/**
 * The server's handshake counters: the Node servers' admin metrics, or nginx's stub_status `requests` less the bench's
 * own status reads (`handled` would hide them on a reused status connection). One GET per connection, so `full` =
 * connections that carried their request: nginx does not tell full from resumed or failed handshakes, the clients do.
 */
async function readCounters(lab: HandshakeLab, setup: SetupId): Promise<HandshakeCounters> {
  const { admin } = lab.ports.endpoints[setup]!;
  if (!isNginx(setup)) return readHandshakeCounters(admin);
  statusReads.set(admin, (statusReads.get(admin) ?? 0) + 1);
  return { full: (await readNginxStatus(admin)).requests - statusReads.get(admin)!, resumed: 0, failed: 0, requests: {}, keylessSigns: 0 };
}

export type RunResult = Awaited<ReturnType<typeof runScenario>>;
export type BenchScenario = Scenario<RunResult> & { readonly spec: ScenarioSpec };

/** Signs per algorithm between two reads of the key server's counters (counters only grow, and only appear). */
type Signs = Record<string, number> | undefined;
const signsBetween = (a: Signs, b: Signs): Signs => (a && b ? Object.fromEntries(Object.entries(b).map(([k, n]) => [k, n - (a[k] ?? 0)])) : undefined);

/** The kind's client: ab (its own process, stopped with SIGINT), or the resuming or ALPN client in this process (`load`). */
function startClient(lab: HandshakeLab, spec: ScenarioSpec, durationMs: number, context: RunContext) {
  const { options } = lab;
  const port = lab.ports.endpoints[spec.setup]!.port;
  if (spec.kind === 'resumed-tls13' || spec.kind.startsWith('alpn-')) {
    const protocol = spec.kind === 'alpn-h2' ? 'h2' : spec.kind === 'alpn-h1' ? 'http/1.1' : undefined;
    const load = new AlpnLoad({
      port,
      serverName: spec.key.serverName,
      ca: lab.ca,
      loops: options.resumeLoops,
      protocol,
      resume: !protocol,
      rate: options.paced,
    });
    load.start();
    return { pid: undefined, load, check: async () => undefined, stop: async (): Promise<AbResult | undefined> => void (await load.stop()) };
  }
  const csvPath = join(lab.dir, `${spec.id.replaceAll('/', '_')}-${context.phase}-${context.round}.csv`);
  const [maxSeconds, protocol] = [(options.rampMs + durationMs) / 1000 + 30, spec.kind === 'full-tls12' ? ('TLS1.2' as const) : undefined];
  const ab = startAb({ port, host: spec.key.serverName, concurrency: options.concurrency, maxSeconds, csvPath, cpus: options.clientCpus, protocol });
  const check = async () => {
    if (!ab.exited()) return;
    const r = await ab.done;
    throw new Error(`ab exited before the window closed (status ${r.exitCode ?? r.signal}): ${r.stderr.join(' | ') || 'no message'}`);
  };
  return { pid: ab.pid, load: undefined, check, stop: () => ab.stop('SIGINT') };
}

/**
 * One run: start the client, ramp up, read the server's counters and every process's CPU around the window, stop the
 * client, wait until the counters stop moving. Handshakes: full ones the server counted for ab, connections completed
 * for the in-process clients. ALPN kinds do not read the key server's signs.
 */
async function runScenario(lab: HandshakeLab, spec: ScenarioSpec, durationMs: number, context: RunContext) {
  const { options } = lab;
  const withSigns = !spec.kind.startsWith('alpn-');
  const signsNow = async () => (withSigns && isKeyless(spec.setup) ? readKeyserverSigns(lab.ports.keyserverAdmin) : undefined);
  const counters = () => readCounters(lab, spec.setup);
  const [signs0, run0] = [await signsNow(), await counters()];
  const client = startClient(lab, spec, durationMs, context);
  const { load } = client;
  const measured = async () => {
    await sleep(options.rampMs, context.signal);
    const tracked = trackedGroups(lab, client.pid);
    const [sA, cA, l0] = [await signsNow(), await counters(), { ...load }];
    load?.latency.reset();
    if (load !== undefined) load.recording = true;
    const uA = snapshot(tracked);
    await sleep(durationMs, context.signal);
    // ab: the server's counters first, then the CPU; an in-process client: the CPU first, then its counts.
    const cB0 = load === undefined ? await counters() : undefined;
    const usage = usageBetween(uA, snapshot(tracked));
    if (load !== undefined) load.recording = false;
    const l1 = { ...load };
    const server = diffCounters(cA, cB0 ?? (await counters()));
    const signs = signsBetween(sA, await signsNow());
    await client.check();
    const d = (k: 'completed' | 'offered' | 'resumed' | 'offeredNotResumed') => (l1[k] ?? 0) - (l0[k] ?? 0);
    const handshakes = load === undefined ? server.full : d('completed');
    // Server CPU = the set-up's processes (front + key holder); the origin and the client apart (an in-process client
    // is this bench's own CPU), and the cores other processes used (contention).
    const [front, key] = [spec.setup, keyHolder(spec.setup)];
    const { per, cores, otherCores } = perUnit(usage, handshakes);
    const clientCores = load === undefined ? cores('client') : usage.selfCores;
    const cpuUs = { serverUs: per(front, key), frontUs: per(front), keyUs: key === undefined ? undefined : per(key), originUs: per('origin') };
    const coresUsed = { clientCores, serverSideCores: cores(front, key, 'origin'), machineBusyCores: usage.machineBusyCores, otherCores };
    const resume = { offered: d('offered'), resumed: d('resumed'), offeredNotResumed: d('offeredNotResumed') };
    return {
      handshakes,
      server,
      keyserverSigns: signs && sumValues(signs),
      handshakesPerSecond: handshakes / usage.seconds,
      ...cpuUs,
      clientUs: handshakes > 0 ? (clientCores * usage.seconds * 1e6) / handshakes : Number.NaN,
      ...coresUsed,
      usage,
      latency: load?.latency.summary(),
      resume: spec.kind === 'resumed-tls13' ? { ...resume, resumedPct: (100 * resume.resumed) / Math.max(1, handshakes) } : undefined,
    };
  };
  let ab: AbResult | undefined;
  const window = await measured().finally(async () => {
    ab = await client.stop();
  });
  // Connections ab abandoned at SIGINT fail on the server side now: read the counters and signs until they stop moving (≤ 5 s).
  let [end, endSigns] = [await counters(), await signsNow()];
  for (let i = 0; i < 50; i++) {
    await sleep(Math.max(100, options.settleMs / 2), context.signal);
    const again = [await counters(), await signsNow()] as const;
    const same = JSON.stringify(again) === JSON.stringify([end, endSigns]);
    [end, endSigns] = again;
    if (same) break;
  }
  const run = { ab, clientErrors: load?.errors ?? 0, clientFirstError: load?.firstError, counters: diffCounters(run0, end) };
  return { window, run: { ...run, keyserverSigns: withSigns ? signsBetween(signs0, endSigns) : undefined } };
}

runMeasuring(HANDSHAKE);
