/**
 * The benchmarks' command lines: one table per bench, mostly from the shared entries below, parsed strictly by
 * node:util parseArgs, checked with errors that name the flag, and printed as --help from the same table, so usage and
 * parser never drift. A value given in `quick` applies under --quick when the flag is absent.
 */
import { parseArgs } from 'node:util';
import { onlineCpus } from './proc-cpu.js';

/** `arg`: the placeholder shown after the flag (N, SEC, LIST). */
type BaseOpt = { readonly help: string; readonly arg?: string };
type FlagOpt = BaseOpt & { readonly kind: 'flag' };
type NumberOpt = BaseOpt & { readonly kind: 'number'; readonly def?: number; readonly quick?: number; readonly min: number; readonly integer?: boolean };
type StringOpt = BaseOpt & { readonly kind: 'string'; readonly def?: string; readonly quick?: string; readonly choices?: readonly string[] };
type OptTable = Readonly<Record<string, FlagOpt | NumberOpt | StringOpt>>;

type ValueOf<O> = O extends FlagOpt
  ? boolean
  : O extends { def: number }
    ? number
    : O extends { def: string }
      ? string
      : O extends NumberOpt
        ? number | undefined
        : string | undefined;
type Values<T extends OptTable> = { readonly [K in keyof T]: ValueOf<T[K]> };

/** Most verbose first. */
export const LOG_LEVELS: readonly string[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
const LOG_LEVEL_HELP =
  "the proxies' log level (info, the product's default: one access line per request; nginx and caddy log access lines unless warn or above)";
const NODE_HELP =
  "Node majors to run the Node servers under, side by side, e.g. 20,22,24 (others installed as npm packages into ~/.cache/keyedge-bench; default: this node's)";
const QUIET_HELP = 'before each measurement wait (up to SEC in total per run) for other processes to use < 0.25 cores';
const PIN_HELP = 'auto (2+ CPUs): servers on CPU 0..n-2, clients and this bench on the last CPU; none: leave it to the scheduler';

export const std = {
  quick: (help: string): FlagOpt => ({ kind: 'flag', help }),
  out: (name: string) => ({ kind: 'string', arg: 'DIR', def: 'bench/results', help: `where to write <date>-${name}.{json,md} (quick: -quick)` }) as const,
  rounds: (def: number, quick: number) => ({ kind: 'number', arg: 'N', def, quick, min: 1, integer: true, help: 'measuring rounds' }) as const,
  measure: (def: number, quick: number, min = 0.3) => ({ kind: 'number', arg: 'SEC', def, quick, min, help: 'seconds per measurement window' }) as const,
  warmup: (def: number, quick: number, what = 'per scenario') => ({ kind: 'number', arg: 'SEC', def, quick, min: 0, help: `warm-up seconds ${what}` }) as const,
  pin: { kind: 'string', arg: 'auto|none', def: 'auto', choices: ['auto', 'none'], help: PIN_HELP } as const,
  serverCpus: { kind: 'string', arg: 'LIST', help: 'taskset CPU list for the servers (overrides --pin)' } as const,
  clientCpus: { kind: 'string', arg: 'LIST', help: 'taskset CPU list for the clients and this bench (overrides --pin)' } as const,
  quietWait: { kind: 'number', arg: 'SEC', def: 60, quick: 0, min: 0, help: QUIET_HELP } as const,
  install: (what: string) =>
    ({ kind: 'string', arg: 'yes|no', def: 'yes', quick: 'no', choices: ['yes', 'no'], help: `apt-get install ${what} when missing (root)` }) as const,
  logLevel: { kind: 'string', arg: 'LEVEL', def: 'info', choices: LOG_LEVELS, help: LOG_LEVEL_HELP } as const,
  node: { kind: 'string', arg: 'LIST', help: NODE_HELP } as const,
  keepTemp: { kind: 'flag', help: 'keep the temp directory (token, certificates, configs, logs)' } as const,
} as const;

function usage(command: string, table: OptTable): string {
  const lines = [`Usage: node dist/bench/${command} [options]`, ''];
  for (const [name, opt] of Object.entries(table)) {
    const head = `  --${name}${opt.arg === undefined ? '' : ` ${opt.arg}`}`;
    const quick = opt.kind === 'flag' || opt.quick === undefined ? '' : `; quick ${opt.quick}`;
    const text = `${opt.help}${opt.kind === 'flag' || opt.def === undefined ? '' : ` (default ${opt.def}${quick})`}`;
    lines.push(head.length < 22 ? `${head.padEnd(23)}${text}` : `${head}\n${' '.repeat(23)}${text}`);
  }
  return `${[...lines, '  --help'].join('\n')}\n`;
}

/** The table's values from argv, or undefined after printing --help. Throws a message naming the flag on a bad value. */
export function parseCli<T extends OptTable>(command: string, table: T, argv: readonly string[] = process.argv.slice(2)): Values<T> | undefined {
  const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const [name, opt] of Object.entries(table)) options[name] = { type: opt.kind === 'flag' ? 'boolean' : 'string' };
  const { values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false });
  if (values.help === true) {
    process.stdout.write(usage(command, table));
    return undefined;
  }
  const out: Record<string, unknown> = {};
  for (const [name, opt] of Object.entries(table)) {
    const given = values[name];
    if (opt.kind === 'flag') out[name] = given === true;
    else if (typeof given === 'string' && opt.kind === 'number') out[name] = numberOption(given, `--${name}`, 0, opt.min, opt.integer);
    else {
      const value = typeof given === 'string' ? given : values.quick === true && opt.quick !== undefined ? opt.quick : opt.def;
      if (opt.kind === 'string' && value !== undefined && opt.choices !== undefined && !opt.choices.includes(value as string))
        throw new Error(`--${name} takes ${opt.choices.join(', ')}; got '${value}'`);
      out[name] = value;
    }
  }
  return out as Values<T>;
}

