/**
 * Benchmark: server CPU per keep-alive proxied request (1 KiB page, TLS 1.3, ECDSA P-256), the keyless proxy next to
 * nginx and caddy, over HTTP/1.1 (autocannon) and HTTP/2 (h2load, 10 streams per connection: issue 13). A description
 * for harness/runner.ts, and one run; set-up: lab.ts; figures and Markdown: report.ts; method and columns:
 * bench/README.md, "keepalive". Usage: node dist/bench/keepalive/main.js [--quick] [options] (--help).
 */
import { resolve } from 'node:path';
import { LOG_LEVELS, listOf, parseCli, pinning, std, timing } from '../harness/cli.js';
import { findOrInstall, nodeBinary, nodeVersionOf, versionOf } from '../harness/install.js';
import { perUnit, processTree, setAffinity, snapshot, usageBetween } from '../harness/proc-cpu.js';
import { fmt, plural } from '../harness/report.js';
import { type RunContext, type Scenario, sleep } from '../harness/rounds.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { autocannonVersion, clientSeconds, startAutocannon, startH2load } from './clients.js';
import { KeepaliveLab, SERVER_NAME, type ServerId } from './lab.js';
import { report } from './report.js';

const SERVER_IDS: readonly ServerId[] = ['keyedge', 'nginx', 'caddy'];
const count = (help: string, def: number) => ({ kind: 'number', arg: 'N', def, min: 1, integer: true, help }) as const;

const TABLE = {
  quick: std.quick('3 rounds of 2 s, 1.5 s warm-up per scenario (about a minute)'),
  out: std.out('keepalive'),
  rounds: std.rounds(5, 3),
  measure: std.measure(5, 2, 0.5),
  warmup: std.warmup(5, 1.5, 'per scenario (for the JIT)'),
  connections: count('autocannon -c: HTTP/1.1 keep-alive connections', 64),
  protocols: { kind: 'string', arg: 'h1,h2', def: 'h1,h2', help: 'HTTP/1.1 (autocannon) and/or HTTP/2 (h2load)' },
  'h2-connections': count('h2load -c: HTTP/2 connections', 4),
  'h2-streams': count('h2load -m: streams in flight per HTTP/2 connection', 10),
  workers: count('workers of the keyless proxy (the servers get one core)', 1),
  servers: { kind: 'string', arg: 'LIST', def: SERVER_IDS.join(','), help: 'keyedge,nginx,caddy (keyedge alone needs only the product)' },
  'no-install': { kind: 'flag', help: 'never apt-get install nginx or caddy (missing: skipped)' },
  pin: std.pin,
  'server-cpus': std.serverCpus,
  'client-cpus': std.clientCpus,
  'log-level': std.logLevel,
  'quiet-wait': std.quietWait,
  'proxy-node': { kind: 'number', arg: 'MAJOR', min: 18, integer: true, help: 'the keyless proxy under Node MAJOR (installed on first use)' },
  'cpu-prof': { kind: 'string', arg: 'DIR', help: 'run the proxy under node --cpu-prof into DIR; top functions per request in the report' },
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('keepalive/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  return {
    ...v,
    ...timing(v, [1000, 500], [300, 150]),
    ...pinning(v),
    protocols: listOf(v.protocols, '--protocols', ['h1', 'h2'] as const),
    servers: listOf(v.servers, '--servers', SERVER_IDS),
    accessLog: LOG_LEVELS.indexOf(v['log-level']) <= LOG_LEVELS.indexOf('info'),
    cpuProfDir: v['cpu-prof'] === undefined ? undefined : resolve(v['cpu-prof']),
  };
}

/** The lab, the scenarios skipped (why), the servers' versions, the requests each scenario's client sent (warm-up included). */
export type Lab = { lab: KeepaliveLab; skipped: Map<string, string>; versions: Record<string, string | undefined>; answered: Map<string, number> };
export type RunResult = Awaited<ReturnType<typeof runOnce>>;
export type KeepaliveScenario = Scenario<RunResult> & { label: string };

