/**
 * Benchmark: `keyedge proxy` (cluster, 2 workers) with a large certificate store (default 10,000 entries
 * n<i>.scale.test on one ECDSA P-256 key): a first start (every entry validated, verdicts recorded), then the start
 * measured (verdicts known: until /readyz 200, split by the log lines), RSS, one-entry reloads (rename → new serial
 * served), no-change rescans, bounded memory (more names than contextCacheSize, pass after pass) and memory per secure
 * context (cache 1 vs M). `--cpu-prof` profiles the start-up, the reloads and the rescans instead. The steps'
 * functions first, then the run. See bench/README.md, section "cert-scale".
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseCli, std } from '../harness/cli.js';
import { describeMachine, fmt } from '../harness/report.js';
import { procCpu, totalUs } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import { runBench } from '../harness/runner.js';
import { round } from '../harness/stats.js';
import { CertLab, get, type LabKey, type RunningProxy, untilServed, writeAtomically } from '../lab/cert-lab.js';
import { rssText, scaleReport, workersRss } from './report.js';

const TABLE = {
  quick: std.quick('1,000 names, contextCacheSize 200, 500 names per bounded-memory pass, 300 in the per-context measurement'),
  names: { kind: 'number', arg: 'N', def: 10_000, quick: 1000, min: 2, integer: true, help: 'store entries' },
  bounded: { kind: 'number', arg: 'N', def: 5000, quick: 500, min: 1, integer: true, help: 'distinct names for the bounded-memory pass (at most --names)' },
  'bounded-passes': { kind: 'number', arg: 'N', def: 3, min: 1, integer: true, help: 'passes over those names: does RSS level off?' },
  cache: { kind: 'number', arg: 'N', def: 1000, quick: 200, min: 1, integer: true, help: 'tls.contextCacheSize of the scale proxy' },
  'context-names': { kind: 'number', arg: 'M', def: 1000, quick: 300, min: 2, integer: true, help: 'entries and contextCacheSize, per-context step' },
  reloads: { kind: 'number', arg: 'N', def: 3, min: 1, integer: true, help: 'one-entry reloads and no-change rescans measured (each)' },
  'ready-timeout': { kind: 'number', arg: 'SEC', def: 480, min: 1, help: 'give up on a start-up after SEC' },
  'cpu-prof': { kind: 'flag', help: 'profile start-up, one-entry reloads and rescans under node --cpu-prof instead; writes -cert-scale-profile' },
  out: std.out('cert-scale[-profile][-<N>]'),
  'keep-temp': std.keepTemp,
} as const;

const nameOf = (i: number): string => `n${i}`;
const hostOf = (i: number): string => `n${i}.scale.test`;

/** Resident set size (VmRSS from /proc/<pid>/status), MiB. */
function rssMiB(pid: number): number {
  const kib = Number(/^VmRSS:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  if (!Number.isFinite(kib)) throw new Error(`no VmRSS for pid ${pid}`);
  return round(kib / 1024, 1);
}

/** RSS now (MiB) and CPU used since start (utime + stime, ms) of the primary and each worker. */
export function rssOf(proxy: RunningProxy) {
  const { primary, workers } = proxy.pids();
  const cpuMs = (pid: number): number => Math.round(totalUs(procCpu(pid)) / 1000);
  return { primaryMiB: rssMiB(primary), workersMiB: workers.map(rssMiB), primaryCpuMs: cpuMs(primary), workersCpuMs: workers.map(cpuMs) };
}

/** A new connection + GET to each host, 8 at a time; what failed (the first 20 errors). */
export async function handshakeAll(port: number, hosts: readonly string[], ca: string) {
  let [next, ok, failed] = [0, 0, 0];
  const errors: string[] = [];
  const started = performance.now();
  const loop = async () => {
    for (let host = hosts[next++]; host !== undefined; host = hosts[next++]) {
      const r = await get(port, host, ca, false, 30_000);
      if (r.failed === undefined) ok++;
      else if (++failed <= 20) errors.push(`${host}: ${r.failed} ${r.error ?? ''}`);
    }
  };
  await Promise.all(Array.from({ length: 8 }, loop));
  return { ok, failed, seconds: round((performance.now() - started) / 1000, 2), errors };
}

/** Start-up split by the proxy's log lines: until the primary has validated everything and forked, until each worker listens. */
export function startupPhases(proxy: RunningProxy, spawnedAtMs: number) {
  const at = (msg: string) => proxy.log.read().flatMap((l) => (l.msg === msg ? [Date.parse(String(l.time)) - spawnedAtMs] : []));
  return { primaryStartedMs: at('proxy primary started')[0], workersListeningMs: at('proxy worker listening') };
}

/** Replaces entry i (new serial, same key) by rename; waits for a new connection to get it (`timeToServeMs` from the rename). */
export async function replaceOne(lab: CertLab, proxy: RunningProxy, storeDir: string, key: LabKey, i: number) {
  const leaf = lab.ca.issue(key.spki, [hostOf(i)]);
  const logFrom = proxy.log.read().length;
  writeAtomically(join(storeDir, `${nameOf(i)}.pem`), leaf.chain);
  const seenMs = await untilServed(leaf.serial, performance.now(), 10, 60_000, () => get(proxy.port, hostOf(i), lab.ca.pem, false, 30_000));
  const line = await proxy.log.next('reload done', logFrom, 30_000);
  return { entry: nameOf(i), timeToServeMs: seenMs && round(seenMs, 1), reloadDurationMs: line && Number(line.durationMs) };
}

/** Now on the monotonic clock, µs: comparable with a --cpu-prof profile's sample times (harness/cpuprofile.ts). */
const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);

