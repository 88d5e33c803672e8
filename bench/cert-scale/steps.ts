/**
 * The steps of the cert-scale bench against a running proxy (cert-scale/main.ts): the cost of listing the store,
 * start-up phases from the log, RSS, waiting for the workers to go idle, handshake passes over many names, a one-entry
 * reload and a no-change rescan. See bench/README.md, section "cert-scale".
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { procCpu, totalUs } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import { sleep } from '../harness/rounds.js';
import { median, round } from '../harness/stats.js';
import { type CertLab, connectOnce, type LabKey, type LogLine, rssKiB, type RunningProxy, untilServed, writeAtomically } from '../lab/cert-lab.js';

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const DOMAIN = 'scale.test';
/** Now on the monotonic clock, µs: comparable with a --cpu-prof profile's sample times (harness/cpuprofile.ts). */
export const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);
export const nameOf = (i: number): string => `n${i}`;
export const hostOf = (i: number): string => `n${i}.${DOMAIN}`;

/** RSS now; CPU used since start (utime + stime). */
export type Rss = ReturnType<typeof rssOf>;

export function rssOf(proxy: RunningProxy) {
  const { primary, workers } = proxy.pids();
  const mib = (pid: number): number => round(rssKiB(pid) / 1024, 1);
  const cpuMs = (pid: number): number => Math.round(totalUs(procCpu(pid)) / 1000);
  return { primaryMiB: mib(primary), workersMiB: workers.map(mib), primaryCpuMs: cpuMs(primary), workersCpuMs: workers.map(cpuMs) };
}

export const workersRss = (r: Rss): string => (r.workersMiB.length === 0 ? 'none' : r.workersMiB.map((m) => fmt(m, 1)).join(' / '));
export const cpus = (r: Rss): string => [r.primaryCpuMs, ...r.workersCpuMs].map((m) => fmt(m)).join(' / ');

/** CPU and wall time of listing the store (readdir, a stat of each .pem), median of 3. */
export function listingCost(dir: string): { cpuMs: number; wallMs: number; files: number } {
  const runs = [0, 1, 2].map(() => {
    const [cpu, wall] = [process.cpuUsage(), performance.now()];
    const files = readdirSync(dir).filter((f) => f.endsWith('.pem'));
    for (const f of files) statSync(join(dir, f));
    const used = process.cpuUsage(cpu);
    return { cpuMs: (used.user + used.system) / 1000, wallMs: performance.now() - wall, files: files.length };
  });
  return { cpuMs: round(median(runs.map((r) => r.cpuMs)), 1), wallMs: round(median(runs.map((r) => r.wallMs)), 1), files: runs[0]!.files };
}

/** Waits (at most `maxMs`) until every worker used < 0.1 core over 1 s; the time waited, whether they did. */
export async function settle(proxy: RunningProxy, maxMs: number): Promise<{ waitedMs: number; settled: boolean }> {
  const started = performance.now();
  const cpu = (): number[] => proxy.pids().workers.map((pid) => totalUs(procCpu(pid)));
  let before = cpu();
  for (;;) {
    await sleep(1000);
    const after = cpu();
    const busiest = Math.max(0, ...after.map((us, k) => (us - (before[k] ?? 0)) / 1e6));
    const waitedMs = performance.now() - started;
    if (busiest < 0.1 && after.length === before.length) return { waitedMs, settled: true };
    if (waitedMs > maxMs) return { waitedMs, settled: false };
    before = after;
  }
}

/** A new connection + GET to each host, `concurrency` at a time; counts what failed. */
export async function handshakeAll(port: number, hosts: readonly string[], ca: string, concurrency: number) {
  let [next, ok, failed] = [0, 0, 0];
  const errors: string[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < hosts.length) {
        const host = hosts[next++]!;
        const r = await connectOnce(port, host, ca, true, 30_000);
        if (r.ok) ok++;
        else {
          failed++;
          if (errors.length < 20) errors.push(`${host}: ${r.failed} ${r.error ?? ''}`);
        }
      }
    }),
  );
  return { ok, failed, seconds: (performance.now() - started) / 1000, errors };
}

/** Start-up split by the proxy's log lines: until the primary has validated everything and forked, until each worker listens. */
export function startupPhases(proxy: RunningProxy, spawnedAtMs: number) {
  const at = (l: LogLine): number => Date.parse(String(l.time)) - spawnedAtMs;
  const primary = proxy.log.find('proxy primary started')[0];
  return { primaryStartedMs: primary === undefined ? undefined : at(primary), workersListeningMs: proxy.log.find('proxy worker listening').map(at) };
}

export type ReloadFigure = Awaited<ReturnType<typeof replaceOne>>;

/** Replaces entry i (new serial, same key) by rename; waits for a new connection to get it (`timeToServeMs` from the rename). */
export async function replaceOne(lab: CertLab, proxy: RunningProxy, storeDir: string, key: LabKey, i: number) {
  const leaf = lab.ca.issue(key.spki, [hostOf(i)]);
  const logFrom = proxy.log.read().length;
  writeAtomically(join(storeDir, `${nameOf(i)}.pem`), lab.ca.chain(leaf));
  const connect = () => connectOnce(proxy.port, hostOf(i), lab.ca.pem, true, 30_000);
  const { seenMs: timeToServeMs, probes } = await untilServed(leaf.serial, performance.now(), 10, 60_000, connect);
  const line = await proxy.log.next('reload done', logFrom, 30_000);
  const reloadDurationMs = line === undefined ? undefined : Number(line.durationMs);
  return { entry: nameOf(i), timeToServeMs, reloadDurationMs, reloadTrigger: line?.trigger as unknown, probes };
}

/** POST /reload with nothing changed: the answer's durationMs and the round trip. */
export async function rescan(proxy: RunningProxy) {
  const started = performance.now();
  const answer = await proxy.admin('POST', '/reload');
  const roundTripMs = performance.now() - started;
  if (answer.status !== 200) throw new Error(`POST /reload answered ${answer.status}: ${answer.text.slice(0, 300)}`);
  const report = JSON.parse(answer.text) as { durationMs: number; changed: unknown[] };
  return { durationMs: report.durationMs, roundTripMs, changed: report.changed.length };
}

export function scaleConfig(base: Record<string, unknown>, storeDir: string, cacheSize: number, originPort: number): Record<string, unknown> {
  return {
    ...base,
    domains: [{ name: `*.${DOMAIN}`, origin: `http://127.0.0.1:${originPort}` }],
    tls: { contextCacheSize: cacheSize },
    // The periodic rescan is pushed out of the run: every reload measured is the one the bench caused.
    certStore: { dir: storeDir, rescanSeconds: 3600 },
  };
}
