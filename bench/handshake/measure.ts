/**
 * One run of one handshake scenario: start the kind's client (ab, or the
 * resuming or ALPN client in this process), ramp up, read the servers'
 * counters and every process's CPU around the window, stop the client, wait
 * until the server's counters stop moving (ab abandons connections at SIGINT).
 */
import { join } from 'node:path';
import { processTree } from '../harness/proc-cpu.js';
import { perUnit, snapshot, type TrackedGroup, usageBetween, type WindowUsage } from '../harness/procs.js';
import { perfRecord, threadLabels } from '../harness/perf.js';
import { type RunContext, type Scenario, sleep } from '../harness/rounds.js';
import { diffCounters, type HandshakeCounters, readHandshakeCounters, readKeyserverSigns, sumValues } from '../lab/counters.js';
import { readNginxStatus } from '../lab/nginx.js';
import { type AbResult, startAb } from './ab.js';
import { AlpnLoad } from './alpn.js';
import type { ClosedLoop } from '../harness/loop.js';
import { type BaseSetup, baseSetup, type HandshakeLab, isKeyless, isNginx, nodeMajorOf, type SetupId } from './lab.js';
import { plural } from '../harness/report.js';
import type { Options } from './main.js';
import { ResumeLoad } from './resume.js';
import type { ScenarioSpec } from './scenarios.js';

/** The process groups of a set-up: the TLS front (proxy, nginx, floor; named as the set-up) and what holds the key apart from it. */
export function setupGroups(setup: SetupId): { readonly front: string; readonly key: string | undefined } {
  return { front: setup, key: isKeyless(setup) ? 'keyserver' : setup === 'nginx-p11kit' ? 'p11kit' : undefined };
}

/** Per base set-up: its title in the report, and what runs in it (`w`: the proxies' workers, `node`: ", Node N" or ''). */
const SETUPS: Record<BaseSetup, readonly [title: string, processes: (w: string, node: string) => string]> = {
  'keyless-unix': ['keyless (unix)', (w, node) => `proxy ${w} + key server (unix)${node}`],
  'keyless-tcp': ['keyless (mTLS)', (w) => `proxy ${w} + key server (mTLS)`],
  inmemory: ['in memory', (w, node) => `${w}${node}`],
  'node-floor': ['bare node:https (floor)', (_, node) => `node:https 1 process${node}`],
  'nginx-file': ['nginx key file', () => 'nginx 1 process'],
  'nginx-engine': ['nginx + pkcs11 engine', () => 'nginx 1 process (SoftHSM2 in it)'],
  'nginx-p11kit': ['nginx + p11-kit', () => 'nginx 1 process + p11-kit server'],
};
const onMajor = (setup: SetupId): string => (nodeMajorOf(setup) === undefined ? '' : `, Node ${nodeMajorOf(setup)}`);

export const setupTitle = (setup: SetupId): string => `${SETUPS[baseSetup(setup)][0]}${onMajor(setup)}`;

/** What the report says runs in each set-up. */
export const setupProcesses = (setup: SetupId, workers: number): string => SETUPS[baseSetup(setup)][1](plural(workers, 'worker'), onMajor(setup));

export function trackedGroups(lab: HandshakeLab, clientPid: number | undefined): TrackedGroup[] {
  return [
    ...[...lab.servers].map(([setup, p]) => ({ name: setup, roots: () => [p.pid] })),
    ...[...(lab.nginx?.instances ?? new Map())].map(([variant, i]) => ({ name: `nginx-${variant}`, roots: () => [i.process?.pid ?? -1] })),
    { name: 'keyserver', roots: () => [lab.keyserver?.pid ?? -1] },
    { name: 'origin', roots: () => [lab.origin?.pid ?? -1] },
    { name: 'p11kit', roots: () => [lab.nginx?.p11kitServer?.pid ?? -1] },
    { name: 'client', roots: () => [clientPid ?? -1] },
  ];
}

