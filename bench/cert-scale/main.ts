/**
 * Benchmark: the proxy with a large certificate store (default 10,000 entries n<i>.scale.test, one name each, all on
 * one ECDSA P-256 key, issued by a throwaway CA in this process) against a real `keyedge proxy` (cluster, 2 workers):
 * a first start (every entry validated, verdicts recorded), then the start measured (verdicts known: until /readyz
 * 200, split by the log lines), RSS after start, one-entry reloads (rename → new serial served) and no-change rescans,
 * bounded memory (more names than contextCacheSize, pass after pass) and memory per secure context (cache 1 vs M).
 * `--cpu-prof` profiles the start-up, the reloads and the rescans instead. See bench/README.md, section "cert-scale".
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { describeMachine, fmt } from '../harness/report.js';
import { sleep } from '../harness/rounds.js';
import { runBench } from '../harness/runner.js';
import { round } from '../harness/stats.js';
import { CertLab } from '../lab/cert-lab.js';
import { scaleReport } from './report.js';
import { DOMAIN, handshakeAll, hostOf, nameOf, replaceOne, rescan, rssOf, rssText, startupPhases, workersRss } from './steps.js';

const TABLE = {
  quick: std.quick('1,000 names, contextCacheSize 200, 500 names per bounded-memory pass, 300 in the per-context measurement'),
  names: { kind: 'number', arg: 'N', def: 10_000, quick: 1000, min: 2, integer: true, help: 'store entries' },
  bounded: { kind: 'number', arg: 'N', def: 5000, quick: 500, min: 1, integer: true, help: 'distinct names for the bounded-memory pass (at most --names)' },
  'bounded-passes': { kind: 'number', arg: 'N', def: 3, min: 1, integer: true, help: 'passes over those names: does RSS level off?' },
  cache: { kind: 'number', arg: 'N', def: 1000, quick: 200, min: 1, integer: true, help: 'tls.contextCacheSize of the scale proxy' },
  'context-names': { kind: 'number', arg: 'M', def: 1000, quick: 300, min: 2, integer: true, help: 'entries and contextCacheSize, per-context step' },
  concurrency: { kind: 'number', arg: 'N', def: 8, min: 1, integer: true, help: 'connections in flight in the handshake passes' },
  reloads: { kind: 'number', arg: 'N', def: 3, min: 1, integer: true, help: 'one-entry reloads and no-change rescans measured (each)' },
  'ready-timeout': { kind: 'number', arg: 'SEC', def: 480, min: 1, help: 'give up on a start-up after SEC' },
  'cpu-prof': { kind: 'flag', help: 'profile start-up, one-entry reloads and rescans under node --cpu-prof instead; writes -cert-scale-profile' },
  out: std.out('cert-scale[-profile][-<N>]'),
  'keep-temp': std.keepTemp,
} as const;

/** Now on the monotonic clock, µs: comparable with a --cpu-prof profile's sample times (harness/cpuprofile.ts). */
const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);