async function main(): Promise<number> {
  const v = parseCli('cert-scale/main.js', TABLE);
  if (v === undefined) return 0;
  const { quick, names, cache, reloads, 'cpu-prof': profiling } = v;
  const [bounded, contextNames, readyTimeoutMs] = [Math.min(names, v.bounded), Math.min(v['context-names'], names), v['ready-timeout'] * 1000];
  const settings = { names, bounded, boundedPasses: v['bounded-passes'], cacheSize: cache, contextNames, concurrency: 8, reloads, readyTimeoutMs, workers: 2 };
  const name = `cert-scale${profiling ? '-profile' : ''}${quick ? '-quick' : names === 10_000 ? '' : `-${names}`}`;
  return CertLab.run(['ec'], v['keep-temp'], async (lab, say) => {
    const key = lab.key('ec');
    const startProxy = (name: string, dir: string, contextCacheSize: number, nodeArgs: string[] = []) => {
      const domains = [{ name: '*.scale.test', origin: `http://127.0.0.1:${lab.originPort}` }];
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
    say(`first start (every entry validated): /readyz 200 after ${fmt(firstStart.readyMs ?? Number.NaN)} ms; RSS ${rssText(firstStart.rss)}`);
    await first.stop();

    const profDir = resolve('bench/results/tmp/profiles', `cert-scale-${process.pid}`);
    if (profiling) mkdirSync(profDir, { recursive: true });
    const [spawnedAt, spawnedUs] = [Date.now(), monotonicUs()];
    const proxy = await startProxy('scale', storeDir, cache, profiling ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []);
    const phases = startupPhases(proxy, spawnedAt);
    const run = { out: v.out, name, quick, machine: describeMachine(), settings, generateSeconds, firstStart };
    const [readyMs, readyUs] = [proxy.readyMs && Math.round(proxy.readyMs), monotonicUs()];
    if (readyMs !== undefined) await sleep(1000);
    const lastLogLines = readyMs === undefined ? proxy.log.read().slice(-5) : undefined;
    const startup = { readyMs, phases, rss: rssOf(proxy), lastLogLines };
    say(`start-up: ${readyMs === undefined ? 'NOT ready in time' : `/readyz 200 after ${fmt(readyMs)} ms, 1 s later`} RSS ${rssText(startup.rss)}`);
    if (readyMs === undefined) {
      // What it reached is the finding; the rest cannot be measured.
      await proxy.stop();
      return scaleReport({ ...run, startup }, say);
    }

    const reloadsFromUs = monotonicUs();
    const replaced = [];
    for (let r = 1; r <= reloads; r++) {
      replaced.push(await replaceOne(lab, proxy, storeDir, key, Math.floor((r * names) / (reloads + 1))));
      await sleep(300);
    }
    const rescans = [];
    for (let r = 0; r < reloads; r++) {
      const answer = await proxy.admin('POST', '/reload'); // nothing changed: a rescan's own cost
      if (answer.status !== 200) throw new Error(`POST /reload answered ${answer.status}: ${answer.text.slice(0, 300)}`);
      rescans.push(round((JSON.parse(answer.text) as { durationMs: number }).durationMs, 1));
    }
    say(`one-entry reloads served after ${replaced.map((r) => fmt(r.timeToServeMs ?? Number.NaN)).join(', ')} ms; rescans ${rescans.join(', ')} ms`);
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
      passes.push({ ...(await handshakeAll(proxy.port, spreadHosts, lab.ca.pem)), rss: rssOf(proxy) });
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
      const pass = await handshakeAll(p.port, contextHosts, lab.ca.pem);
      await sleep(500);
      contextRuns.push({ cacheSize: size, readyMs: Math.round(p.readyMs ?? Number.NaN), afterStart, afterHandshakes: rssOf(p), ...pass });
      say(`contexts: ${fmt(contextNames)} entries, contextCacheSize ${size}: workers ${workersRss(afterStart)} → ${workersRss(rssOf(p))} MiB`);
      await p.stop();
    }
    return scaleReport({ ...run, startup, replaced, rescans, bounded: { rssBefore, passes }, contextRuns }, say);
  });
}

runBench('cert-scale', main());