/** `value` as a number of at least `min` (rounded when `integer`), `fallback` when absent; a clear error naming the flag otherwise. */
export function numberOption(value: string | undefined, name: string, fallback: number, min: number, integer = false): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min) throw new Error(`${name} must be a number >= ${min}, got '${value}'`);
  return integer ? Math.round(n) : n;
}

export function listOf<T extends string>(value: string, name: string, known: readonly T[]): T[] {
  const items = value.split(',').filter((s) => s !== '');
  for (const item of items) if (!(known as readonly string[]).includes(item)) throw new Error(`${name} takes ${known.join(', ')}; got '${item}'`);
  return [...new Set(items as T[])];
}

/** --server-cpus/--client-cpus, else --pin auto splits the online CPUs (the last for clients). */
export function pinning(v: { readonly pin: string; readonly 'server-cpus': string | undefined; readonly 'client-cpus': string | undefined }) {
  const cpus = onlineCpus();
  const auto = v.pin === 'auto' && cpus.length >= 2;
  const serverCpus = v['server-cpus'] ?? (auto ? cpus.slice(0, -1).join(',') : undefined);
  const clientCpus = v['client-cpus'] ?? (auto ? String(cpus[cpus.length - 1]) : undefined);
  return { serverCpus, clientCpus, serverCpuCount: serverCpus === undefined ? cpus.length : serverCpus.split(',').length };
}

type TimingValues = { readonly quick: boolean; readonly out: string; readonly rounds: number; readonly measure: number; readonly warmup: number };

/** The measuring benches' shared options in milliseconds (runner.ts); ramp-up and settle: [full, quick]. */
export function timing(v: TimingValues & { readonly 'quiet-wait': number }, rampMs: readonly [number, number], settleMs: readonly [number, number]) {
  const pick = (fullAndQuick: readonly [number, number]) => (v.quick ? fullAndQuick[1] : fullAndQuick[0]);
  // quietBudgetMs: the total time the run may wait for other load to go away before measurements (0: never wait).
  const [measureMs, warmupMs, quietBudgetMs] = [v.measure * 1000, v.warmup * 1000, v['quiet-wait'] * 1000];
  return { quick: v.quick, out: v.out, rounds: v.rounds, measureMs, warmupMs, rampMs: pick(rampMs), settleMs: pick(settleMs), quietBudgetMs };
}
