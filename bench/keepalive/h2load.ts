/**
 * The HTTP/2 client of the keep-alive bench (issue 13): h2load (Debian
 * nghttp2-client) in its own process pinned to the client CPU, `connections`
 * connections with `streams` requests in flight on each (-m), for a fixed
 * duration, TLS with SNI and :authority the bench's name (--connect-to sends
 * it to 127.0.0.1). Its result has autocannon's shape, so the bench treats both
 * clients alike; h2load prints no percentiles: p50 is its mean time per
 * request and p99 its maximum.
 */
import { type ClientProcess, exitedCleanly, startClient } from '../harness/client.js';
import type { AutocannonResult } from './autocannon.js';

export interface H2loadOptions {
  readonly port: number;
  readonly serverName: string;
  readonly connections: number;
  readonly streams: number;
  readonly durationSec: number;
  readonly cpus: string | undefined;
}

export function h2loadArgs(o: H2loadOptions): string[] {
  const shape = ['-c', String(o.connections), '-m', String(o.streams), '-D', String(Math.ceil(o.durationSec))];
  return [...shape, '--npn-list=h2', `--connect-to=127.0.0.1:${o.port}`, `https://${o.serverName}:${o.port}/`];
}

/** Milliseconds of an h2load time such as `1.23ms`, `850us` or `2.1s`. */
function ms(text: string | undefined): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text ?? '');
  if (m === null) return Number.NaN;
  return Number(m[1]) * (m[2] === 'us' ? 1e-3 : m[2] === 's' ? 1e3 : 1);
}

export function parseH2load(text: string, durationSec: number): AutocannonResult {
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(text);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(text);
  if (req === null || codes === null) throw new Error('not an h2load report (no "requests:" and "status codes:" lines)');
  const time = /time for request:\s+(\S+)\s+(\S+)\s+(\S+)/.exec(text);
  const n = (m: RegExpExecArray, i: number) => Number(m[i]);
  return {
    requests: n(req, 4),
    durationSec,
    errors: n(req, 5) + n(req, 6),
    timeouts: n(req, 7),
    non2xx: n(codes, 2) + n(codes, 3) + n(codes, 4),
    resets: 0,
    mismatches: 0,
    p50Ms: ms(time?.[3]),
    p90Ms: Number.NaN,
    p99Ms: ms(time?.[2]),
    maxMs: ms(time?.[2]),
    statusCodes: { '2xx': n(codes, 1), '3xx': n(codes, 2), '4xx': n(codes, 3), '5xx': n(codes, 4) },
  };
}

/** h2load as a client process (harness/client.ts); its report may be on stdout or stderr. */
export function startH2load(options: H2loadOptions): ClientProcess<AutocannonResult> {
  return startClient('h2load', ['h2load', ...h2loadArgs(options)], options.cpus, (out) => {
    exitedCleanly(out);
    return parseH2load(`${out.stdout}\n${out.stderr.join('\n')}`, options.durationSec);
  });
}
