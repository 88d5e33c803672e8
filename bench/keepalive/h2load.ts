/**
 * The HTTP/2 client of the keep-alive bench (issue 13): h2load (Debian
 * nghttp2-client) in its own process pinned to the client CPU, `connections`
 * connections with `streams` requests in flight on each (-m), for a fixed
 * duration, TLS with SNI and :authority the bench's name (--connect-to sends
 * it to 127.0.0.1). Its result has autocannon's shape, so the bench treats both
 * clients alike; h2load prints no percentiles: p50 is its mean time per
 * request and p99 its maximum.
 */
import { spawn } from 'node:child_process';
import type { AutocannonResult, RunningAutocannon } from './autocannon.js';

export interface H2loadOptions {
  readonly port: number;
  readonly serverName: string;
  readonly connections: number;
  readonly streams: number;
  readonly durationSec: number;
  readonly cpus: string | undefined;
}

export function h2loadArgs(o: H2loadOptions): string[] {
  return [
    '-c',
    String(o.connections),
    '-m',
    String(o.streams),
    '-D',
    String(Math.ceil(o.durationSec)),
    '--npn-list=h2',
    `--connect-to=127.0.0.1:${o.port}`,
    `https://${o.serverName}:${o.port}/`,
  ];
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

export function startH2load(options: H2loadOptions): RunningAutocannon {
  const args = h2loadArgs(options);
  const full = options.cpus === undefined ? ['h2load', ...args] : ['taskset', '-c', options.cpus, 'h2load', ...args];
  const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (t: string) => (out = (out + t).slice(-20_000)));
  child.stderr!.setEncoding('utf8').on('data', (t: string) => (out = (out + t).slice(-20_000)));
  const done = new Promise<AutocannonResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      setImmediate(() => {
        try {
          if (code !== 0) throw new Error(`h2load exited with ${signal ?? `status ${code}`}`);
          resolve(parseH2load(out, options.durationSec));
        } catch (err) {
          reject(new Error(`${(err as Error).message}\n--- h2load output ---\n${out.slice(-2000)}`));
        }
      }),
    );
  });
  return {
    pid: child.pid ?? -1,
    args,
    exited: () => child.exitCode !== null || child.signalCode !== null,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
    done,
  };
}
