/**
 * One run of one handshake scenario: start the kind's client (ab, or the resuming or ALPN client in this process),
 * ramp up, read the server's counters and every process's CPU around the window, stop the client, then wait until
 * the server's counters stop moving (ab abandons connections at SIGINT), so the run's counts are idle to idle.
 */
import { join } from 'node:path';
import { perUnit, snapshot, type TrackedGroup, usageBetween } from '../harness/proc-cpu.js';
import { type RunContext, type Scenario, sleep } from '../harness/rounds.js';
import { diffCounters, type HandshakeCounters, readHandshakeCounters, readKeyserverSigns, sumValues } from '../lab/counters.js';
import { readNginxStatus } from '../lab/nginx.js';
import { type AbResult, startAb } from './ab.js';
import { AlpnLoad, ResumeLoad } from './alpn.js';
import { type HandshakeLab, isKeyless, isNginx, type SetupId, setupGroups } from './lab.js';
import type { ScenarioSpec } from './scenarios.js';

export function trackedGroups(lab: HandshakeLab, clientPid: number | undefined): TrackedGroup[] {
  const group = (name: string, pid: number | undefined) => ({ name, roots: () => [pid ?? -1] });
  return [
    ...[...lab.servers].map(([setup, p]) => group(setup, p.pid)),
    ...[...(lab.nginx?.instances ?? new Map())].map(([variant, i]) => ({ name: `nginx-${variant}`, roots: () => [i.process?.pid ?? -1] })),
    group('keyserver', lab.keyserver?.pid),
    group('origin', lab.origin?.pid),
    { name: 'p11kit', roots: () => [lab.nginx?.p11kitServer?.pid ?? -1] },
    group('client', clientPid),
  ];
}

/** The bench's own stub_status reads, by admin port. */
const statusReads = new Map<number, number>();

/**
 * The server's handshake counters: the Node servers' admin metrics, or nginx's stub_status, whose `requests` counts
 * the status reads too (a reused status connection would hide them from `handled`): the bench subtracts its own, and
 * with one GET per connection `full` = TLS connections that carried their request (nginx does not tell full from
 * resumed or failed handshakes; the clients' own counts cover that).
 */
async function readCounters(lab: HandshakeLab, setup: SetupId): Promise<HandshakeCounters> {
  const { admin } = lab.ports.endpoints[setup]!;
  if (!isNginx(setup)) return readHandshakeCounters(admin);
  statusReads.set(admin, (statusReads.get(admin) ?? 0) + 1);
  return { full: (await readNginxStatus(admin)).requests - statusReads.get(admin)!, resumed: 0, failed: 0, requests: {}, keylessSigns: 0 };
}

export type RunResult = Awaited<ReturnType<typeof runScenario>>;
export interface BenchScenario extends Scenario<RunResult> {
  readonly spec: ScenarioSpec;
}

/** Signs per algorithm between two reads of the key server's counters (counters only grow, and only appear). */
type Signs = Record<string, number> | undefined;
const signsBetween = (a: Signs, b: Signs): Signs => (a && b ? Object.fromEntries(Object.entries(b).map(([k, n]) => [k, n - (a[k] ?? 0)])) : undefined);

/** The kind's client: ab (its own process, stopped with SIGINT), or the resuming or ALPN client in this process (`load`). */
function startClient(lab: HandshakeLab, spec: ScenarioSpec, durationMs: number, context: RunContext) {
  const { options } = lab;
  const port = lab.ports.endpoints[spec.setup]!.port;
  const target = { port, serverName: spec.key.serverName, ca: lab.ca, loops: options.resumeLoops };
  if (spec.kind === 'resumed-tls13' || spec.kind.startsWith('alpn-')) {
    const load: AlpnLoad =
      spec.kind === 'resumed-tls13' ? new ResumeLoad(target) : new AlpnLoad({ ...target, protocol: spec.kind === 'alpn-h2' ? 'h2' : 'http/1.1' });
    load.start();
    return { pid: undefined, load, check: async () => undefined, stop: async (): Promise<AbResult | undefined> => void (await load.stop()) };
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
  const check = async () => {
    if (!ab.exited()) return;
    const r = await ab.done;
    throw new Error(`ab exited before the window closed (status ${r.exitCode ?? r.signal}): ${r.stderr.join(' | ') || 'no message'}`);
  };
  return { pid: ab.pid, load: undefined, check, stop: () => ab.stop('SIGINT') };
}

/**
 * One run. Handshakes in the window: full ones the server counted for ab, connections the client completed for the
 * in-process clients. ALPN kinds do not read the key server's signs.
 */
export async function runScenario(lab: HandshakeLab, spec: ScenarioSpec, durationMs: number, context: RunContext) {
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
    // Server CPU = the set-up's processes (front + key holder); the origin and the client apart (an in-process client
    // is this bench's own CPU), and the cores other processes used (contention).
    const handshakes = load === undefined ? server.full : d('completed');
    const { front, key } = setupGroups(spec.setup);
    const { per, cores, otherCores } = perUnit(usage, handshakes);
    const clientCores = load === undefined ? cores('client') : usage.selfCores;
    const latency = load?.latency.summary();
    const lat = latency && { p50Us: latency.p50Us, p99Us: latency.p99Us };
    const [offered, resumed, offeredNotResumed] = [d('offered'), d('resumed'), d('offeredNotResumed')];
    const resume = { offered, resumed, offeredNotResumed, resumedPct: (100 * resumed) / Math.max(1, d('completed')) };
    return {
      seconds: usage.seconds,
      handshakes,
      /** Server counters over the window (nginx: connections as `full`). */
      server,
      /** Key server signs in the window, all algorithms (keyless set-ups). */
      keyserverSigns: signs && sumValues(signs),
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
      /** Resumed kind: tickets offered and resumed in the window, the client's latency. */
      resume: spec.kind === 'resumed-tls13' && lat ? { ...resume, ...lat } : undefined,
      /** ALPN kinds: the client's latency in the window. */
      alpn: spec.kind.startsWith('alpn-') ? lat : undefined,
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
