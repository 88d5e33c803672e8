/**
 * Benchmark: certificate replacement under load. A real `keyedge proxy`
 * (cluster, 2 workers) serves two certificates while new TLS connections
 * (node:tls connect + GET + close, several loops) and keep-alive requests
 * (node https.Agent, keepAlive) run without pause; meanwhile the
 * certificates are replaced one after the other, alternating ECDSA P-256 and
 * RSA-2048 keys (every replacement is also a change of key), by the three
 * ways an operator has:
 *   rename   the store entry's PEM written to a temp file in the store
 *            directory and renamed over `<name>.pem` (the file watch reloads)
 *   PUT      PUT /certs/:name on the admin API with the bearer token
 *   SIGHUP   a chain file listed in the config rewritten (temp + rename,
 *            outside any watched directory), then SIGHUP to the primary
 * Per replacement: the time from the write (rename returned / PUT answered /
 * signal sent) until a new connection first gets the new serial, probing new
 * connections every ~10 ms; the primary's "reload done" durationMs; how long
 * after the write a new connection could still get the old certificate.
 * Overall: handshakes and requests made, and failed ones, which must be 0.
 * See bench/README.md, section "cert-reload".
 *
 * Usage: node dist/bench/cert-reload.js [--quick] [options]   (--help)
 */
import https from 'node:https';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { parseCli, std } from '../harness/cli.js';
import { type LabKey, agentGet, CertLab, connectOnce, sleep, writeAtomically } from '../lab/cert-lab.js';
import type { IssuedLeaf } from '../lab/cert-factory.js';
import { type HandshakeCounters, diffCounters, readHandshakeCounters } from '../lab/counters.js';
import { describeMachine } from '../harness/machine.js';
import { dateStamp, fmt, markdownTable, writeReport } from '../harness/report.js';
import { median, round } from '../harness/stats.js';
import type { SummaryRow } from '../harness/summary.js';

const TABLE = {
  quick: std.quick('4 replacements (one of each trigger at least); writes -cert-reload-quick'),
  replacements: { kind: 'number', arg: 'N', def: 20, quick: 4, min: 1, integer: true, help: 'replacements in a row' },
  'new-loops': { kind: 'number', arg: 'N', def: 4, min: 1, integer: true, help: 'loops making new connections (connect + GET + close)' },
  'keepalive-loops': { kind: 'number', arg: 'N', def: 2, min: 1, integer: true, help: 'loops of keep-alive requests, one connection each' },
  'probe-ms': { kind: 'number', arg: 'MS', def: 10, min: 1, help: 'interval of the new-connection probe for the new serial' },
  'pause-ms': { kind: 'number', arg: 'MS', def: 300, min: 0, help: 'load-only pause between replacements' },
  out: std.out('cert-reload'),
  'keep-temp': std.keepTemp,
} as const;

type Trigger = 'rename' | 'put' | 'sighup';
const TRIGGER_TITLE: Record<Trigger, string> = { rename: 'store file rename', put: 'admin PUT /certs/site', sighup: 'config chain + SIGHUP' };

/**
 * Replacement i (1-based): 2 and 7 of every 5 are PUT and SIGHUP, the rest
 * renames, so --quick's 4 covers every trigger and 20 give 12 / 4 / 4.
 */
function triggerOf(i: number): Trigger {
  return i % 5 === 2 ? 'put' : i % 5 === 4 ? 'sighup' : 'rename';
}

interface Target {
  readonly entry: string;
  readonly serverName: string;
  key: LabKey;
  serial: string;
}

interface Observation {
  readonly serverName: string;
  readonly serial: string;
  /** When the handshake completed. */
  readonly at: number;
  /** Connect to handshake completed, ms. */
  readonly handshakeMs: number;
}