const KEEPALIVE: MeasuringBench<Options, Lab, KeepaliveScenario, RunResult> = {
  name: 'keepalive',
  parse: parseOptions,
  async setup(o, { log }, hold) {
    const skipped = new Map<string, string>();
    const [nginx, caddy] = (['nginx', 'caddy'] as const).map((server) => {
      const found = o.servers.includes(server) ? findOrInstall(server, server, !o['no-install'], log) : undefined;
      if (found?.ok === false) skipped.set(server, found.reason);
      return found?.ok ? found.path : undefined;
    });
    const proxyNode = o['proxy-node'] === undefined ? undefined : nodeBinary(o['proxy-node'], log);
    const versions = {
      proxyNode: proxyNode === undefined ? `${process.version} (OpenSSL ${process.versions.openssl})` : nodeVersionOf(proxyNode),
      autocannon: autocannonVersion(),
      ...(nginx === undefined ? {} : { nginx: versionOf(nginx, ['-v'])?.replace(/^nginx version: nginx\//, '') }),
      ...(caddy === undefined ? {} : { caddy: versionOf(caddy, ['version'])?.split(' ')[0] }),
    };
    if (o.clientCpus !== undefined) setAffinity(process.pid, o.clientCpus);
    // Held as soon as it exists: the runner stops and removes what it started, on failure too.
    const lab = new KeepaliveLab({ ...o, nginx, caddy, proxyNode });
    const held = { lab, skipped, versions, answered: new Map<string, number>() };
    hold(held);
    log(`temp dir ${lab.dir}`);
    for (const [server, reason] of await lab.start(log)) skipped.set(server, reason);
    for (const [server, reason] of skipped) log(`${server} skipped: ${reason}`);
    return held;
  },
  async scenarios({ lab, versions }, o) {
    const running = o.servers.filter((s) => lab.servers.has(s));
    const labels: Record<ServerId, string> = {
      keyedge: `keyedge proxy (keyless, ${plural(o.workers, 'worker')}${o['proxy-node'] === undefined ? '' : `, Node ${versions.proxyNode}`})`,
      nginx: `nginx ${versions.nginx ?? ''} (1 worker)`.replace('  ', ' '),
      caddy: `caddy ${versions.caddy ?? ''}`.trim(),
    };
    const scenario = (server: ServerId, h2: boolean): KeepaliveScenario => ({
      name: h2 ? `${server}-h2` : server,
      label: `${labels[server]}${h2 ? ', HTTP/2' : ''}`,
      run: (ms, context) => runOnce(lab, o, server, h2, ms, context),
    });
    return o.protocols.flatMap((p) => running.map((s) => scenario(s, p === 'h2')));
  },
  ownPids: ({ lab }) => [...lab.servers.values(), lab.origin].flatMap((p) => (p === undefined ? [] : processTree(p.pid))).concat(lab.keyserver?.pid ?? []),
  plan: (o, scenarios) =>
    `warm-up ${o.warmupMs / 1000} s per server, then ${o.rounds} rounds of ${o.measureMs / 1000} s over ${scenarios.map((s) => s.name).join(', ')}` +
    (o.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${o.serverCpus}, clients on CPU ${o.clientCpus}`),
  pad: 8,
  line({ window: w, client: c }, scenario, { answered }) {
    answered.set(scenario, (answered.get(scenario) ?? 0) + c.requests);
    const errors = c.errors + c.timeouts + c.non2xx > 0 ? `  ERRORS ${c.errors} errors, ${c.timeouts} timeouts, ${c.non2xx} non-2xx` : '';
    const cpu = `server ${fmt(w.serverUs, 1)} µs/req  origin ${fmt(w.originUs, 1)}  client ${fmt(w.clientUs, 1)} µs/req (${fmt(w.clientCores, 2)} cores)`;
    const cores = `server-side ${fmt(w.serverSideCores, 2)} cores  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}`;
    return `${fmt(w.requestsPerSecond).padStart(6)} req/s  ${cpu}  ${cores}${errors}`;
  },
  report,
  close: ({ lab }, o, log) => lab.close(o['keep-temp'], log),
  kill: ({ lab }, o) => lab.cleanup(o['keep-temp']),
};

/** One run: the client started, traffic and ramp-up awaited, a window of the origin's count and every process's CPU. */
async function runOnce(lab: KeepaliveLab, options: Options, server: ServerId, h2: boolean, durationMs: number, context: RunContext) {
  const count0 = await lab.originCount();
  const client = { serverName: SERVER_NAME, durationSec: clientSeconds(options.rampMs, durationMs), cpus: options.clientCpus };
  const [port, tool] = [lab.ports[server], h2 ? 'h2load' : 'autocannon'];
  const ac = h2
    ? startH2load({ ...client, port, connections: options['h2-connections'], streams: options['h2-streams'] })
    : startAutocannon({ ...client, url: `https://127.0.0.1:${port}/`, connections: options.connections });
  try {
    for (const started = Date.now(); (await lab.originCount()) <= count0; await sleep(25, context.signal)) {
      if (ac.exited()) throw new Error(`${tool} exited before sending a request`);
      if (Date.now() - started > 15_000) throw new Error('no request reached the origin within 15 s of starting the client');
    }
    await sleep(options.rampMs, context.signal);
    const groups = { proxy: lab.servers.get(server), keyserver: server === 'keyedge' ? lab.keyserver : undefined, origin: lab.origin, client: ac };
    const tracked = Object.entries(groups).map(([name, p]) => ({ name, roots: () => (p === undefined ? [] : [p.pid]) }));
    const [nA, sA] = [await lab.originCount(), snapshot(tracked)];
    await sleep(durationMs, context.signal);
    const [nB, sB] = [await lab.originCount(), snapshot(tracked)];
    if (ac.exited()) throw new Error(`${tool} finished before the measurement window closed`);
    const usage = usageBetween(sA, sB);
    const requests = nB - nA;
    const { per, cores, otherCores } = perUnit(usage, requests);
    const window = {
      requests,
      requestsPerSecond: requests / usage.seconds,
      serverUs: per('proxy', 'keyserver'),
      proxyUs: per('proxy'),
      originUs: per('origin'),
      clientUs: per('client'),
      clientCores: cores('client'),
      serverSideCores: cores('proxy', 'keyserver', 'origin'),
      machineBusyCores: usage.machineBusyCores,
      otherCores,
      usage,
    };
    // The client ends on its own at the end of its duration, a few seconds on; a hung one is killed (harness/spawn.ts).
    return { window, client: await ac.stop(undefined, 20_000) };
  } finally {
    ac.kill();
  }
}

runMeasuring(KEEPALIVE);
