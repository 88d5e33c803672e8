/**
 * ApacheBench (`ab`, apache2-utils) as the full-handshake client: without -k every request is a new connection and a
 * full handshake (the bench checks that against the key server's signs). Started with a generous -t and stopped with
 * SIGINT after the window, when it still prints its report. SNI: ab sends the Host header's name when the URL names
 * an IP address.
 */
import { existsSync, readFileSync } from 'node:fs';
import { type ClientOutput, type ClientProcess, startClient } from '../harness/spawn.js';
import { findOrInstall } from '../harness/install.js';

export interface AbOptions {
  readonly port: number;
  /** Host header and SNI name. */
  readonly host: string;
  readonly concurrency: number;
  /** Upper bound of the run (ab's -t, whole seconds); the caller normally stops it earlier with `stop()`. */
  readonly maxSeconds: number;
  /** Where ab writes its percentile CSV (-e). */
  readonly csvPath: string;
  /** CPU list for `taskset -c`, or undefined for no pinning. */
  readonly cpus: string | undefined;
  /** ab -f: the only protocol version offered (default TLS1.3). */
  readonly protocol?: 'TLS1.3' | 'TLS1.2';
}

/** ab's report (its counts and TLS lines; latency percentiles over the whole run, connect to answer, from -e), how it exited. */
export type AbResult = ReturnType<typeof parseAbOutput> & ReturnType<typeof readPercentiles> & Omit<ClientOutput, 'stdout'>;

/** The ab command line (without taskset). */
export function abArgs(options: AbOptions): string[] {
  // -r: a receive error counts as a failed request instead of ending the run. -n after -t, which would otherwise cap
  // the run at 50000 requests: ab allocates its per-request records up front, so it is sized for 20,000 requests/s.
  const seconds = Math.max(1, Math.ceil(options.maxSeconds));
  const n = Math.max(50_000, Math.ceil(options.maxSeconds * 20_000));
  const flags = ['-q', '-r', '-t', String(seconds), '-n', String(n), '-c', String(options.concurrency), '-s', '30', '-f', options.protocol ?? 'TLS1.3'];
  return [...flags, '-H', `Host: ${options.host}`, '-e', options.csvPath, `https://127.0.0.1:${options.port}/`];
}

/** ab as a client process (harness/spawn.ts): stop it with SIGINT and it reports what it did so far. */
export function startAb(options: AbOptions): ClientProcess<AbResult> {
  return startClient('ab', ['ab', ...abArgs(options)], options.cpus, ({ stdout, ...out }) => ({
    ...parseAbOutput(stdout),
    ...readPercentiles(options.csvPath),
    ...out,
  }));
}

export function parseAbOutput(text: string) {
  const field = (label: string): string | undefined => new RegExp(`^${label}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim();
  const num = (label: string): number => Number.parseFloat(field(label) ?? 'NaN');
  const complete = num('Complete requests');
  if (!Number.isFinite(complete)) throw new Error('ab printed no "Complete requests" line');
  const breakdown = /^Failed requests:\s*\d+\s*\n\s*\((.*)\)/m.exec(text)?.[1] ?? '';
  const failedBreakdown = Object.fromEntries([...breakdown.matchAll(/(\w+):\s*(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
  const non2xx = field('Non-2xx responses');
  return {
    completeRequests: complete,
    failedRequests: num('Failed requests'),
    failedBreakdown,
    non2xx: non2xx === undefined ? 0 : Number.parseInt(non2xx, 10),
    requestsPerSecond: num('Requests per second'),
    seconds: num('Time taken for tests'),
    tlsProtocol: field('SSL/TLS Protocol'),
    serverTempKey: field('Server Temp Key'),
    tlsServerName: field('TLS Server Name'),
    documentLength: field('Document Length') === undefined ? undefined : Number.parseInt(field('Document Length')!, 10),
  };
}

/** ab's -e CSV: "Percentage served,Time in ms", rows 0..100. */
function readPercentiles(path: string): { p50Us: number; p90Us: number; p99Us: number } {
  const rows = existsSync(path) ? readFileSync(path, 'utf8').split('\n').slice(1) : [];
  const byPct = new Map(rows.map((l) => l.split(',')).flatMap(([pct, ms]) => (ms ? [[Number(pct), Number(ms) * 1000] as const] : [])));
  const at = (p: number) => byPct.get(p) ?? Number.NaN;
  return { p50Us: at(50), p90Us: at(90), p99Us: at(99) };
}

/** Makes sure `ab` is installed (apache2-utils, harness/install.ts); throws with the reason when it cannot be. */
export function ensureAb(log: (line: string) => void): void {
  const found = findOrInstall('ab', 'apache2-utils', true, log);
  if (!found.ok) throw new Error(`ab (ApacheBench): ${found.reason}`);
}