interface Replacement {
  readonly index: number;
  readonly trigger: Trigger;
  readonly certificate: string;
  readonly fromKey: string;
  readonly toKey: string;
  readonly serial: string;
  readonly oldSerial: string;
  /** The write's reference instant (performance.now()): rename returned, PUT answered, SIGHUP sent. */
  readonly writtenAt: number;
  /** When the write began: as writtenAt, but the PUT's request sent. */
  readonly startedAt: number;
  /** PUT only: from sending the request to its answer. */
  readonly putRoundTripMs?: number;
  /** From writtenAt until a new connection (load or probe) first completed a handshake with the new serial. */
  timeToServeMs?: number | undefined;
  /** The same from startedAt (differs for PUT only). */
  timeToServeFromStartMs?: number | undefined;
  /** From writtenAt until the probe saw the new serial. */
  readonly probeMs: number | undefined;
  readonly probes: number;
  readonly reload: { readonly trigger: unknown; readonly generation: unknown; readonly durationMs: unknown } | undefined;
  oldLastSeenMs?: number | undefined;
}

interface LoadCounters {
  handshakes: number;
  newConnectionRequests: number;
  keepAliveRequests: number;
  keepAliveReused: number;
  probeHandshakes: number;
  probeRequests: number;
  failedHandshakes: number;
  failedRequests: number;
  readonly failures: { readonly at: string; readonly what: string; readonly error: string }[];
}

