/**
 * The one-row-per-scenario summary every benchmark's JSON carries next to its detailed figures, and the reading of it
 * back: each bench names its rate and CPU after its unit (handshakesPerSecond, serverCpuUsPerRequest, ...);
 * `readSummary` turns any of them, a suite file, or a file from before `summary` existed (its `scenarios`), into
 * neutral `SummaryRow`s (`rate`, `serverCpuUs`): what the suite table, the chart and `compare` work on.
 */

/** What one unit of work is, for labels: "handshakes/s", "µs/request". */
export type WorkUnit = 'handshake' | 'request' | 'sign';

export interface SummaryRow {
  /** The benchmark that measured it: "handshake", "keepalive", "keyserver-sign". */
  readonly bench: string;
  /** Stable id within the benchmark (what `compare` matches on). */
  readonly scenario: string;
  /** Human title. */
  readonly label: string;
  readonly unit: WorkUnit;
  /** Units per second (median over rounds); NaN when skipped. */
  readonly rate: number;
  /** Server CPU (utime + stime) µs per unit (median over rounds); NaN when not measured. */
  readonly serverCpuUs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** The client used (nearly) a whole core: the rate is a lower bound of the server's. */
  readonly clientSaturated: boolean;
  /** Failed requests, non-2xx answers, failed handshakes: anything but 0 makes the figures suspect. */
  readonly errors: number;
  /** (max − min) / median of the rate over rounds, percent. */
  readonly spreadPct: number;
  /** Cores other processes used during the windows (median): contention on a shared machine; NaN when not recorded. */
  readonly otherCores: number;
  /** Why the scenario did not run (a missing package); absent when it ran. */
  readonly skipped?: string;
}

/** The key under which a row is matched across files: "<bench>/<scenario>". */
export function rowKey(row: Pick<SummaryRow, 'bench' | 'scenario'>): string {
  return `${row.bench}/${row.scenario}`;
}

const RATE_KEYS: readonly (readonly [string, WorkUnit])[] = [
  ['handshakesPerSecond', 'handshake'],
  ['requestsPerSecond', 'request'],
  ['signsPerSecond', 'sign'],
];
const CPU_KEYS: Record<WorkUnit, readonly string[]> = {
  handshake: ['serverCpuUsPerHandshake', 'serverUs'],
  request: ['serverCpuUsPerRequest', 'serverUs'],
  sign: ['serverCpuUsPerSign', 'totalCpuUsPerSign'],
};

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A figure written either as a number or as a Spread ({ median, ... }); null (NaN in JSON) and absence are NaN. */
function figure(value: unknown): number {
  if (typeof value === 'number') return value;
  if (isObject(value) && typeof value.median === 'number') return value.median;
  return Number.NaN;
}

function spreadOf(value: unknown): number {
  return isObject(value) && typeof value.spreadPct === 'number' ? value.spreadPct : Number.NaN;
}

/** Errors written as a count or as an object of counts (handshake: { abFailed, non2xx, ... }). */
function errorCount(value: unknown): number {
  if (typeof value === 'number') return value;
  if (isObject(value)) return Object.entries(value).reduce((n, [k, v]) => n + (typeof v === 'number' && !/stderr/i.test(k) ? v : 0), 0);
  return 0;
}

