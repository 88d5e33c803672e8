/**
 * The keep-alive bench's load clients, each in its own process (harness/spawn.ts: pinned, CPU read from /proc, every
 * wait bounded), both giving the same result shape:
 * - autocannon (devDependency, its CLI under this node): HTTP/1.1. It cannot stop early and still report, so the
 *   caller sizes its duration to cover ramp-up and window. Latencies are whole milliseconds (its histogram).
 * - h2load (Debian nghttp2-client): HTTP/2 (issue 13), `streams` requests in flight per connection (-m); SNI and
 *   :authority are the bench's name (--connect-to sends it to 127.0.0.1). It prints no percentiles: p50 is its mean
 *   time per request and p99 its maximum.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type ClientOutput, type ClientProcess, exitedCleanly, startClient } from '../harness/spawn.js';

const autocannonFile = (name: string) => fileURLToPath(new URL(`../../../node_modules/autocannon/${name}`, import.meta.url));

/** `serverName`: SNI and Host; `cpus`: a taskset CPU list, or undefined for no pinning. */
type ClientOptions = { readonly serverName: string; readonly connections: number; readonly durationSec: number; readonly cpus: string | undefined };
type H2loadOptions = ClientOptions & { readonly port: number; readonly streams: number };

/** What either client reports; `requests` counts its whole run (ramp-up included). */
export type LoadResult = ReturnType<typeof parseH2load>;

export function autocannonArgs(o: ClientOptions & { readonly url: string }): string[] {
  // -t 10: a request unanswered for 10 s counts as a timeout (an error), not a hang.
  return ['--json', '-c', String(o.connections), '-d', String(o.durationSec), '-t', '10', '-s', o.serverName, '-H', `host=${o.serverName}`, o.url];
}

/** autocannon's --json report (its last JSON line); run without the bench's NODE_OPTIONS. */
export function startAutocannon(o: ClientOptions & { readonly url: string }): ClientProcess<LoadResult> {
  const command = [process.execPath, autocannonFile('autocannon.js'), ...autocannonArgs(o)];
  const parse = (out: ClientOutput): LoadResult => {
    exitedCleanly(out);
    const line = [...out.stdout.matchAll(/^\s*(\{.*?)\s*$/gm)].at(-1)?.[1];
    if (line === undefined) throw new Error('autocannon printed no JSON');
    const j = JSON.parse(line) as { requests?: { total?: number }; latency?: Record<string, number>; statusCodeStats?: Record<string, { count: number }> };
    const { duration, errors, timeouts, non2xx } = j as Record<string, number | undefined>;
    const latency = j.latency ?? {};
    const statusCodes = Object.fromEntries(Object.entries(j.statusCodeStats ?? {}).map(([code, s]) => [code, s.count]));
    const num = (v: number | undefined) => v ?? Number.NaN;
    return {
      requests: num(j.requests?.total),
      durationSec: num(duration),
      errors: num(errors),
      timeouts: num(timeouts),
      non2xx: num(non2xx),
      p50Ms: num(latency.p50),
      p99Ms: num(latency.p99),
      maxMs: num(latency.max),
      statusCodes,
    };
  };
  return startClient('autocannon', command, o.cpus, parse, { ...process.env, NODE_OPTIONS: '' });
}

export async function autocannonVersion(): Promise<string | undefined> {
  const pkg = await readFile(autocannonFile('package.json'), 'utf8').catch(() => '{}');
  return (JSON.parse(pkg) as { version?: string }).version;
}

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
  const time = /time for request:\s+(\S+)\s+(\S+)\s+(\S+)/.exec(text);
  const [n, c] = [(i: number) => Number(req[i]), (i: number) => Number(codes[i])];
  const statusCodes: Record<string, number> = { '2xx': c(1), '3xx': c(2), '4xx': c(3), '5xx': c(4) };
  const maxMs = ms(time?.[2]);
  return {
    requests: n(4),
    durationSec,
    errors: n(5) + n(6),
    timeouts: n(7),
    non2xx: c(2) + c(3) + c(4),
    p50Ms: ms(time?.[3]),
    p99Ms: maxMs,
    maxMs,
    statusCodes,
  };
}

/** h2load's report may be on stdout or stderr. */
export function startH2load(o: H2loadOptions): ClientProcess<LoadResult> {
  return startClient('h2load', ['h2load', ...h2loadArgs(o)], o.cpus, (out) => {
    exitedCleanly(out);
    return parseH2load(`${out.stdout}\n${out.stderr.join('\n')}`, o.durationSec);
  });
}
