/**
 * The one-row-per-scenario summary every benchmark's JSON carries, the reading of it back and the comparison of two
 * results. Each bench names its rate and CPU after its unit (handshakesPerSecond, serverCpuUsPerRequest, ...);
 * `readSummary` turns any of them, a suite file, or a file from before `summary` existed (its `scenarios`), into
 * neutral `SummaryRow`s. Comparing flags a rate or server CPU per unit that moved beyond a threshold either way;
 * identical runs on a shared machine differ by 10-25% (bench/README.md), so read the spread.
 */
import { readFileSync } from 'node:fs';
import { fmt, markdownTable } from './report.js';

export type WorkUnit = 'handshake' | 'request' | 'sign';

/**
 * Medians over rounds, NaN when not measured: `rate` units per second, `serverCpuUs` server utime + stime µs per unit,
 * `spreadPct` (max − min) / median of the rate in %, `otherCores` the cores other processes used. `clientSaturated`: the
 * rate is a lower bound; `errors` > 0 makes the figures suspect; `skipped`: why it did not run (a missing package).
 */
export interface SummaryRow {
  readonly bench: string;
  readonly scenario: string; // Stable within the bench: what `compare` matches on.
  readonly label: string;
  readonly unit: WorkUnit;
  readonly rate: number;
  readonly serverCpuUs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly clientSaturated: boolean;
  readonly errors: number;
  readonly spreadPct: number;
  readonly otherCores: number;
  readonly skipped?: string;
}

/** Per unit, a bench row's rate key and its CPU key, then older files' CPU keys. */
const UNIT_KEYS: Record<WorkUnit, readonly [rate: string, cpu: string, oldCpu: string]> = {
  handshake: ['handshakesPerSecond', 'serverCpuUsPerHandshake', 'serverUs'],
  request: ['requestsPerSecond', 'serverCpuUsPerRequest', 'serverUs'],
  sign: ['signsPerSecond', 'serverCpuUsPerSign', 'totalCpuUsPerSign'],
};

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);

/** A figure written either as a number or as a Spread ({ median, ... }); null (NaN in JSON) and absence are NaN. */
const figure = (value: unknown): number =>
  typeof value === 'number' ? value : isObject(value) && typeof value.median === 'number' ? value.median : Number.NaN;

/** Errors written as a count or as an object of counts (handshake: { abFailed, non2xx, ... }; stderr line counts left out). */
function errorCount(value: unknown): number {
  if (typeof value === 'number') return value;
  if (!isObject(value)) return 0;
  return Object.entries(value).reduce((n, [k, v]) => n + (typeof v === 'number' && !/stderr/i.test(k) ? v : 0), 0);
}

/** One row of a benchmark's `summary` or `scenarios` array (or a suite file's, already neutral), in the neutral shape. */
function normalizeRow(bench: string, raw: Json): SummaryRow {
  const scenario = typeof raw.scenario === 'string' ? raw.scenario : typeof raw.name === 'string' ? raw.name : undefined;
  if (scenario === undefined) throw new Error(`${bench}: a summary row has neither "scenario" nor "name"`);
  const neutral = typeof raw.rate === 'number' || raw.rate === null;
  const found = (Object.entries(UNIT_KEYS) as [WorkUnit, readonly string[]][]).find(([, [key]]) => key! in raw);
  const unit: WorkUnit = neutral ? (raw.unit === 'handshake' || raw.unit === 'sign' ? raw.unit : 'request') : (found?.[0] ?? 'request');
  const rateValue = neutral ? raw.rate : found === undefined ? undefined : raw[found[1][0]!];
  const cpuKey = neutral ? 'serverCpuUs' : UNIT_KEYS[unit].slice(1).find((key) => key in raw);
  const ms = (key: string, usKey: string) => (neutral || key in raw ? figure(raw[key]) : figure(raw[usKey]) / 1000);
  const rateSpread = isObject(rateValue) && typeof rateValue.spreadPct === 'number' ? rateValue.spreadPct : Number.NaN;
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
    spreadPct: typeof raw.spreadPct === 'number' || neutral ? figure(raw.spreadPct) : rateSpread,
    otherCores: figure(raw.otherCores),
    ...(typeof raw.skipped === 'string' ? { skipped: raw.skipped } : {}),
  };
}

/** The summary rows of a parsed result file; `source` names it in errors. */
export function readSummary(json: unknown, source: string): SummaryRow[] {
  if (!isObject(json)) throw new Error(`${source}: not a benchmark result (expected a JSON object)`);
  const rows = Array.isArray(json.summary) ? json.summary : Array.isArray(json.scenarios) ? json.scenarios : undefined;
  if (rows === undefined) throw new Error(`${source}: no "summary" or "scenarios" array: not a benchmark result`);
  return rows.map((row, i) => {
    if (!isObject(row)) throw new Error(`${source}: summary row ${i} is not an object`);
    return normalizeRow(typeof json.benchmark === 'string' ? json.benchmark : 'unknown', row);
  });
}

export function readSummaryFile(path: string): SummaryRow[] {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return readSummary(json, path);
}

const NO_FIGURES = { rate: NaN, serverCpuUs: NaN, p50Ms: NaN, p99Ms: NaN, clientSaturated: false, errors: 0, spreadPct: NaN, otherCores: NaN };