async function main(): Promise<number> {
  const values = parseCli('cert-reload/main.js', TABLE);
  if (values === undefined) return 0;
  const quick = values.quick;
  const replacements = values.replacements;
  const newLoops = values['new-loops'];
  const keepAliveLoops = values['keepalive-loops'];
  const probeMs = values['probe-ms'];
  const pauseMs = values['pause-ms'];
  const machine = describeMachine();
  const say = (line: string): void => void process.stderr.write(`${line}\n`);

  const lab = await CertLab.start(
    [
      { id: 'ec', title: 'ECDSA P-256', type: 'ec-p256' },
      { id: 'rsa', title: 'RSA-2048', type: 'rsa-2048' },
    ],
    say,
  );
  process.on('exit', () => lab.cleanup(values['keep-temp']));
  process.on('SIGINT', () => process.exit(130));
  const other = (key: LabKey): LabKey => lab.key(key.id === 'ec' ? 'rsa' : 'ec');
  try {
    const storeDir = join(lab.dir, 'store');
    const chainsDir = join(lab.dir, 'config-chains');
    mkdirSync(storeDir, { recursive: true });
    mkdirSync(chainsDir, { recursive: true });
    const cfgChain = join(chainsDir, 'cfg.pem');
    const issue = (target: Pick<Target, 'serverName'>, key: LabKey): IssuedLeaf => lab.ca.issue(key.spki, [target.serverName]);
    const site: Target = { entry: 'site', serverName: 'site.reload.test', key: lab.key('ec'), serial: '' };
    const cfg: Target = { entry: 'cfg', serverName: 'cfg.reload.test', key: lab.key('ec'), serial: '' };
    for (const [target, file] of [
      [site, join(storeDir, 'site.pem')],
      [cfg, cfgChain],
    ] as const) {
      const leaf = issue(target, target.key);
      writeAtomically(file, lab.ca.chain(leaf));
      target.serial = leaf.serial;
    }

    const base = await lab.baseConfig();
    const config = {
      ...base.config,
      certificates: [{ name: 'cfg', chain: cfgChain }],
      domains: [{ name: '*.reload.test', origin: `http://127.0.0.1:${lab.originPort}` }],
      // The periodic rescan is pushed out of the run, so every reload is the trigger's own.
      certStore: { dir: storeDir, rescanSeconds: 3600 },
    };
    const proxy = await lab.startProxy({ name: 'proxy', config });
    say(
      `proxy pid ${proxy.process.pid} :${proxy.port} (workers ${proxy.pids().workers.join(', ')}), ready in ${fmt(proxy.readyMs ?? Number.NaN)} ms; ${replacements} replacements under load`,
    );
    const ca = lab.ca.pem;
    const countersBefore = await readHandshakeCounters(proxy.adminPort);

    const load: LoadCounters = {
      handshakes: 0,
      newConnectionRequests: 0,
      keepAliveRequests: 0,
      keepAliveReused: 0,
      probeHandshakes: 0,
      probeRequests: 0,
      failedHandshakes: 0,
      failedRequests: 0,
      failures: [],
    };
    const observations: Observation[] = [];
    const fail = (what: string, error: string): void => {
      load.failures.push({ at: new Date().toISOString(), what, error });
    };
    let running = true;
    const targets = [site, cfg];
    const newConnections = async (loop: number): Promise<void> => {
      for (let n = 0; running; n++) {
        const target = targets[(loop + n) % targets.length]!;
        const r = await connectOnce(proxy.port, target.serverName, ca, true);
        if (r.serial !== undefined && r.handshakeAt !== undefined)
          observations.push({ serverName: target.serverName, serial: r.serial, at: r.handshakeAt, handshakeMs: r.handshakeAt - r.startedAt });
        if (r.failed === 'handshake') {
          load.failedHandshakes++;
          fail(`new connection ${target.serverName}: handshake`, r.error ?? '');
          continue;
        }
        load.handshakes++;
        if (r.ok) load.newConnectionRequests++;
        else {
          load.failedRequests++;
          fail(`new connection ${target.serverName}: request`, r.error ?? '');
        }
      }
    };
    const agents: https.Agent[] = [];
    const keepAlive = async (loop: number): Promise<void> => {
      const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
      agents.push(agent);
      const target = targets[loop % targets.length]!;
      while (running) {
        const r = await agentGet(agent, proxy.port, target.serverName, ca);
        if (r.ok) {
          load.keepAliveRequests++;
          if (r.reused) load.keepAliveReused++;
        } else {
          load.failedRequests++;
          fail(`keep-alive ${target.serverName}`, r.error ?? '');
        }
      }
    };
    const loops = [...Array.from({ length: newLoops }, (_, i) => newConnections(i)), ...Array.from({ length: keepAliveLoops }, (_, i) => keepAlive(i))];
    const loadStarted = performance.now();
    await sleep(1000);

    const done: Replacement[] = [];
    let reloadLines = 0;
    for (let index = 1; index <= replacements; index++) {
      const trigger = triggerOf(index);
      const target = trigger === 'sighup' ? cfg : site;
      const fromKey = target.key;
      const toKey = other(fromKey);
      const leaf = issue(target, toKey);
      const chain = lab.ca.chain(leaf);
      const oldSerial = target.serial;
      let writtenAt: number;
      let startedAt: number;
      let putRoundTripMs: number | undefined;
      if (trigger === 'rename') {
        writeAtomically(join(storeDir, `${target.entry}.pem`), chain);
        writtenAt = startedAt = performance.now();
      } else if (trigger === 'put') {
        startedAt = performance.now();
        const answer = await proxy.admin('PUT', `/certs/${target.entry}`, chain);
        writtenAt = performance.now();
        putRoundTripMs = writtenAt - startedAt;
        if (answer.status !== 200) throw new Error(`PUT /certs/${target.entry} answered ${answer.status}: ${answer.text}`);
      } else {
        writeAtomically(cfgChain, chain);
        process.kill(proxy.process.pid, 'SIGHUP');
        writtenAt = startedAt = performance.now();
      }
      // Probe: a new connection every probeMs (or back to back when one takes longer) until the new serial shows.
      // Probes are whole requests (connect + GET + close) like the load's, so the server sees no aborted connection.
      let probeSeenMs: number | undefined;
      let probes = 0;
      while (performance.now() - writtenAt < 15_000) {
        const started = performance.now();
        const r = await connectOnce(proxy.port, target.serverName, ca, true);
        probes++;
        if (r.serial !== undefined && r.handshakeAt !== undefined)
          observations.push({ serverName: target.serverName, serial: r.serial, at: r.handshakeAt, handshakeMs: r.handshakeAt - r.startedAt });
        if (r.failed === 'handshake') {
          load.failedHandshakes++;
          fail(`probe ${target.serverName}: handshake`, r.error ?? '');
        } else {
          load.probeHandshakes++;
          if (r.ok) load.probeRequests++;
          else {
            load.failedRequests++;
            fail(`probe ${target.serverName}: request`, r.error ?? '');
          }
          if (r.serial === leaf.serial) {
            probeSeenMs = r.handshakeAt! - writtenAt;
            break;
          }
        }
        await sleep(Math.max(0, probeMs - (performance.now() - started)));
      }
      target.key = toKey;
      target.serial = leaf.serial;
      // The primary's account of the reload: its "reload done" line with a change in it.
      let reload: Replacement['reload'];
      const lineDeadline = Date.now() + 5_000;
      for (;;) {
        const lines = proxy.log.find('reload done').filter((l) => Number(l.changed) > 0);
        if (lines.length > reloadLines) {
          const line = lines[reloadLines]!;
          reloadLines = lines.length;
          reload = { trigger: line.trigger, generation: line.generation, durationMs: line.durationMs };
          break;
        }
        if (Date.now() > lineDeadline) break;
        await sleep(20);
      }
      const entry: Replacement = {
        index,
        trigger,
        certificate: target.entry,
        fromKey: fromKey.title,
        toKey: toKey.title,
        serial: leaf.serial,
        oldSerial,
        writtenAt,
        startedAt,
        ...(putRoundTripMs === undefined ? {} : { putRoundTripMs }),
        probeMs: probeSeenMs,
        probes,
        reload,
      };
      done.push(entry);
      say(
        `#${index} ${TRIGGER_TITLE[trigger]} (${target.entry}: ${fromKey.title} → ${toKey.title}): ` +
          `${probeSeenMs === undefined ? 'NOT served within 15 s' : `probe saw the new serial after ${fmt(probeSeenMs, 1)} ms`} ` +
          `(${probes} probes); primary reload ${reload === undefined ? '?' : `${String(reload.trigger)} ${fmt(Number(reload.durationMs))} ms`}`,
      );
      await sleep(pauseMs);
    }
    await sleep(500);
    running = false;
    await Promise.all(loops);
    const loadSeconds = (performance.now() - loadStarted) / 1000;
    for (const agent of agents) agent.destroy();
    const countersAfter = await readHandshakeCounters(proxy.adminPort);
    const server: HandshakeCounters = diffCounters(countersBefore, countersAfter);

    // First new connection (load or probe) with the new serial; how long after the write one could still be handed the old certificate.
    for (const r of done) {
      const name = r.certificate === 'site' ? site.serverName : cfg.serverName;
      const mine = observations.filter((o) => o.serverName === name);
      const firstNew = (from: number): number | undefined => {
        const seen = mine.filter((o) => o.serial === r.serial && o.at >= from).map((o) => o.at);
        return seen.length === 0 ? undefined : Math.min(...seen) - from;
      };
      r.timeToServeMs = firstNew(r.writtenAt);
      r.timeToServeFromStartMs = firstNew(r.startedAt);
      const old = mine.filter((o) => o.serial === r.oldSerial && o.at >= r.writtenAt);
      r.oldLastSeenMs = old.length === 0 ? undefined : Math.max(...old.map((o) => o.at)) - r.writtenAt;
    }
    await proxy.stop();

    const served = done.map((r) => r.timeToServeMs).filter((v): v is number => v !== undefined);
    const byTrigger = (['rename', 'put', 'sighup'] as const).map((t) => {
      const ms = done
        .filter((r) => r.trigger === t)
        .map((r) => r.timeToServeMs)
        .filter((v): v is number => v !== undefined);
      return { trigger: t, count: ms.length, p50Ms: median(ms), maxMs: ms.length > 0 ? Math.max(...ms) : Number.NaN };
    });
    const notServed = done.filter((r) => r.timeToServeMs === undefined).length;
    const failed = load.failedHandshakes + load.failedRequests + notServed;
    const summary = {
      replacements: done.length,
      loadSeconds: round(loadSeconds, 1),
      handshakes: load.handshakes + load.probeHandshakes,
      loadHandshakes: load.handshakes,
      probeHandshakes: load.probeHandshakes,
      requests: load.newConnectionRequests + load.probeRequests + load.keepAliveRequests,
      newConnectionRequests: load.newConnectionRequests + load.probeRequests,
      keepAliveRequests: load.keepAliveRequests,
      keepAliveReused: load.keepAliveReused,
      failedHandshakes: load.failedHandshakes,
      failedRequests: load.failedRequests,
      notServed,
      timeToServeP50Ms: round(median(served), 1),
      handshakeP50Ms: round(median(observations.map((o) => o.handshakeMs)), 1),
      timeToServeMaxMs: round(served.length > 0 ? Math.max(...served) : Number.NaN, 1),
      byTrigger: byTrigger.map((t) => ({ ...t, p50Ms: round(t.p50Ms, 1), maxMs: round(t.maxMs, 1) })),
      server: { fullHandshakes: server.full, resumedHandshakes: server.resumed, failedHandshakes: server.failed, requests: server.requests },
    };

    const rows = done.map((r) => [
      String(r.index),
      TRIGGER_TITLE[r.trigger],
      r.certificate,
      `${r.fromKey} → ${r.toKey}`,
      r.timeToServeMs === undefined ? 'not served' : fmt(r.timeToServeMs, 1),
      r.reload === undefined ? '?' : `${fmt(Number(r.reload.durationMs))} (${String(r.reload.trigger)})`,
      r.probeMs === undefined ? '–' : fmt(r.probeMs, 1),
      r.putRoundTripMs === undefined ? '' : `${fmt(r.putRoundTripMs, 1)} / ${r.timeToServeFromStartMs === undefined ? '–' : fmt(r.timeToServeFromStartMs, 1)}`,
      r.oldLastSeenMs === undefined ? '–' : fmt(r.oldLastSeenMs, 1),
      String(r.probes),
    ]);
    const markdown = [
      `# cert-reload${quick ? ' (quick)' : ''}: ${done.length} certificate replacements under load, ${dateStamp()}`,
      '',
      `\`keyedge proxy\`, 2 workers, key server with an ECDSA P-256 and an RSA-2048 key (SoftHSM2), demo origin. ` +
        `Load for ${fmt(loadSeconds, 1)} s: ${newLoops} loops of new connections (node:tls connect + GET + close) and ${keepAliveLoops} keep-alive loops (https.Agent, one connection each), over both certificates. ` +
        `Time to serve: from the write (rename returned / PUT answered / SIGHUP sent) until a new connection (probed every ${probeMs} ms) first got the new serial.`,
      '',
      markdownTable(
        ['Figure', 'Value'],
        [
          ['replacements (rename / PUT / SIGHUP)', `${done.length} (${byTrigger.map((t) => done.filter((r) => r.trigger === t.trigger).length).join(' / ')})`],
          ['handshakes (load + probes)', `${fmt(summary.handshakes)} (${fmt(load.handshakes)} + ${fmt(load.probeHandshakes)})`],
          [
            'requests (new connections + keep-alive)',
            `${fmt(summary.requests)} (${fmt(summary.newConnectionRequests)} + ${fmt(load.keepAliveRequests)}, ${fmt(load.keepAliveReused)} on a reused connection)`,
          ],
          ['failed handshakes', fmt(load.failedHandshakes)],
          ['failed requests', fmt(load.failedRequests)],
          ['replacements not served within 15 s', fmt(notServed)],
          ['time to serve p50 / max, ms', `${fmt(summary.timeToServeP50Ms, 1)} / ${fmt(summary.timeToServeMaxMs, 1)}`],
          ['new connection: connect → handshake done, p50 ms (part of every time to serve)', fmt(summary.handshakeP50Ms, 1)],
          ...byTrigger.map((t) => [`… ${TRIGGER_TITLE[t.trigger]} (${t.count}) p50 / max, ms`, `${fmt(t.p50Ms, 1)} / ${fmt(t.maxMs, 1)}`]),
          ['proxy counters: full handshakes / failed (server side)', `${fmt(server.full)} / ${fmt(server.failed)}`],
        ],
        ['left', 'right'],
      ),
      '',
      markdownTable(
        [
          '#',
          'trigger',
          'entry',
          'key change',
          'time to serve ms',
          'primary reload ms (trigger)',
          'probe saw it ms',
          'PUT round trip / serve from sent ms',
          'old cert last seen ms',
          'probes',
        ],
        rows,
        ['right', 'left', 'left', 'left', 'right', 'right', 'right', 'right', 'right', 'right'],
      ),
      '',
      '"time to serve": the first new connection, load or probe, whose handshake completed with the new certificate, counted from the write. "probe saw it": the same for the ~10 ms probe alone. ' +
        '"PUT round trip / serve from sent": the PUT\'s answer time, and the time to serve counted from sending it (the answer comes once every worker serves the new certificate). ' +
        '"primary reload ms": durationMs of the primary\'s "reload done" log line (from the trigger reaching the primary until every worker acknowledged the new state; a rename waits 150 ms of watch debounce before that). ' +
        '"old cert last seen": the latest new connection, load or probe, that still completed its handshake with the previous certificate, counted from the write ("–": none after it).',
      '',
      `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB, ${machine.kernel}; Node ${machine.node}, OpenSSL ${machine.openssl}; ${machine.softhsm2 === undefined ? '' : `SoftHSM2 ${machine.softhsm2}; `}load average at start ${machine.loadAverageAtStart.join(' ')}.`,
      '',
      `Command: \`${machine.commandLine}\``,
      ...(load.failures.length === 0 ? [] : ['', '## Failures', '', ...load.failures.slice(0, 50).map((f) => `- ${f.at} ${f.what}: ${f.error}`)]),
    ].join('\n');
    const out = writeReport(
      values.out,
      quick ? 'cert-reload-quick' : 'cert-reload',
      {
        benchmark: 'cert-reload',
        machine,
        settings: { replacements, newLoops, keepAliveLoops, probeMs, pauseMs, workers: 2, rescanSeconds: 3600 },
        // The suite's one-row-per-scenario shape (harness/summary.ts): no rate or CPU here; p50 / p99 are time to serve p50 / max.
        summary: byTrigger.map(
          (t): SummaryRow => ({
            bench: 'cert-reload',
            scenario: t.trigger,
            label: `replacement by ${TRIGGER_TITLE[t.trigger]}: time to serve (p99 = max)`,
            unit: 'request',
            rate: Number.NaN,
            serverCpuUs: Number.NaN,
            p50Ms: round(t.p50Ms, 1),
            p99Ms: round(t.maxMs, 1),
            clientSaturated: false,
            errors: failed,
            spreadPct: Number.NaN,
            otherCores: Number.NaN,
          }),
        ),
        figures: summary,
        replacements: done.map(({ writtenAt: _w, startedAt: _s, ...r }) => ({
          ...r,
          timeToServeMs: roundOrUndefined(r.timeToServeMs),
          timeToServeFromStartMs: roundOrUndefined(r.timeToServeFromStartMs),
          probeMs: roundOrUndefined(r.probeMs),
          putRoundTripMs: roundOrUndefined(r.putRoundTripMs),
          oldLastSeenMs: roundOrUndefined(r.oldLastSeenMs),
        })),
        failures: load.failures,
      },
      markdown,
    );
    process.stdout.write(`${markdown}\n\nwrote ${out.jsonPath} and ${out.markdownPath}\n`);
    await lab.stop();
    return failed > 0 ? 1 : 0;
  } finally {
    lab.cleanup(values['keep-temp']);
  }
}

function roundOrUndefined(value: number | undefined): number | undefined {
  return value === undefined ? undefined : round(value, 2);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`cert-reload: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
