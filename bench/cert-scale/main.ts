/**
 * Benchmark: the proxy with a large certificate store (default 10,000 entries n<i>.scale.test, one name each, all on
 * one ECDSA P-256 key, issued by a throwaway CA in this process) against a real `keyedge proxy` (cluster, 2 workers):
 * a first start (every entry validated, verdicts recorded), then the start measured (verdicts known: until /readyz
 * 200, split by the log lines), RSS after start, one-entry reloads (rename → new serial served) and no-change rescans,
 * bounded memory (more names than contextCacheSize, pass after pass) and memory per secure context (cache 1 vs M).
 * `--cpu-prof` profiles the start-up, the reloads and the rescans instead. See bench/README.md, section "cert-scale".
 *
 * Usage: node dist/bench/cert-scale/main.js [--quick] [--names N] [options]   (--help)
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { describeMachine } from '../harness/report.js';
import { exitOnInterrupt, runBench } from '../harness/runner.js';
import { fmt } from '../harness/report.js';
import { sleep } from '../harness/rounds.js';
import { CertLab } from '../lab/cert-lab.js';
import { notReadyReport, profileReport, scaleReport } from './report.js';
import {
  handshakeAll,
  hostOf,
  listingCost,
  monotonicUs,
  nameOf,
  type Rss,
  replaceOne,
  rescan,
  rssOf,
  scaleConfig,
  settle,
  startupPhases,
  workersRss,
} from './steps.js';

const TABLE = {
  quick: std.quick('1,000 names, contextCacheSize 200, 500 names in the bounded-memory pass, 300 in the per-context measurement'),
  names: { kind: 'number', arg: 'N', def: 10_000, quick: 1000, min: 2, integer: true, help: 'store entries' },
  bounded: { kind: 'number', arg: 'N', def: 5000, quick: 500, min: 1, integer: true, help: 'distinct names for the bounded-memory pass (at most --names)' },
  'bounded-passes': { kind: 'number', arg: 'N', def: 3, min: 1, integer: true, help: 'passes over those names: RSS after each shows whether it levels off' },
  cache: { kind: 'number', arg: 'N', def: 1000, quick: 200, min: 1, integer: true, help: 'tls.contextCacheSize of the scale proxy' },
  'context-names': {
    kind: 'number',
    arg: 'M',
    def: 1000,
    quick: 300,
    min: 2,
    integer: true,
    help: 'store entries and contextCacheSize for the per-context measurement',
  },
  concurrency: { kind: 'number', arg: 'N', def: 8, min: 1, integer: true, help: 'connections in flight in the handshake passes' },
  reloads: { kind: 'number', arg: 'N', def: 3, min: 1, integer: true, help: 'one-entry reloads and no-change rescans measured (each)' },
  'ready-timeout': { kind: 'number', arg: 'SEC', def: 480, min: 1, help: 'give up on a start-up after SEC' },
  'settle-max': {
    kind: 'number',
    arg: 'SEC',
    def: 180,
    quick: 60,
    min: 0,
    help: 'after start, wait up to SEC for the workers to go idle before measuring reloads',
  },
  'cpu-prof': { kind: 'flag', help: 'profiling run: start-up, one-entry reload and rescan under node --cpu-prof; <date>-cert-scale-profile.{json,md}' },
  top: { kind: 'number', arg: 'N', def: 25, min: 1, integer: true, help: 'functions listed per profile' },
  out: { kind: 'string', arg: 'DIR', def: 'bench/results', help: 'results directory; files cert-scale[-profile][-quick | -<N> when --names is not 10000]' },
  'keep-temp': std.keepTemp,
} as const;

const ms = (v: number | undefined, decimals = 0) => fmt(v ?? Number.NaN, decimals);
const rssText = (r: Rss) => `RSS primary ${fmt(r.primaryMiB, 1)} MiB, workers ${workersRss(r)} MiB`;

async function main(): Promise<number> {
  const v = parseCli('cert-scale/main.js', TABLE);
  if (v === undefined) return 0;
  const { quick, names, cache: cacheSize, concurrency, reloads, top, 'bounded-passes': boundedPasses } = v;
  const [bounded, readyTimeoutMs, profiling] = [Math.min(names, v.bounded), v['ready-timeout'] * 1000, v['cpu-prof']];
  const suffix = quick ? '-quick' : names === 10_000 ? '' : `-${names}`;
  const machine = describeMachine();
  const say = (line: string): void => void process.stderr.write(`${line}\n`);

  const lab = await CertLab.start([{ id: 'ec', title: 'ECDSA P-256', type: 'ec-p256' }], say);
  exitOnInterrupt(() => lab.cleanup(v['keep-temp']));
  try {
    const key = lab.key('ec');
    const ca = lab.ca.pem;
    const startProxy = async (name: string, store: string, size: number, more: Partial<Parameters<CertLab['startProxy']>[0]> = {}) =>
      lab.startProxy({ name, config: scaleConfig((await lab.baseConfig()).config, store, size, lab.originPort), readyTimeoutMs, ...more });

    // The store: one file per entry, the leaf and the CA (RFC 8446 §4.4.2: the chain the client needs).
    const storeDir = join(lab.dir, 'store');
    mkdirSync(storeDir, { recursive: true });
    const genStarted = performance.now();
    for (let i = 0; i < names; i++) writeFileSync(join(storeDir, `${nameOf(i)}.pem`), lab.ca.chain(lab.ca.issue(key.spki, [hostOf(i)])));
    const generateSeconds = (performance.now() - genStarted) / 1000;
    const listing = listingCost(storeDir);
    const scale = { names, cacheSize, generateSeconds, listing, machine };
    say(`store: ${fmt(names)} entries issued and written in ${fmt(generateSeconds, 1)} s; listing it costs ${fmt(listing.cpuMs, 1)} ms CPU`);

    // The first start meets every entry for the first time: it validates each and records the verdicts in the
    // state directory. The start measured after it is any later one (issue 15: validated once, when written).
    const firstAt = Date.now();
    const first = await startProxy('scale-first', storeDir, cacheSize, { allowNotReady: true });
    const firstReady = first.readyMs === undefined ? undefined : Math.round(first.readyMs);
    const firstStart = { readyMs: firstReady, phases: startupPhases(first, firstAt), rss: rssOf(first) };
    say(`first start (every entry validated, verdicts recorded): /readyz 200 after ${ms(firstReady)} ms; ${rssText(firstStart.rss)}`);
    await first.stop();

    const profDir = resolve('bench/results/tmp/profiles', `cert-scale-${process.pid}`);
    if (profiling) mkdirSync(profDir, { recursive: true });
    const [spawnedAt, spawnedUs] = [Date.now(), monotonicUs()];
    const profArgs = profiling ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir] } : {};
    const proxy = await startProxy('scale', storeDir, cacheSize, { allowNotReady: true, ...profArgs });
    const phases = startupPhases(proxy, spawnedAt);
    if (proxy.readyMs === undefined) {
      // Not ready in time: what it reached is the finding; the rest cannot be measured.
      const rss = rssOf(proxy);
      say(`start-up with ${fmt(names)} entries: NOT ready within ${fmt(readyTimeoutMs / 1000)} s; ${rssText(rss)}`);
      const notReady = { readyTimeoutMs, phases, rss, pids: proxy.pids(), lastLogLines: proxy.log.read().slice(-5) };
      await proxy.stop();
      await lab.stop();
      return notReadyReport(v.out, `cert-scale${suffix}${profiling ? '-profile' : ''}`, { ...scale, notReady }, say);
    }
    const readyMs = proxy.readyMs;
    const readyUs = monotonicUs();
    say(
      `start-up: /readyz 200 after ${fmt(readyMs)} ms (primary started at ${ms(phases.primaryStartedMs)} ms, workers listening at ${phases.workersListeningMs.map((m) => ms(m)).join(', ')} ms)`,
    );
    await sleep(1000);
    const rssAfterStart = rssOf(proxy);
    say(`after start: ${rssText(rssAfterStart)}`);
    const settled = await settle(proxy, v['settle-max'] * 1000);
    const rssSettled = rssOf(proxy);
    say(`workers ${settled.settled ? 'idle' : 'still busy'} after a further ${fmt(settled.waitedMs)} ms; ${rssText(rssSettled)}`);

    const reloadsFromUs = monotonicUs();
    const replaced = [];
    for (let r = 0; r < reloads; r++) {
      const f = await replaceOne(lab, proxy, storeDir, key, Math.floor(((r + 1) * names) / (reloads + 1)));
      replaced.push(f);
      say(`one-entry reload (${f.entry}): new serial served after ${ms(f.timeToServeMs, 1)} ms; primary "reload done" ${ms(f.reloadDurationMs)} ms`);
      await sleep(300);
    }
    const rescans = [];
    for (let r = 0; r < reloads; r++) {
      const x = await rescan(proxy);
      rescans.push(x);
      say(`no-change rescan (POST /reload): ${fmt(x.durationMs, 1)} ms (round trip ${fmt(x.roundTripMs, 1)} ms)`);
    }
    const reloadsToUs = monotonicUs();
    if (profiling) {
      await proxy.stop();
      await lab.stop();
      const windows = { startup: { fromUs: spawnedUs, toUs: readyUs }, reloads: { fromUs: reloadsFromUs, toUs: reloadsToUs } };
      const run = { names, readyMs, pid: proxy.process.pid, phases, rssAfterStart, replaced, rescans, top, machine, windows };
      return profileReport(v.out, `cert-scale-profile${suffix}`, profDir, run, say);
    }

    // Bounded memory: more distinct names than contextCacheSize, pass after pass.
    const spreadHosts = Array.from({ length: bounded }, (_, k) => hostOf(Math.floor((k * names) / bounded)));
    const rssBeforeBounded = rssOf(proxy);
    const passes = [];
    for (let k = 0; k < boundedPasses; k++) passes.push({ ...(await handshakeAll(proxy.port, spreadHosts, ca, concurrency)), rss: rssOf(proxy) });
    const trail = [rssBeforeBounded, ...passes.map((p) => p.rss)].map(workersRss).join(' → ');
    const boundedFailed = passes.reduce((n, p) => n + p.failed, 0);
    say(`bounded: ${fmt(bounded)} names × ${boundedPasses} passes, contextCacheSize ${cacheSize}: workers ${trail} MiB (${boundedFailed} failed)`);
    await proxy.stop();

    // Memory per context: the same M-entry store, contextCacheSize 1 and M.
    const contextStore = join(lab.dir, 'store-contexts');
    mkdirSync(contextStore, { recursive: true });
    const contextHosts = Array.from({ length: Math.min(v['context-names'], names) }, (_, i) => {
      copyFileSync(join(storeDir, `${nameOf(i)}.pem`), join(contextStore, `${nameOf(i)}.pem`));
      return hostOf(i);
    });
    const contextRuns = [];
    for (const size of [1, contextHosts.length]) {
      const p = await startProxy(`contexts-${size}`, contextStore, size);
      await sleep(1000);
      const afterStart = rssOf(p);
      const pass = await handshakeAll(p.port, contextHosts, ca, concurrency);
      await sleep(500);
      const afterHandshakes = rssOf(p);
      contextRuns.push({ cacheSize: size, readyMs: p.readyMs ?? Number.NaN, afterStart, afterHandshakes, ...pass });
      const rss = `workers ${workersRss(afterStart)} MiB after start, ${workersRss(afterHandshakes)} MiB after ${pass.ok} handshakes`;
      say(`contexts: ${fmt(contextHosts.length)} entries, contextCacheSize ${size}: ready in ${ms(p.readyMs)} ms; ${rss}`);
      await p.stop();
    }
    await lab.stop();
    const settings = { names, bounded, boundedPasses, cacheSize, contextNames: contextHosts.length, concurrency, reloads, workers: 2 };
    const started = { firstStart, readyMs, phases, rssAfterStart, settled, rssSettled };
    const run = { ...scale, quick, settings, ...started, replaced, rescans, rssBeforeBounded, passes, contextRuns };
    return scaleReport(v.out, `cert-scale${suffix}`, run, say);
  } finally {
    lab.cleanup(v['keep-temp']);
  }
}

runBench('cert-scale', main());
