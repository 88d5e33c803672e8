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
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { describeMachine } from '../harness/machine.js';
import { exitOnInterrupt, runBench } from '../harness/main.js';
import { fmt, writeReport } from '../harness/report.js';
import { sleep } from '../harness/rounds.js';
import { median, round } from '../harness/stats.js';
import type { IssuedLeaf } from '../lab/cert-factory.js';
import { CertLab, type LabKey, writeAtomically } from '../lab/cert-lab.js';
import { diffCounters, type HandshakeCounters, readHandshakeCounters } from '../lab/counters.js';
import { ReloadLoad, type Target } from './load.js';
import { type Replacement, reloadReport, TRIGGER_TITLE, type Trigger } from './report.js';

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

/**
 * Replacement i (1-based): 2 and 7 of every 5 are PUT and SIGHUP, the rest
 * renames, so --quick's 4 covers every trigger and 20 give 12 / 4 / 4.
 */
function triggerOf(i: number): Trigger {
  return i % 5 === 2 ? 'put' : i % 5 === 4 ? 'sighup' : 'rename';
}

interface Site extends Target {
  key: LabKey;
  serial: string;
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
  exitOnInterrupt(() => lab.cleanup(values['keep-temp']));
  const other = (key: LabKey): LabKey => lab.key(key.id === 'ec' ? 'rsa' : 'ec');
  try {
    const storeDir = join(lab.dir, 'store');
    const chainsDir = join(lab.dir, 'config-chains');
    mkdirSync(storeDir, { recursive: true });
    mkdirSync(chainsDir, { recursive: true });
    const cfgChain = join(chainsDir, 'cfg.pem');
    const issue = (target: Target, key: LabKey): IssuedLeaf => lab.ca.issue(key.spki, [target.serverName]);
    const site: Site = { entry: 'site', serverName: 'site.reload.test', key: lab.key('ec'), serial: '' };
    const cfg: Site = { entry: 'cfg', serverName: 'cfg.reload.test', key: lab.key('ec'), serial: '' };
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
    const countersBefore = await readHandshakeCounters(proxy.adminPort);

    const load = new ReloadLoad(proxy.port, lab.ca.pem, [site, cfg], newLoops, keepAliveLoops);
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
      const { seenMs: probeSeenMs, probes } = await load.probe(target, leaf.serial, writtenAt, probeMs);
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
    const loadSeconds = await load.stop();
    const countersAfter = await readHandshakeCounters(proxy.adminPort);
    const server: HandshakeCounters = diffCounters(countersBefore, countersAfter);

    // First new connection (load or probe) with the new serial; how long after the write one could still be handed the old certificate.
    for (const r of done) {
      const name = r.certificate === 'site' ? site.serverName : cfg.serverName;
      const mine = load.observations.filter((o) => o.serverName === name);
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
    const counts = load.counts;
    const failed = counts.failedHandshakes + counts.failedRequests + notServed;
    const summary = {
      replacements: done.length,
      loadSeconds: round(loadSeconds, 1),
      handshakes: counts.handshakes + counts.probeHandshakes,
      loadHandshakes: counts.handshakes,
      probeHandshakes: counts.probeHandshakes,
      requests: counts.newConnectionRequests + counts.probeRequests + counts.keepAliveRequests,
      newConnectionRequests: counts.newConnectionRequests + counts.probeRequests,
      keepAliveRequests: counts.keepAliveRequests,
      keepAliveReused: counts.keepAliveReused,
      failedHandshakes: counts.failedHandshakes,
      failedRequests: counts.failedRequests,
      notServed,
      timeToServeP50Ms: round(median(served), 1),
      handshakeP50Ms: round(median(load.observations.map((o) => o.handshakeMs)), 1),
      timeToServeMaxMs: round(served.length > 0 ? Math.max(...served) : Number.NaN, 1),
      byTrigger: byTrigger.map((t) => ({ ...t, p50Ms: round(t.p50Ms, 1), maxMs: round(t.maxMs, 1) })),
      server: { fullHandshakes: server.full, resumedHandshakes: server.resumed, failedHandshakes: server.failed, requests: server.requests },
    };

    const settings = { replacements, newLoops, keepAliveLoops, probeMs, pauseMs, workers: 2, rescanSeconds: 3600 };
    const { markdown, json } = reloadReport({ quick, machine, settings, loadSeconds, done, byTrigger, counts, server, summary, failed });
    const out = writeReport(values.out, quick ? 'cert-reload-quick' : 'cert-reload', json, markdown);
    process.stdout.write(`${markdown}\n\nwrote ${out.jsonPath} and ${out.markdownPath}\n`);
    await lab.stop();
    return failed > 0 ? 1 : 0;
  } finally {
    lab.cleanup(values['keep-temp']);
  }
}

runBench('cert-reload', main());
