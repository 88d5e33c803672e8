/**
 * Benchmark: server CPU per keep-alive proxied request (1 KiB page, TLS 1.3, ECDSA P-256), the keyless proxy next to
 * nginx and caddy, over HTTP/1.1 (autocannon) and HTTP/2 (h2load, 10 streams per connection: issue 13). A description
 * for harness/runner.ts; set-up: lab.ts; one run: measure.ts; figures and Markdown: report.ts; method and columns:
 * bench/README.md, "keepalive".
 *
 * Usage: node dist/bench/keepalive/main.js [--quick] [options]   (--help)
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { negotiates } from '../handshake/alpn.js';
import { shownCommand } from '../harness/spawn.js';
import { LOG_LEVELS, listOf, parseCli, pinning, std, timing } from '../harness/cli.js';
import { findOrInstall, versionOf } from '../harness/install.js';
import { nodeBinary, nodeVersionOf } from '../harness/install.js';
import { processTree } from '../harness/proc-cpu.js';
import { setAffinity } from '../harness/proc-cpu.js';
import { fmt, plural } from '../harness/report.js';
import type { Scenario } from '../harness/rounds.js';
import { type MeasuringBench, runMeasuring } from '../harness/runner.js';
import { skippedBenchRow } from '../harness/summary.js';
import { autocannonArgs, autocannonVersion, h2loadArgs } from './clients.js';
import { KeepaliveLab, ORIGIN_POOL, SERVER_NAME, type ServerId } from './lab.js';
import { type RunResult, runOnce } from './measure.js';
import { compareTo, errorCount, markdownReport, readProfiles, summarize, summaryRow } from './report.js';

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
  'proxy-node': {
    kind: 'number',
    arg: 'MAJOR',
    min: 18,
    integer: true,
    help: 'run the keyless proxy under this Node major (an npm package, installed on first use); default: this node',
  },
  'cpu-prof': { kind: 'string', arg: 'DIR', help: 'run the proxy under node --cpu-prof into DIR; top functions per request in the report' },
  'keep-temp': std.keepTemp,
} as const;

export type Options = NonNullable<ReturnType<typeof parseOptions>>;

function parseOptions(argv: string[]) {
  const v = parseCli('keepalive/main.js', TABLE, argv);
  if (v === undefined) return undefined;
  return {
    ...timing(v, [1000, 500], [300, 150]),
    connections: v.connections,
    protocols: listOf(v.protocols, '--protocols', ['h1', 'h2'] as const),
    h2Connections: v['h2-connections'],
    h2Streams: v['h2-streams'],
    workers: v.workers,
    servers: listOf(v.servers, '--servers', SERVER_IDS),
    install: !v['no-install'],
    ...pinning(v),
    logLevel: v['log-level'],
    accessLog: LOG_LEVELS.indexOf(v['log-level']) <= LOG_LEVELS.indexOf('info'),
    proxyNodeMajor: v['proxy-node'],
    cpuProfDir: v['cpu-prof'] === undefined ? undefined : resolve(v['cpu-prof']),
    keepTemp: v['keep-temp'],
  };
}

/** The lab, what was skipped and why, the servers' versions, and every request each server answered (warm-up included: what a --cpu-prof profile covers). */
interface Lab {
  readonly lab: KeepaliveLab;
  readonly skipped: Map<string, string>;
  readonly versions: Record<string, string | undefined>;
  readonly answered: Map<string, number>;
}
type KeepaliveScenario = Scenario<RunResult> & { server: ServerId; h2: boolean; label: string };

const COMMANDS = {
  keyedge: 'node dist/keyedge.cjs proxy --config <tmp>/proxy.json',
  keyserver: 'node dist/keyedge.cjs keyserver --config <tmp>/keyserver.json',
  nginx: 'nginx -p <tmp> -c <tmp>/nginx.conf -e <tmp>/nginx-error.log',
  caddy: 'caddy run --config <tmp>/caddy.json',
  origin: 'node dist/bench/keepalive/origin.js --port P',
};

