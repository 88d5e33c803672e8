/**
 * The steps of the cert-scale bench against a running proxy (cert-scale/main.ts): start-up phases from the log, RSS
 * and CPU, handshake passes over many names, a one-entry reload and a no-change rescan. See bench/README.md, section "cert-scale".
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { procCpu, totalUs } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import { round } from '../harness/stats.js';
import { type CertLab, get, type LabKey, type RunningProxy, untilServed, writeAtomically } from '../lab/cert-lab.js';

export const DOMAIN = 'scale.test';
export const nameOf = (i: number): string => `n${i}`;
export const hostOf = (i: number): string => `n${i}.${DOMAIN}`;

/** Resident set size (VmRSS from /proc/<pid>/status), MiB. */
function rssMiB(pid: number): number {
  const kib = Number(/^VmRSS:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  if (!Number.isFinite(kib)) throw new Error(`no VmRSS for pid ${pid}`);
  return round(kib / 1024, 1);
}

/** RSS now (MiB) and CPU used since start (utime + stime, ms) of the primary and each worker. */
export type Rss = ReturnType<typeof rssOf>;

export function rssOf(proxy: RunningProxy) {
  const { primary, workers } = proxy.pids();
  const cpuMs = (pid: number): number => Math.round(totalUs(procCpu(pid)) / 1000);
  return { primaryMiB: rssMiB(primary), workersMiB: workers.map(rssMiB), primaryCpuMs: cpuMs(primary), workersCpuMs: workers.map(cpuMs) };
}

export const workersRss = (r: Rss): string => (r.workersMiB.length === 0 ? 'none' : r.workersMiB.map((m) => fmt(m, 1)).join(' / '));
export const rssText = (r: Rss): string => `RSS primary ${fmt(r.primaryMiB, 1)} MiB, workers ${workersRss(r)} MiB`;

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

/** POST /reload with nothing changed: the answer's durationMs. */
export async function rescan(proxy: RunningProxy): Promise<number> {
  const answer = await proxy.admin('POST', '/reload');
  if (answer.status !== 200) throw new Error(`POST /reload answered ${answer.status}: ${answer.text.slice(0, 300)}`);
  return round((JSON.parse(answer.text) as { durationMs: number }).durationMs, 1);
}