/** A row of the certificate benches, which measure durations, not rates: p50 and p99 carry them, no rate or CPU. */
export function durationRow(bench: string, scenario: string, label: string, p50Ms: number, p99Ms: number, errors: number, skipped?: string): SummaryRow {
  return { bench, scenario, label, unit: 'request', ...NO_FIGURES, p50Ms, p99Ms, errors, ...(skipped === undefined ? {} : { skipped }) };
}

/** A bench's `summary` row with its rate and CPU named after its unit (what `readSummary` reads back). */
export function benchRow(unit: WorkUnit, row: Omit<SummaryRow, 'bench' | 'unit' | 'rate' | 'serverCpuUs'> & { rate: number; serverCpuUs: number }) {
  const { scenario, label, rate, serverCpuUs, skipped, ...rest } = row;
  const [rateKey, cpuKey] = UNIT_KEYS[unit];
  return { scenario, label, [rateKey]: rate, [cpuKey]: serverCpuUs, ...rest, ...(skipped === undefined ? {} : { skipped }) };
}

export const skippedBenchRow = (unit: WorkUnit, scenario: string, label: string, reason: string) =>
  benchRow(unit, { scenario, label, ...NO_FIGURES, skipped: reason });

type ChangeStatus = 'ok' | 'moved' | 'only-old' | 'only-new' | 'skipped';
const STATUS_TEXT: Record<ChangeStatus, string> = { ok: 'ok', moved: 'MOVED', 'only-old': 'only in OLD', 'only-new': 'only in NEW', skipped: 'skipped' };

export const relativeChange = (a: number, b: number): number => (Number.isFinite(a) && Number.isFinite(b) && a > 0 ? (b - a) / a : Number.NaN);
/** "+12.3%" / "−4.0%" / "–" for NaN. */
export const pct = (change: number): string => (Number.isFinite(change) ? `${change >= 0 ? '+' : '−'}${Math.abs(change * 100).toFixed(1)}%` : '–');

/** Rows matched by "<bench>/<scenario>"; `threshold` is the relative change (0.10 = 10%) beyond which a scenario is flagged. */
export function compareSummaries(oldRows: readonly SummaryRow[], newRows: readonly SummaryRow[], options: { readonly threshold: number }) {
  const { threshold } = options;
  if (!(threshold > 0)) throw new Error(`threshold must be > 0, got ${threshold}`);
  const keyOf = (r: SummaryRow) => `${r.bench}/${r.scenario}`;
  const [older, newer] = [new Map(oldRows.map((r) => [keyOf(r), r])), new Map(newRows.map((r) => [keyOf(r), r]))];
  const figures = (r: SummaryRow | undefined) => [r?.rate ?? Number.NaN, r?.serverCpuUs ?? Number.NaN] as const;
  const changes = [...new Set([...newer.keys(), ...older.keys()])].map((key) => {
    const [o, n] = [older.get(key), newer.get(key)];
    const [[oldRate, oldCpuUs], [newRate, newCpuUs]] = [figures(o), figures(n)];
    const [rateChange, cpuChange] = [relativeChange(oldRate, newRate), relativeChange(oldCpuUs, newCpuUs)];
    const reasons = [
      ...(Math.abs(rateChange) > threshold ? [`rate ${pct(rateChange)}`] : []),
      ...(Math.abs(cpuChange) > threshold ? [`CPU/unit ${pct(cpuChange)}`] : []),
    ];
    let status: ChangeStatus = reasons.length > 0 ? 'moved' : 'ok';
    if (o === undefined || n === undefined) status = o === undefined ? 'only-new' : 'only-old';
    else if (o.skipped !== undefined || n.skipped !== undefined) status = 'skipped';
    const { label, unit } = (n ?? o)!;
    return { key, label, unit, oldRate, newRate, rateChange, oldCpuUs, newCpuUs, cpuChange, status, reasons: status === 'moved' ? reasons : [] };
  });
  return { threshold, changes, flagged: changes.filter((c) => c.status === 'moved') };
}

export function formatComparison(c: ReturnType<typeof compareSummaries>): string {
  const table = markdownTable(
    ['scenario', 'rate old → new', 'change', 'server CPU µs/unit old → new', 'change', 'status'],
    c.changes.map((x) => [
      x.label === x.key.slice(x.key.indexOf('/') + 1) ? x.key : `${x.key} (${x.label})`,
      `${fmt(x.oldRate)} → ${fmt(x.newRate)}`,
      pct(x.rateChange),
      `${fmt(x.oldCpuUs, 1)} → ${fmt(x.newCpuUs, 1)}`,
      pct(x.cpuChange),
      x.status === 'moved' ? `MOVED: ${x.reasons.join(', ')}` : STATUS_TEXT[x.status],
    ]),
    ['left', 'right', 'right', 'right', 'right', 'left'],
  );
  const [n, limit] = [c.flagged.length, `${(c.threshold * 100).toFixed(0)}%`];
  const moved = c.flagged.map((x) => `${x.key} (${x.reasons.join(', ')})`).join('; ');
  return `${table}\n\n${n === 0 ? `No scenario moved by more than ${limit}.` : `${n} scenario${n === 1 ? '' : 's'} moved by more than ${limit}: ${moved}.`}\n`;
}