const KEEPALIVE: MeasuringBench<Options, Lab, KeepaliveScenario, RunResult> = {
  name: 'keepalive',
  parse: parseOptions,
  async setup(options, { log }, hold) {
    // Third-party servers: found or installed, else skipped with the reason.
    const skipped = new Map<string, string>();
    const binaries = new Map<ServerId, string>();
    for (const server of ['nginx', 'caddy'] as const) {
      if (!options.servers.includes(server)) continue;
      const found = findOrInstall(server, server, options.install, log);
      if (found.ok) binaries.set(server, found.path);
      else {
        skipped.set(server, found.reason);
        log(`${server} skipped: ${found.reason}`);
      }
    }
    const proxyNode = options.proxyNodeMajor === undefined ? undefined : nodeBinary(options.proxyNodeMajor, log);
    const versions = {
      proxyNode: proxyNode === undefined ? `${process.version} (OpenSSL ${process.versions.openssl})` : nodeVersionOf(proxyNode),
      autocannon: await autocannonVersion(),
      ...(binaries.has('nginx') ? { nginx: versionOf(binaries.get('nginx')!, ['-v'])?.replace(/^nginx version: nginx\//, '') } : {}),
      ...(binaries.has('caddy') ? { caddy: versionOf(binaries.get('caddy')!, ['version'])?.split(' ')[0] } : {}),
    };
    if (options.clientCpus !== undefined) setAffinity(process.pid, options.clientCpus);
    if (options.cpuProfDir !== undefined) mkdirSync(options.cpuProfDir, { recursive: true });
    const proxyNodeArgs = options.cpuProfDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', options.cpuProfDir];
    const lab = await KeepaliveLab.create({ ...options, nginx: binaries.get('nginx'), caddy: binaries.get('caddy'), proxyNodeArgs, proxyNode }, log);
    const held = { lab, skipped, versions, answered: new Map<string, number>() };
    hold(held);
    log(`temp dir ${lab.dir}`);
    await lab.start(log);
    for (const [server, reason] of lab.failed) skipped.set(server, reason);
    return held;
  },
  async scenarios({ lab, skipped, versions }, options, { log }) {
    // HTTP/2: a server that does not negotiate h2 (keyedge before its HTTP/2 support) is skipped with a note.
    const ca = readFileSync(lab.caFile, 'utf8');
    const h2Servers = new Set<ServerId>();
    for (const server of options.protocols.includes('h2') ? options.servers.filter((s) => lab.servers.has(s)) : []) {
      const picked = await negotiates({ port: lab.port(server), serverName: SERVER_NAME, ca, protocol: 'h2' });
      if (picked === 'h2') h2Servers.add(server);
      else {
        skipped.set(`${server}-h2`, `${server} does not negotiate h2 (ALPN answer: ${picked || 'none'})`);
        log(`${server}-h2 skipped: the server does not negotiate h2`);
      }
    }
    const labels: Record<ServerId, string> = {
      keyedge: `keyedge proxy (keyless, ${plural(options.workers, 'worker')}${options.proxyNodeMajor === undefined ? '' : `, Node ${versions.proxyNode}`})`,
      nginx: `nginx ${versions.nginx ?? ''} (1 worker)`.replace('  ', ' '),
      caddy: `caddy ${versions.caddy ?? ''}`.trim(),
    };
    return options.protocols.flatMap((protocol) =>
      options.servers
        .filter((s) => lab.servers.has(s) && (protocol === 'h1' || h2Servers.has(s)))
        .map((server) => {
          const h2 = protocol === 'h2';
          const label = `${labels[server]}${h2 ? ', HTTP/2' : ''}`;
          return { name: h2 ? `${server}-h2` : server, label, server, h2, run: (ms, context) => runOnce(lab, options, server, h2, ms, context) };
        }),
    );
  },
  ownPids: ({ lab }) => [...lab.servers.values(), lab.origin].flatMap((p) => (p === undefined ? [] : processTree(p.pid))).concat(lab.keyserver?.pid ?? []),
  plan: (o, scenarios) =>
    `warm-up ${o.warmupMs / 1000} s per server, then ${o.rounds} rounds of ${o.measureMs / 1000} s over ${scenarios.map((s) => s.name).join(', ')}` +
    (o.serverCpus === undefined ? ', no pinning' : `; servers on CPU ${o.serverCpus}, autocannon on CPU ${o.clientCpus}`),
  pad: 8,
  line({ window: w, client: c }, scenario, { answered }) {
    answered.set(scenario, (answered.get(scenario) ?? 0) + c.requests);
    const errors = c.errors + c.timeouts + c.non2xx > 0 ? `  ERRORS ${c.errors} errors, ${c.timeouts} timeouts, ${c.non2xx} non-2xx` : '';
    return (
      `${fmt(w.requestsPerSecond).padStart(6)} req/s  server ${fmt(w.serverUs, 1)} µs/req  origin ${fmt(w.originUs, 1)}  client ${fmt(w.clientUs, 1)} µs/req ` +
      `(${fmt(w.clientCores, 2)} cores)  server-side ${fmt(w.serverSideCores, 2)} cores  machine ${fmt(w.machineBusyCores, 2)}, others ${fmt(w.otherCores, 2)}${errors}`
    );
  },
  async report({ lab, skipped, versions, answered }, options, scenarios, { results, failures, method }, { machine, date }) {
    const failed = (name: string) => failures.filter((f) => f.scenario === name && f.phase === 'measure').length;
    const summaries = scenarios.map((s) => summarize(s.name, s.label, results.get(s.name) ?? [], options.serverCpuCount, failed(s.name)));
    const comparisons = ['', '-h2'].flatMap((p) => (['caddy', 'nginx'] as const).flatMap((o) => compareTo(summaries, `keyedge${p}`, `${o}${p}`) ?? []));
    const h2Args = { port: 0, serverName: SERVER_NAME, connections: options.h2Connections, streams: options.h2Streams, durationSec: 0, cpus: undefined };
    const h2Command = shownCommand(options.clientCpus, 'h2load', h2loadArgs(h2Args), [
      [/-D 0/, '-D T'],
      [/:0\b/g, ':PORT'],
    ]);
    const acArgs = { url: 'https://127.0.0.1:PORT/', serverName: SERVER_NAME, connections: options.connections, durationSec: 0, cpus: undefined };
    const clientCommand = shownCommand(options.clientCpus, 'node_modules/.bin/autocannon', autocannonArgs(acArgs), [[/-d 0/, '-d T']]);
    // Stop the proxy first when profiling: node writes --cpu-prof files at exit.
    if (options.cpuProfDir !== undefined) await lab.servers.get('keyedge')?.stop(15_000);
    const profiles = options.cpuProfDir === undefined ? [] : readProfiles(options.cpuProfDir, answered.get('keyedge') ?? 0);
    const ctx = { machine, options, date, clientCommand, h2Command, commands: COMMANDS, versions, failures };
    const ratio = (other: string) => comparisons.find((c) => c.other === other)?.cpuRatio ?? null;
    const json = {
      versions,
      client: {
        command: clientCommand,
        connections: options.connections,
        cpus: options.clientCpus,
        h2: { command: h2Command, connections: options.h2Connections, streams: options.h2Streams },
      },
      servers: {
        ...COMMANDS,
        workers: options.workers,
        cpus: options.serverCpus,
        logLevel: options.logLevel,
        accessLog: options.accessLog,
        originPool: ORIGIN_POOL,
        protocols: Object.fromEntries(lab.protocols),
      },
      method: method(),
      failedRounds: failures,
      proxyConfig: lab.configs.keyedge,
      nginxConfig: lab.configs.nginx,
      caddyConfig: lab.configs.caddy,
      targets: {
        /** keyedge server CPU per request below caddy's, in this run. */
        keyedgeBelowCaddy: ratio('caddy') === null ? null : ratio('caddy')! < 1,
        keyedgeVsCaddyCpu: ratio('caddy'),
        keyedgeVsNginxCpu: ratio('nginx'),
        /** Issue 13: CPU per request over h2 (10 streams), keyedge ÷ nginx; target ≤ 2.0. */
        keyedgeVsNginxH2Cpu: ratio('nginx-h2'),
        keyedgeServerCpuUsPerRequest: summaries.find((s) => s.server === 'keyedge')?.serverUs.median ?? null,
      },
      comparisons,
      summary: [...summaries.map(summaryRow), ...[...skipped].map(([server, reason]) => skippedBenchRow('request', server, server, reason))],
      scenarios: summaries,
      profiles,
    };
    const errors = summaries.reduce((n, s) => n + errorCount(s), 0);
    return { json, markdown: markdownReport(ctx, summaries, skipped, comparisons, profiles), errors, what: 'requests' };
  },
  close: ({ lab }, o, log) => lab.close(o.keepTemp, log),
  kill: ({ lab }, o) => lab.cleanup(o.keepTemp),
};

runMeasuring(KEEPALIVE);