/** One row of a benchmark's `summary` array or `scenarios` array (or a suite file's, already neutral), in the neutral shape. */
export function normalizeRow(bench: string, raw: Json): SummaryRow {
  const scenario = typeof raw.scenario === 'string' ? raw.scenario : typeof raw.name === 'string' ? raw.name : undefined;
  if (scenario === undefined) throw new Error(`${bench}: a summary row has neither "scenario" nor "name"`);
  const neutral = typeof raw.rate === 'number' || raw.rate === null;
  const found = RATE_KEYS.find(([key]) => key in raw);
  const unit: WorkUnit = neutral ? (raw.unit === 'handshake' || raw.unit === 'sign' ? raw.unit : 'request') : (found?.[1] ?? 'request');
  const rateValue = neutral ? raw.rate : found === undefined ? undefined : raw[found[0]];
  const cpuKey = neutral ? 'serverCpuUs' : CPU_KEYS[unit].find((key) => key in raw);
  const ms = (key: string, usKey: string) => (neutral || key in raw ? figure(raw[key]) : figure(raw[usKey]) / 1000);
  return {
    bench: neutral && typeof raw.bench === 'string' ? raw.bench : bench,
    scenario,
    label: typeof raw.label === 'string' ? raw.label : scenario,
    unit,
    rate: figure(rateValue),
    serverCpuUs: cpuKey === undefined ? Number.NaN : figure(raw[cpuKey]),
    p50Ms: ms('p50Ms', 'p50Us'),
    p99Ms: ms('p99Ms', 'p99Us'),
    clientSaturated: raw.clientSaturated === true,
    errors: errorCount(raw.errors),
    spreadPct: typeof raw.spreadPct === 'number' || neutral ? figure(raw.spreadPct) : spreadOf(rateValue),
    otherCores: figure(raw.otherCores),
    ...(typeof raw.skipped === 'string' ? { skipped: raw.skipped } : {}),
  };
}

/**
 * The summary rows of a parsed result file: a suite file (`benchmark:
 * "suite"`), a benchmark file with a `summary` array, or one with only
 * `scenarios`. `source` names the file in errors.
 */
export function readSummary(json: unknown, source: string): SummaryRow[] {
  if (!isObject(json)) throw new Error(`${source}: not a benchmark result (expected a JSON object)`);
  const bench = typeof json.benchmark === 'string' ? json.benchmark : 'unknown';
  const rows = Array.isArray(json.summary) ? json.summary : Array.isArray(json.scenarios) ? json.scenarios : undefined;
  if (rows === undefined) throw new Error(`${source}: no "summary" or "scenarios" array: not a benchmark result`);
  return rows.map((row, i) => {
    if (!isObject(row)) throw new Error(`${source}: summary row ${i} is not an object`);
    return normalizeRow(bench, row);
  });
}

/** The figures of a row that measured none: NaN (null in JSON), nothing saturated, no errors. */
const NO_FIGURES = { rate: NaN, serverCpuUs: NaN, p50Ms: NaN, p99Ms: NaN, clientSaturated: false, errors: 0, spreadPct: NaN, otherCores: NaN };

/** A row of the certificate benches, which measure durations, not rates: p50 and p99 carry them, no rate or CPU. */
export function durationRow(bench: string, scenario: string, label: string, p50Ms: number, p99Ms: number, errors: number, skipped?: string): SummaryRow {
  return { bench, scenario, label, unit: 'request', ...NO_FIGURES, p50Ms, p99Ms, errors, ...(skipped === undefined ? {} : { skipped }) };
}

const ROW_KEYS: Record<WorkUnit, readonly [rate: string, cpu: string]> = {
  handshake: ['handshakesPerSecond', 'serverCpuUsPerHandshake'],
  request: ['requestsPerSecond', 'serverCpuUsPerRequest'],
  sign: ['signsPerSecond', 'serverCpuUsPerSign'],
};

/** A bench's `summary` row with its rate and CPU named after its unit (what `readSummary` reads back); skipped: NaN figures and the reason. */
export function benchRow(unit: WorkUnit, row: Omit<SummaryRow, 'bench' | 'unit' | 'rate' | 'serverCpuUs'> & { rate: number; serverCpuUs: number }) {
  const { scenario, label, rate, serverCpuUs, skipped, ...rest } = row;
  const [rateKey, cpuKey] = ROW_KEYS[unit];
  return { scenario, label, [rateKey]: rate, [cpuKey]: serverCpuUs, ...rest, ...(skipped === undefined ? {} : { skipped }) };
}

/** The row of a scenario that did not run. */
export function skippedBenchRow(unit: WorkUnit, scenario: string, label: string, reason: string) {
  return benchRow(unit, { scenario, label, ...NO_FIGURES, skipped: reason });
}
