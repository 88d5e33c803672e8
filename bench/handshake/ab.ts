/**
 * ApacheBench (`ab`, apache2-utils) as the full-handshake client: without -k every request is a new connection and a
 * full handshake. Started with a generous -t, stopped with SIGINT after the window (it still prints its report). SNI:
 * ab sends the Host header's name when the URL names an IP address.
 */
import { existsSync, readFileSync } from 'node:fs';
import { type ClientOutput, type ClientProcess, startClient } from '../harness/spawn.js';

/** `host`: Host and SNI; `maxSeconds`: -t, an upper bound (the caller stops it earlier); `csvPath`: -e; `cpus`: taskset -c. */
type AbOptions = {
  port: number;
  host: string;
  concurrency: number;
  maxSeconds: number;
  csvPath: string;
  cpus: string | undefined;
  protocol?: 'TLS1.3' | 'TLS1.2';
};

/** ab's counts and TLS lines, its latency percentiles (whole run, connect to answer), how it exited. */
export type AbResult = ReturnType<typeof parseAbOutput> & ReturnType<typeof readPercentiles> & Omit<ClientOutput, 'stdout'>;

/** The ab command line (without taskset). */
export function abArgs(options: AbOptions): string[] {
  // -r: a receive error is a failed request, not the end of the run. -n: -t alone caps the run at 50000 requests, and
  // ab allocates its records up front, so it is sized for 20,000 requests/s.
  const seconds = Math.max(1, Math.ceil(options.maxSeconds));
  const n = Math.max(50_000, Math.ceil(options.maxSeconds * 20_000));
  const flags = ['-q', '-r', '-t', String(seconds), '-n', String(n), '-c', String(options.concurrency), '-s', '30', '-f', options.protocol ?? 'TLS1.3'];
  return [...flags, '-H', `Host: ${options.host}`, '-e', options.csvPath, `https://127.0.0.1:${options.port}/`];
}

export function startAb(options: AbOptions): ClientProcess<AbResult> {
  const result = ({ stdout, ...out }: ClientOutput) => ({ ...parseAbOutput(stdout), ...readPercentiles(options.csvPath), ...out });
  return startClient('ab', ['ab', ...abArgs(options)], options.cpus, result);
}

export function parseAbOutput(text: string) {
  const field = (label: string): string | undefined => new RegExp(`^${label}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim();
  const num = (label: string, missing = Number.NaN): number => Number.parseFloat(field(label) ?? String(missing));
  const complete = num('Complete requests');
  if (!Number.isFinite(complete)) throw new Error('ab printed no "Complete requests" line');
  const breakdown = /^Failed requests:\s*\d+\s*\n\s*\((.*)\)/m.exec(text)?.[1] ?? '';
  return {
    completeRequests: complete,
    failedRequests: num('Failed requests'),
    failedBreakdown: Object.fromEntries([...breakdown.matchAll(/(\w+):\s*(\d+)/g)].map((m) => [m[1]!, Number(m[2])])),
    non2xx: num('Non-2xx responses', 0),
    tlsProtocol: field('SSL/TLS Protocol'),
    serverTempKey: field('Server Temp Key'),
  };
}

/** ab's -e CSV: "Percentage served,Time in ms", rows 0..100. */
function readPercentiles(path: string): { p50Us: number; p90Us: number; p99Us: number } {
  const rows = existsSync(path) ? readFileSync(path, 'utf8').split('\n').slice(1) : [];
  const byPct = new Map(rows.map((l) => l.split(',')).flatMap(([pct, ms]) => (ms ? [[Number(pct), Number(ms) * 1000] as const] : [])));
  const at = (p: number) => byPct.get(p) ?? Number.NaN;
  return { p50Us: at(50), p90Us: at(90), p99Us: at(99) };
}