async function main(): Promise<number> {
  const v = parseCli('cert-scale/main.js', TABLE);
  if (v === undefined) return 0;
  const { quick, names, cache, concurrency, reloads, 'cpu-prof': profiling } = v;
  const [bounded, contextNames, readyTimeoutMs] = [Math.min(names, v.bounded), Math.min(v['context-names'], names), v['ready-timeout'] * 1000];
  const settings = { names, bounded, boundedPasses: v['bounded-passes'], cacheSize: cache, contextNames, concurrency, reloads, workers: 2 };
  const name = `cert-scale${profiling ? '-profile' : ''}${quick ? '-quick' : names === 10_000 ? '' : `-${names}`}`;
  return CertLab.run(['ec'], v['keep-temp'], async (lab, say) => {
    const key = lab.key('ec');
    const startProxy = (name: string, dir: string, contextCacheSize: number, nodeArgs: string[] = []) => {
      const domains = [{ name: `*.${DOMAIN}`, origin: `http://127.0.0.1:${lab.originPort}` }];
      // The periodic rescan is pushed out of the run: every reload measured is the one the bench caused.
      const config = { domains, tls: { contextCacheSize }, certStore: { dir, rescanSeconds: 3600 } };
      return lab.startProxy({ name, config, nodeArgs, readyTimeoutMs, allowNotReady: true });
    };

    const storeDir = join(lab.dir, 'store');
    mkdirSync(storeDir, { recursive: true });
    const genStarted = performance.now();
    for (let i = 0; i < names; i++) writeFileSync(join(storeDir, `${nameOf(i)}.pem`), lab.ca.issue(key.spki, [hostOf(i)]).chain);
    const generateSeconds = round((performance.now() - genStarted) / 1000, 1);
    say(`store: ${fmt(names)} entries issued and written in ${fmt(generateSeconds, 1)} s`);

    // The first start meets every entry for the first time: it validates each and records the verdicts in the state
    // directory. The start measured after it is any later one (issue 15: validated once, when written).
    const first = await startProxy('scale-first', storeDir, cache);
    const firstStart = { readyMs: first.readyMs && Math.round(first.readyMs), rss: rssOf(first) };
    say(`first start (every entry validated): /readyz 200 after ${fmt(firstStart.readyMs ?? Number.NaN)} ms; ${rssText(firstStart.rss)}`);
    await first.stop();

    const profDir = resolve('bench/results/tmp/profiles', `cert-scale-${process.pid}`);
    if (profiling) mkdirSync(profDir, { recursive: true });
    const [spawnedAt, spawnedUs] = [Date.now(), monotonicUs()];
    const proxy = await startProxy('scale', storeDir, cache, profiling ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []);
    const phases = startupPhases(proxy, spawnedAt);
    const run = { out: v.out, name, quick, machine: describeMachine(), settings, generateSeconds, firstStart };
    if (proxy.readyMs === undefined) {
      // Not ready in time: what it reached is the finding; the rest cannot be measured.
      const notReady = { readyTimeoutMs, phases, rss: rssOf(proxy), lastLogLines: proxy.log.read().slice(-5) };
      say(`start-up: NOT ready within ${fmt(readyTimeoutMs / 1000)} s; ${rssText(notReady.rss)}`);
      await proxy.stop();
      return scaleReport({ ...run, notReady }, say);
    }
    const [readyMs, readyUs] = [Math.round(proxy.readyMs), monotonicUs()];
    say(`start-up: /readyz 200 after ${fmt(readyMs)} ms (primary started at ${fmt(phases.primaryStartedMs ?? Number.NaN)} ms)`);
    await sleep(1000);
    const rssAfterStart = rssOf(proxy);
    say(`1 s after ready: ${rssText(rssAfterStart)}`);
    const startup = { readyMs, phases, rssAfterStart };

    const reloadsFromUs = monotonicUs();
    const replaced = [];
    for (let r = 1; r <= reloads; r++) {
      const one = await replaceOne(lab, proxy, storeDir, key, Math.floor((r * names) / (reloads + 1)));
      replaced.push(one);
      say(
        `one-entry reload (${one.entry}): served after ${fmt(one.timeToServeMs ?? Number.NaN, 1)} ms; "reload done" ${fmt(one.reloadDurationMs ?? Number.NaN)} ms`,
      );
      await sleep(300);
    }
    const rescans = [];
    for (let r = 0; r < reloads; r++) {
      rescans.push(await rescan(proxy));
      say(`no-change rescan (POST /reload): ${fmt(rescans.at(-1)!, 1)} ms`);
    }
    if (profiling) {
      const windows = { startup: { fromUs: spawnedUs, toUs: readyUs }, reloads: { fromUs: reloadsFromUs, toUs: monotonicUs() } };
      await proxy.stop(); // the profiles are written as the processes exit
      return scaleReport({ ...run, startup, replaced, rescans, profile: { dir: profDir, primaryPid: proxy.process.pid, windows } }, say);
    }

    // Bounded memory: more distinct names than contextCacheSize, pass after pass.
    const spreadHosts = Array.from({ length: bounded }, (_, k) => hostOf(Math.floor((k * names) / bounded)));
    const rssBefore = rssOf(proxy);
    const passes = [];
    for (let k = 0; k < settings.boundedPasses; k++) {
      passes.push({ ...(await handshakeAll(proxy.port, spreadHosts, lab.ca.pem, concurrency)), rss: rssOf(proxy) });
      say(`bounded: pass ${k + 1} over ${fmt(bounded)} names, contextCacheSize ${cache}: workers ${workersRss(passes[k]!.rss)} MiB`);
    }
    await proxy.stop();

    // Memory per context: the same M-entry store, contextCacheSize 1 and M.
    const contextStore = join(lab.dir, 'store-contexts');
    mkdirSync(contextStore, { recursive: true });
    const contextHosts = Array.from({ length: contextNames }, (_, i) => {
      copyFileSync(join(storeDir, `${nameOf(i)}.pem`), join(contextStore, `${nameOf(i)}.pem`));
      return hostOf(i);
    });
    const contextRuns = [];
    for (const size of [1, contextNames]) {
      const p = await startProxy(`contexts-${size}`, contextStore, size);
      await sleep(1000);
      const afterStart = rssOf(p);
      const pass = await handshakeAll(p.port, contextHosts, lab.ca.pem, concurrency);
      await sleep(500);
      contextRuns.push({ cacheSize: size, readyMs: Math.round(p.readyMs ?? Number.NaN), afterStart, afterHandshakes: rssOf(p), ...pass });
      say(`contexts: ${fmt(contextNames)} entries, contextCacheSize ${size}: workers ${workersRss(afterStart)} → ${workersRss(rssOf(p))} MiB`);
      await p.stop();
    }
    return scaleReport({ ...run, startup, replaced, rescans, bounded: { rssBefore, passes }, contextRuns }, say);
  });
}

runBench('cert-scale', main());
