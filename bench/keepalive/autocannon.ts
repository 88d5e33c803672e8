/**
 * autocannon (devDependency) as the HTTP/1.1 keep-alive client, run through
 * its CLI in its own process so it can be pinned and its CPU read from /proc.
 * It cannot stop early and still report, so the caller sizes its duration to
 * cover ramp-up and window. Latencies are whole milliseconds (its histogram).
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type ClientOutput, type ClientProcess, exitedCleanly, startClient } from '../harness/client.js';

/** The CLI in node_modules, relative to this module in dist/bench/lab/. */
export const AUTOCANNON_CLI = fileURLToPath(new URL('../../../node_modules/autocannon/autocannon.js', import.meta.url));

export interface AutocannonOptions {
  readonly url: string;
  /** SNI name and Host header. */
  readonly serverName: string;
  readonly connections: number;
  readonly durationSec: number;
  /** CPU list for `taskset -c`, or undefined for no pinning. */
  readonly cpus: string | undefined;
}

export interface AutocannonResult {
  /** Requests answered over the whole run (ramp-up included). */
  readonly requests: number;
  readonly durationSec: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly non2xx: number;
  readonly resets: number;
  readonly mismatches: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly statusCodes: Readonly<Record<string, number>>;
}

export function autocannonArgs(o: AutocannonOptions): string[] {
  // -t 10: a request unanswered for 10 s counts as a timeout (an error), not a hang.
  return ['--json', '-c', String(o.connections), '-d', String(o.durationSec), '-t', '10', '-s', o.serverName, '-H', `host=${o.serverName}`, o.url];
}

/** autocannon as a client process (harness/client.ts), under this node without the bench's NODE_OPTIONS. */
export function startAutocannon(options: AutocannonOptions): ClientProcess<AutocannonResult> {
  const command = [process.execPath, AUTOCANNON_CLI, ...autocannonArgs(options)];
  const parse = (out: ClientOutput) => {
    exitedCleanly(out);
    return parseAutocannonJson(out.stdout);
  };
  return startClient('autocannon', command, options.cpus, parse, { ...process.env, NODE_OPTIONS: '' });
}

/** autocannon's --json output: the last line that parses as an object with a `requests` block. */
export function parseAutocannonJson(text: string): AutocannonResult {
  const line = [...text.matchAll(/^\s*(\{.*?)\s*$/gm)].at(-1)?.[1];
  if (line === undefined) throw new Error('autocannon printed no JSON');
  const j = JSON.parse(line) as Record<string, unknown>;
  const block = (name: string) => (typeof j[name] === 'object' && j[name] !== null ? (j[name] as Record<string, unknown>) : {});
  const num = (v: unknown) => (typeof v === 'number' ? v : Number.NaN);
  const latency = block('latency');
  const codes: Record<string, number> = {};
  for (const [code, stat] of Object.entries(block('statusCodeStats'))) codes[code] = num((stat as { count?: unknown }).count);
  return {
    requests: num(block('requests').total),
    durationSec: num(j.duration),
    errors: num(j.errors),
    timeouts: num(j.timeouts),
    non2xx: num(j.non2xx),
    resets: num(j.resets ?? 0),
    mismatches: num(j.mismatches ?? 0),
    p50Ms: num(latency.p50),
    p90Ms: num(latency.p90),
    p99Ms: num(latency.p99),
    maxMs: num(latency.max),
    statusCodes: codes,
  };
}

/** autocannon's version, from its package.json. */
export async function autocannonVersion(): Promise<string | undefined> {
  const pkg = await readFile(fileURLToPath(new URL('../../../node_modules/autocannon/package.json', import.meta.url)), 'utf8').catch(() => '{}');
  return (JSON.parse(pkg) as { version?: string }).version;
}