/** Every pid a set-up's server consists of, with a role for perf's report. */
export function serverProcesses(lab: HandshakeLab, setup: SetupId): Map<number, string> {
  const out = new Map<number, string>();
  const { front, key } = setupGroups(setup);
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
export class CounterReader {
  readonly #statusReads = new Map<number, number>();
  constructor(readonly lab: HandshakeLab) {}

  async read(setup: SetupId): Promise<HandshakeCounters> {
    const endpoint = this.lab.ports.endpoints[setup]!;
    if (!isNginx(setup)) return readHandshakeCounters(endpoint.admin);
    const reads = (this.#statusReads.get(endpoint.admin) ?? 0) + 1;
    this.#statusReads.set(endpoint.admin, reads);
    const status = await readNginxStatus(endpoint.admin);
    return { full: status.requests - reads, resumed: 0, failed: 0, requests: {}, keylessSigns: 0 };
  }
}

// ---------------------------------------------------------------------------
// One run of one scenario

export type WindowFigures = ReturnType<typeof windowFigures> & {
  /** Resumed kind: tickets offered and resumed in the window, the client's latency. */
  readonly resume: { offered: number; resumed: number; offeredNotResumed: number; resumedPct: number; p50Us: number; p99Us: number } | undefined;
  /** ALPN kinds: the client's latency in the window. */
  readonly alpn: { readonly p50Us: number; readonly p99Us: number } | undefined;
};

export type RunResult = Awaited<ReturnType<typeof runScenario>>;

export interface BenchScenario extends Scenario<RunResult> {
  readonly spec: ScenarioSpec;
}

export interface Env {
  readonly lab: HandshakeLab;
  readonly options: Options;
  readonly counters: CounterReader;
  readonly ca: string;
  readonly perfThreads: Map<string, Map<number, string>>;
}

/**
 * A window's figures: handshakes of the scenario's kind (full ones the server counted for ab, connections the client
 * completed for the others), server CPU per handshake = the set-up's processes (front + key holder), the origin's and
 * the client's apart, and the cores other processes used (contention).
 */
function windowFigures(
  spec: ScenarioSpec,
  usage: WindowUsage,
  server: HandshakeCounters,
  handshakes: number,
  keyserverSigns: number | undefined,
  clientFromSelf: boolean,
) {
  const { front, key } = setupGroups(spec.setup);
  const { per, cores, otherCores } = perUnit(usage, handshakes);
  // An in-process client (resuming, ALPN) is this bench's own CPU.
  const clientCores = clientFromSelf ? usage.selfCores : cores('client');
  return {
    seconds: usage.seconds,
    handshakes,
    /** Server counters over the window (nginx: connections as `full`). */
    server,
    /** Key server signs in the window, all algorithms (keyless set-ups). */
    keyserverSigns,
    handshakesPerSecond: handshakes / usage.seconds,
    serverUs: per(front, key),
    frontUs: per(front),
    keyUs: key === undefined ? undefined : per(key),
    originUs: per('origin'),
    clientUs: handshakes > 0 ? (clientCores * usage.seconds * 1e6) / handshakes : Number.NaN,
    clientCores,
    serverSideCores: cores(front, key, 'origin'),
    machineBusyCores: usage.machineBusyCores,
    otherCores,
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
async function settledCounters(env: Env, spec: ScenarioSpec, signal: AbortSignal | undefined) {
  let counters = await env.counters.read(spec.setup);
  let signs = await keyserverSignsNow(env, spec);
  for (let i = 0; i < 50; i++) {
    await sleep(Math.max(100, env.options.settleMs / 2), signal);
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

/** What differs between the kinds' clients; `runScenario` does the rest the same way for all. */
interface ScenarioClient {
  /** ab's pid (its CPU is read from /proc); undefined: the client runs in this process (its CPU is the bench's). */
  readonly pid: number | undefined;
  /** In-process clients: their counts and latency recorder. */
  readonly load: (ClosedLoop & Partial<Record<'offered' | 'resumed' | 'offeredNotResumed', number>>) | undefined;
  /** Throws when the client ended before the window closed (ab). */
  check(): Promise<void>;
  /** Stops the client; ab's report. */
  stop(): Promise<AbResult | undefined>;
}

function startClient(env: Env, spec: ScenarioSpec, durationMs: number, context: RunContext): ScenarioClient {
  const { options, lab } = env;
  const port = lab.ports.endpoints[spec.setup]!.port;
  const target = { port, serverName: spec.key.serverName, ca: env.ca, loops: options.resumeLoops };
  if (spec.kind === 'resumed-tls13' || spec.kind.startsWith('alpn-')) {
    const load = spec.kind === 'resumed-tls13' ? new ResumeLoad(target) : new AlpnLoad({ ...target, protocol: spec.kind === 'alpn-h2' ? 'h2' : 'http/1.1' });
    load.start();
    return { pid: undefined, load, check: async () => undefined, stop: async () => void (await load.stop()) };
  }
  const ab = startAb({
    port,
    host: spec.key.serverName,
    concurrency: options.concurrency,
    maxSeconds: (options.rampMs + durationMs) / 1000 + 30,
    csvPath: join(lab.dir, `${spec.id.replaceAll('/', '_')}-${context.phase}-${context.round}.csv`),
    cpus: options.clientCpus,
    protocol: spec.kind === 'full-tls12' ? 'TLS1.2' : 'TLS1.3',
  });
  return {
    pid: ab.pid,
    load: undefined,
    async check() {
      if (!ab.exited()) return;
      const r = await ab.done;
      throw new Error(`ab exited before the window closed (status ${r.exitCode ?? r.signal}): ${r.stderr.join(' | ') || 'no message'}`);
    },
    stop: () => ab.stop('SIGINT'),
  };
}

/** Counts of an in-process client (resuming, ALPN) at one instant. */
const countsOf = (load: ScenarioClient['load']) => ({
  completed: load?.completed ?? 0,
  offered: load?.offered ?? 0,
  resumed: load?.resumed ?? 0,
  notResumed: load?.offeredNotResumed ?? 0,
});

/**
 * One run: start the kind's client (ab: full handshakes, stopped with SIGINT; the resuming client; the ALPN client),
 * ramp up, read counters and CPU around the window, stop the client, wait for the server to go idle. Handshakes in the
 * window: full ones the server counted for ab, connections the client completed for the others. ALPN kinds do not read
 * the key server's signs.
 */
export async function runScenario(env: Env, spec: ScenarioSpec, durationMs: number, context: RunContext, perfFile: string | undefined) {
  const { options, lab } = env;
  const withSigns = !spec.kind.startsWith('alpn-');
  const signsNow = () => (withSigns ? keyserverSignsNow(env, spec) : Promise.resolve(undefined));
  const signs0 = await signsNow();
  const run0 = await env.counters.read(spec.setup);
  const client = startClient(env, spec, durationMs, context);
  const { load } = client;
  let window: WindowFigures | undefined;
  let ab: AbResult | undefined;
  try {
    await sleep(options.rampMs, context.signal);
    const tracked = trackedGroups(lab, client.pid);
    const sA = await signsNow();
    const cA = await env.counters.read(spec.setup);
    const l0 = countsOf(load);
    load?.latency.reset();
    if (load !== undefined) load.recording = true;
    const uA = snapshot(tracked);
    const recording = startPerf(env, spec, durationMs, perfFile);
    await sleep(durationMs, context.signal);
    await recording?.done;
    // ab: the server's counters first, then the CPU; an in-process client: the CPU first, then its counts.
    const cB0 = load === undefined ? await env.counters.read(spec.setup) : undefined;
    const uB = snapshot(tracked);
    if (load !== undefined) load.recording = false;
    const l1 = countsOf(load);
    const cB = cB0 ?? (await env.counters.read(spec.setup));
    const sB = await signsNow();
    await client.check();
    const c = diffCounters(cA, cB);
    const ks = signsBetween(sA, sB);
    const latency = load?.latency.summary();
    const completed = l1.completed - l0.completed;
    const figures = windowFigures(spec, usageBetween(uA, uB), c, load === undefined ? c.full : completed, ks && sumValues(ks), load !== undefined);
    const d = (k: keyof typeof l0) => l1[k] - l0[k];
    const lat = latency && { p50Us: latency.p50Us, p99Us: latency.p99Us };
    const resumedPct = (100 * d('resumed')) / Math.max(1, completed);
    window = {
      ...figures,
      resume:
        spec.kind === 'resumed-tls13' && lat
          ? { offered: d('offered'), resumed: d('resumed'), offeredNotResumed: d('notResumed'), resumedPct, ...lat }
          : undefined,
      alpn: spec.kind.startsWith('alpn-') ? lat : undefined,
    };
  } finally {
    ab = await client.stop();
  }
  // Connections ab abandoned on SIGINT fail on the server side now: wait until the counters stop moving.
  const end = await settledCounters(env, spec, context.signal);
  return {
    window,
    run: {
      ab,
      clientErrors: load?.errors ?? 0,
      clientFirstError: load?.firstError,
      counters: diffCounters(run0, end.counters),
      keyserverSigns: withSigns ? signsBetween(signs0, end.signs) : undefined,
    },
  };
}
