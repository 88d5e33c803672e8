/**
 * Two benchmark results compared scenario by scenario: how much the rate and the server CPU per unit moved from OLD to
 * NEW, flagged beyond a relative threshold either way (a speed-up that large is as much worth a look, e.g. a scenario
 * that stopped doing its work). Scenarios in one file only, or skipped, are listed, never flagged. Identical runs on
 * this shared machine differ by 10-25% (bench/README.md), so 10% flags noise too: read the spread.
 */
import { fmt, markdownTable } from './report.js';
import { rowKey, type SummaryRow } from './summary.js';

export interface CompareOptions {
  /** Relative change (0.10 = 10%) beyond which a scenario is flagged. */
  readonly threshold: number;
}

export type ChangeStatus = 'ok' | 'moved' | 'only-old' | 'only-new' | 'skipped';

/** One scenario in both files: rate and server CPU µs per unit, old and new, and (new − old) / old (NaN when either is missing). */
export interface ScenarioChange {
  readonly key: string;
  readonly label: string;
  readonly unit: SummaryRow['unit'];
  readonly oldRate: number;
  readonly newRate: number;
  readonly rateChange: number;
  readonly oldCpuUs: number;
  readonly newCpuUs: number;
  readonly cpuChange: number;
  readonly status: ChangeStatus;
  /** Why it is flagged, e.g. "CPU/unit +23%"; empty when not. */
  readonly reasons: readonly string[];
}

/** Every change, and those with status 'moved'. */
export interface Comparison {
  readonly threshold: number;
  readonly changes: readonly ScenarioChange[];
  readonly flagged: readonly ScenarioChange[];
}

/** (b − a) / a, NaN unless both are finite and a > 0. */
export function relativeChange(a: number, b: number): number {
  return Number.isFinite(a) && Number.isFinite(b) && a > 0 ? (b - a) / a : Number.NaN;
}

export function compareSummaries(oldRows: readonly SummaryRow[], newRows: readonly SummaryRow[], options: CompareOptions): Comparison {
  if (!(options.threshold > 0)) throw new Error(`threshold must be > 0, got ${options.threshold}`);
  const older = new Map(oldRows.map((r) => [rowKey(r), r]));
  const newer = new Map(newRows.map((r) => [rowKey(r), r]));
  const keys = [...newer.keys(), ...[...older.keys()].filter((k) => !newer.has(k))];
  const changes = keys.map((key): ScenarioChange => {
    const [o, n] = [older.get(key), newer.get(key)];
    const [oldRate, newRate, oldCpuUs, newCpuUs] = [o?.rate, n?.rate, o?.serverCpuUs, n?.serverCpuUs].map((v) => v ?? Number.NaN) as [
      number,
      number,
      number,
      number,
    ];
    const [rateChange, cpuChange] = [relativeChange(oldRate, newRate), relativeChange(oldCpuUs, newCpuUs)];
    const reasons = [
      ...(Math.abs(rateChange) > options.threshold ? [`rate ${pct(rateChange)}`] : []),
      ...(Math.abs(cpuChange) > options.threshold ? [`CPU/unit ${pct(cpuChange)}`] : []),
    ];
    const status: ChangeStatus =
      o === undefined
        ? 'only-new'
        : n === undefined
          ? 'only-old'
          : o.skipped !== undefined || n.skipped !== undefined
            ? 'skipped'
            : reasons.length > 0
              ? 'moved'
              : 'ok';
    const { label, unit } = (n ?? o)!;
    return { key, label, unit, oldRate, newRate, rateChange, oldCpuUs, newCpuUs, cpuChange, status, reasons: status === 'moved' ? reasons : [] };
  });
  return { threshold: options.threshold, changes, flagged: changes.filter((c) => c.status === 'moved') };
}

/** "+12.3%" / "−4.0%" / "–" for NaN. */
export function pct(change: number): string {
  if (!Number.isFinite(change)) return '–';
  const v = change * 100;
  return `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(1)}%`;
}

const STATUS_TEXT: Record<ChangeStatus, string> = {
  ok: 'ok',
  moved: 'MOVED',
  'only-old': 'only in OLD',
  'only-new': 'only in NEW',
  skipped: 'skipped',
};

/** The comparison as a Markdown table plus a verdict line. */
export function formatComparison(c: Comparison): string {
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
  const limit = `${(c.threshold * 100).toFixed(0)}%`;
  const verdict =
    c.flagged.length === 0
      ? `No scenario moved by more than ${limit}.`
      : `${c.flagged.length} scenario${c.flagged.length === 1 ? '' : 's'} moved by more than ${limit}: ${c.flagged.map((x) => `${x.key} (${x.reasons.join(', ')})`).join('; ')}.`;
  return `${table}\n\n${verdict}\n`;
}
