/**
 * Benchmark: certificate replacement under load. A real `keyedge proxy` (cluster, 2 workers) serves two certificates
 * under new-connection and keep-alive load while they are replaced in turn (ECDSA P-256 ⇄ RSA-2048) the three ways an
 * operator has: a store entry renamed over `<name>.pem`, PUT /certs/:name, a config chain rewritten then SIGHUP.
 * Figures: time until a new connection gets the new serial, the primary's reload time, how long the old certificate
 * was still served, failures (must be 0). bench/README.md, "cert-reload".
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { describeMachine, fmt } from '../harness/report.js';
import { sleep } from '../harness/rounds.js';
import { type Log, runBench } from '../harness/runner.js';
import { round } from '../harness/stats.js';
import { CertLab, type LabKey, type RunningProxy, writeAtomically } from '../lab/cert-lab.js';
import { ReloadLoad } from './load.js';
import { reloadReport, TRIGGER_TITLE, type Trigger } from './report.js';

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

/** Replacement i (1-based): 2 and 4 of every 5 are PUT and SIGHUP, the rest renames, so --quick's 4 covers every trigger and 20 give 12 / 4 / 4. */
const triggerOf = (i: number): Trigger => (i % 5 === 2 ? 'put' : i % 5 === 4 ? 'sighup' : 'rename');

type Site = { readonly entry: string; readonly serverName: string; readonly file: string; key: LabKey; serial: string };

/** What every replacement uses; `reloadFrom`: the proxy log's line after the last "reload done" seen. */
type Bench = { lab: CertLab; proxy: RunningProxy; load: ReloadLoad; sites: readonly Site[]; probeMs: number; reloadFrom: number; say: Log };

/**
 * Replacement `index`: a leaf on the other key, written the trigger's way, probed until served; the primary's account
 * (its next "reload done" line with a change in it, waited for up to 5 s). `writtenAt`: performance.now() once the
 * write took effect (PUT: answered); `probeMs`: when the probe saw the new serial.
 */
async function replace(bench: Bench, index: number) {
  const { lab, proxy, load, sites } = bench;
  const trigger = triggerOf(index);
  const site = sites[trigger === 'sighup' ? 1 : 0]!;
  const [fromKey, oldSerial] = [site.key, site.serial];
  const toKey = lab.key(fromKey.id === 'ec' ? 'rsa' : 'ec');
  const leaf = lab.ca.issue(toKey.spki, [site.serverName]);
  const sentAt = performance.now();
  if (trigger === 'put') {
    const answer = await proxy.admin('PUT', `/certs/${site.entry}`, leaf.chain);
    if (answer.status !== 200) throw new Error(`PUT /certs/${site.entry} answered ${answer.status}: ${answer.text}`);
  } else {
    writeAtomically(site.file, leaf.chain);
    if (trigger === 'sighup') process.kill(proxy.process.pid, 'SIGHUP');
  }
  const writtenAt = performance.now();
  const seenMs = await load.probe(site, leaf.serial, writtenAt, bench.probeMs);
  [site.key, site.serial] = [toKey, leaf.serial];
  const line = await proxy.log.next('reload done', bench.reloadFrom, 5_000, (l) => Number(l.changed) > 0);
  if (line !== undefined) bench.reloadFrom = proxy.log.lines.indexOf(line) + 1;
  const reload = line && { trigger: String(line.trigger), durationMs: Number(line.durationMs) };
  const served = seenMs === undefined ? 'NOT served within 15 s' : `probe saw the new serial after ${fmt(seenMs, 1)} ms`;
  bench.say(`#${index} ${TRIGGER_TITLE[trigger]} (${fromKey.title} → ${toKey.title}): ${served}; reload ${fmt(reload?.durationMs ?? Number.NaN)} ms`);
  const keys = { fromKey: fromKey.title, toKey: toKey.title, serial: leaf.serial, oldSerial };
  const times = { writtenAt, putRoundTripMs: trigger === 'put' ? round(writtenAt - sentAt, 2) : undefined, probeMs: seenMs && round(seenMs, 2) };
  return { index, trigger, certificate: site.entry, serverName: site.serverName, ...keys, ...times, reload };
}
export type Replacement = Awaited<ReturnType<typeof replace>>;

async function main(): Promise<number> {
  const v = parseCli('cert-reload/main.js', TABLE);
  if (v === undefined) return 0;
  const { replacements, 'new-loops': newLoops, 'keepalive-loops': keepAliveLoops, 'probe-ms': probeMs, 'pause-ms': pauseMs } = v;
  const machine = describeMachine();
  return CertLab.run(['ec', 'rsa'], v['keep-temp'], async (lab, say) => {
    const [storeDir, chainDir] = [join(lab.dir, 'store'), join(lab.dir, 'config-chains')];
    const site = (entry: string, dir: string): Site => {
      const [serverName, file, key] = [`${entry}.reload.test`, join(dir, `${entry}.pem`), lab.key('ec')];
      const leaf = lab.ca.issue(key.spki, [serverName]);
      mkdirSync(dir, { recursive: true });
      writeAtomically(file, leaf.chain);
      return { entry, serverName, file, key, serial: leaf.serial };
    };
    // The store entry `site` (rename, PUT) and the config's chain file `cfg` (SIGHUP); both start on the ECDSA key.
    const sites = [site('site', storeDir), site('cfg', chainDir)];
    const config = {
      certificates: [{ name: 'cfg', chain: sites[1]!.file }],
      domains: [{ name: '*.reload.test', origin: `http://127.0.0.1:${lab.originPort}` }],
      // The periodic rescan is pushed out of the run, so every reload is the trigger's own.
      certStore: { dir: storeDir, rescanSeconds: 3600 },
    };
    const proxy = await lab.startProxy({ name: 'proxy', config });
    say(`proxy pid ${proxy.process.pid} :${proxy.port}, ready in ${fmt(proxy.readyMs!)} ms; ${replacements} replacements under load`);
    const load = new ReloadLoad(proxy.port, lab.ca.pem, sites, newLoops, keepAliveLoops);
    await sleep(1000);

    const bench = { lab, proxy, load, sites, probeMs, reloadFrom: 0, say };
    const done: Replacement[] = [];
    for (let index = 1; index <= replacements; index++) {
      done.push(await replace(bench, index));
      await sleep(pauseMs);
    }
    await sleep(500);
    const loadSeconds = await load.stop();
    await proxy.stop();
    const settings = { replacements, newLoops, keepAliveLoops, probeMs, pauseMs, workers: 2, rescanSeconds: 3600 };
    const failed = reloadReport({ quick: v.quick, machine, settings, loadSeconds, replacements: done }, load, v.out, say);
    return failed > 0 ? 1 : 0;
  });
}

runBench('cert-reload', main());
