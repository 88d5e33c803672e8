/**
 * The steps of the cert-scale bench against a running proxy (cert-scale/main.ts): the cost of listing the store,
 * start-up phases from the log, RSS and CPU, waiting for the workers to go idle, handshake passes over many names, a
 * one-entry reload and a no-change rescan. See bench/README.md, section "cert-scale".
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { procCpu, totalUs } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import { sleep } from '../harness/rounds.js';
import { median, round } from '../harness/stats.js';
import { type CertLab, get, type LabKey, type LogLine, type RunningProxy, rssKiB, untilServed, writeAtomically } from '../lab/cert-lab.js';

export const DOMAIN = 'scale.test';
export const nameOf = (i: number): string => `n${i}`;
export const hostOf = (i: number): string => `n${i}.${DOMAIN}`;

/** RSS now (MiB); CPU used since start (utime + stime, ms). */
export type Rss = ReturnType<typeof rssOf>;

export function rssOf(proxy: RunningProxy) {
  const { primary, workers } = proxy.pids();
  const mib = (pid: number): number => round(rssKiB(pid) / 1024, 1);
  const cpuMs = (pid: number): number => Math.round(totalUs(procCpu(pid)) / 1000);
  return { primaryMiB: mib(primary), workersMiB: workers.map(mib), primaryCpuMs: cpuMs(primary), workersCpuMs: workers.map(cpuMs) };
}

export const workersRss = (r: Rss): string => (r.workersMiB.length === 0 ? 'none' : r.workersMiB.map((m) => fmt(m, 1)).join(' / '));
export const rssText = (r: Rss): string => `RSS primary ${fmt(r.primaryMiB, 1)} MiB, workers ${workersRss(r)} MiB`;

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
  for (let before = cpu(); ; ) {
    await sleep(1000);
    const after = cpu();
    const busiest = Math.max(0, ...after.map((us, k) => (us - (before[k] ?? 0)) / 1e6));
    const waitedMs = Math.round(performance.now() - started);
    if (busiest < 0.1 && after.length === before.length) return { waitedMs, settled: true };
    if (waitedMs > maxMs) return { waitedMs, settled: false };
    before = after;
  }
}

/** A new connection + GET to each host, `concurrency` at a time; what failed (the first 20 errors). */
export async function handshakeAll(port: number, hosts: readonly string[], ca: string, concurrency: number) {
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
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { ok, failed, seconds: round((performance.now() - started) / 1000, 2), errors };
}

/** Start-up split by the proxy's log lines: until the primary has validated everything and forked, until each worker listens. */
export function startupPhases(proxy: RunningProxy, spawnedAtMs: number) {
  const at = (l: LogLine): number => Date.parse(String(l.time)) - spawnedAtMs;
  const primary = proxy.log.find('proxy primary started')[0];
  return { primaryStartedMs: primary && at(primary), workersListeningMs: proxy.log.find('proxy worker listening').map(at) };
}

/** Replaces entry i (new serial, same key) by rename; waits for a new connection to get it (`timeToServeMs` from the rename). */
export async function replaceOne(lab: CertLab, proxy: RunningProxy, storeDir: string, key: LabKey, i: number) {
  const leaf = lab.ca.issue(key.spki, [hostOf(i)]);
  const logFrom = proxy.log.read().length;
  writeAtomically(join(storeDir, `${nameOf(i)}.pem`), lab.ca.chain(leaf));
  const connect = () => get(proxy.port, hostOf(i), lab.ca.pem, false, 30_000);
  const { seenMs, probes } = await untilServed(leaf.serial, performance.now(), 10, 60_000, connect);
  const line = await proxy.log.next('reload done', logFrom, 30_000);
  const timeToServeMs = seenMs && round(seenMs, 1);
  return { entry: nameOf(i), timeToServeMs, reloadDurationMs: line && Number(line.durationMs), reloadTrigger: line?.trigger, probes };
}

/** POST /reload with nothing changed: the answer's durationMs and the round trip. */
export async function rescan(proxy: RunningProxy) {
  const started = performance.now();
  const answer = await proxy.admin('POST', '/reload');
  const roundTripMs = round(performance.now() - started, 1);
  if (answer.status !== 200) throw new Error(`POST /reload answered ${answer.status}: ${answer.text.slice(0, 300)}`);
  const report = JSON.parse(answer.text) as { durationMs: number; changed: unknown[] };
  return { durationMs: round(report.durationMs, 1), roundTripMs, changed: report.changed.length };
}
