/**
 * The keep-alive bench's load clients, each its own process (harness/spawn.ts: pinned, every wait bounded), with one
 * result shape. autocannon (devDependency, HTTP/1.1) cannot stop early and still report, so its duration covers ramp-up
 * and window; latencies in whole ms. h2load (Debian nghttp2-client, HTTP/2, issue 13): `streams` in flight per
 * connection (-m), SNI and :authority the bench's name (--connect-to: 127.0.0.1); no percentiles: p50 is its mean, p99
 * its maximum.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type ClientOutput, type ClientProcess, exitedCleanly, startClient } from '../harness/spawn.js';

const autocannonFile = (name: string) => fileURLToPath(new URL(`../../../node_modules/autocannon/${name}`, import.meta.url));

/** `serverName`: SNI and Host; `cpus`: a taskset CPU list, or undefined for no pinning. */
type ClientOptions = { readonly serverName: string; readonly connections: number; readonly durationSec: number; readonly cpus: string | undefined };
type AutocannonOptions = ClientOptions & { readonly url: string };
type H2loadOptions = ClientOptions & { readonly port: number; readonly streams: number };

/** Seconds a client runs for the ramp-up and a window, plus 2.5 s: its clock starts before its first requests (64 handshakes). */
export const clientSeconds = (rampMs: number, windowMs: number): number => (rampMs + windowMs + 2500) / 1000;

/** What either client reports; `requests` counts its whole run (ramp-up included). */
type LoadResult = ReturnType<typeof parseH2load>;

export function autocannonArgs(o: AutocannonOptions): string[] {
  // -t 10: a request unanswered for 10 s counts as a timeout (an error), not a hang.
  return ['--json', '-c', String(o.connections), '-d', String(o.durationSec), '-t', '10', '-s', o.serverName, '-H', `host=${o.serverName}`, o.url];
}

type AutocannonJson = {
  requests: { total: number };
  latency: Record<'p50' | 'p99' | 'max', number>;
  statusCodeStats?: Record<string, { count: number }>;
} & Record<'duration' | 'errors' | 'timeouts' | 'non2xx', number>;

/** autocannon's --json report: its last JSON line. */
function parseAutocannon(out: ClientOutput): LoadResult {
  exitedCleanly(out);
  const line = [...out.stdout.matchAll(/^\s*(\{.*?)\s*$/gm)].at(-1)?.[1];
  if (line === undefined) throw new Error('autocannon printed no JSON');
  const { requests, duration, errors, timeouts, non2xx, latency, statusCodeStats = {} } = JSON.parse(line) as AutocannonJson;
  const { p50: p50Ms, p99: p99Ms, max: maxMs } = latency;
  const statusCodes = Object.fromEntries(Object.entries(statusCodeStats).map(([code, s]) => [code, s.count]));
  return { requests: requests.total, durationSec: duration, errors, timeouts, non2xx, p50Ms, p99Ms, maxMs, statusCodes };
}

/** Run without the bench's NODE_OPTIONS. */
export function startAutocannon(o: AutocannonOptions): ClientProcess<LoadResult> {
  const command = [process.execPath, autocannonFile('autocannon.js'), ...autocannonArgs(o)];
  return startClient('autocannon', command, o.cpus, parseAutocannon, { ...process.env, NODE_OPTIONS: '' });
}

export const autocannonVersion = (): string => (JSON.parse(readFileSync(autocannonFile('package.json'), 'utf8')) as { version: string }).version;

export function h2loadArgs(o: H2loadOptions): string[] {
  const shape = ['-c', String(o.connections), '-m', String(o.streams), '-D', String(Math.ceil(o.durationSec))];
  return [...shape, '--npn-list=h2', `--connect-to=127.0.0.1:${o.port}`, `https://${o.serverName}:${o.port}/`];
}

/** Milliseconds of an h2load time such as `1.23ms`, `850us` or `2.1s`. */
function ms(text: string | undefined): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text ?? '');
  return m === null ? Number.NaN : Number(m[1]) * (m[2] === 'us' ? 1e-3 : m[2] === 's' ? 1e3 : 1);
}

export function parseH2load(text: string, durationSec: number) {
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(text);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(text);
  if (req === null || codes === null) throw new Error('not an h2load report (no "requests:" and "status codes:" lines)');
  const [n, c] = [(i: number) => Number(req[i]), (i: number) => Number(codes[i])];
  const [, , max, mean] = /time for request:\s+(\S+)\s+(\S+)\s+(\S+)/.exec(text) ?? []; // min, max, mean
  const failures = { errors: n(5) + n(6), timeouts: n(7), non2xx: c(2) + c(3) + c(4) };
  const statusCodes: Record<string, number> = { '2xx': c(1), '3xx': c(2), '4xx': c(3), '5xx': c(4) };
  return { requests: n(4), durationSec, ...failures, p50Ms: ms(mean), p99Ms: ms(max), maxMs: ms(max), statusCodes };
}

/** h2load's report may be on stdout or stderr. */
export function startH2load(o: H2loadOptions): ClientProcess<LoadResult> {
  return startClient('h2load', ['h2load', ...h2loadArgs(o)], o.cpus, (out) => {
    exitedCleanly(out);
    return parseH2load(`${out.stdout}\n${out.stderr.join('\n')}`, o.durationSec);
  });
}
