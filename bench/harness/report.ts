/**
 * Writing a benchmark's results: one JSON file with everything (machine, settings, every round's figures) for later
 * comparison, and one Markdown file with the summary table for humans, both named `<YYYY-MM-DD>-<name>.{json,md}` in
 * the output directory.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { MachineInfo } from './machine.js';
import type { Spread } from './stats.js';

/** Local date as YYYY-MM-DD. */
export function dateStamp(date = new Date()): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

export type Align = 'left' | 'right';

/** A GitHub-flavoured Markdown table; cells are escaped for '|'. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[], align?: readonly Align[]): string {
  const esc = (s: string) => s.replaceAll('|', '\\|');
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => esc(r[i] ?? '').length), 3));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => (align?.[i] === 'right' ? esc(c).padStart(widths[i]!) : esc(c).padEnd(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (align?.[i] === 'right' ? `${'-'.repeat(w + 1)}:` : `${'-'.repeat(w + 2)}`)).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

export interface WrittenReport {
  readonly jsonPath: string;
  readonly markdownPath: string;
}

/** Writes `<outDir>/<date>-<name>.json` and `.md`; creates outDir. */
export function writeReport(outDir: string, name: string, json: unknown, markdown: string, date = dateStamp()): WrittenReport {
  const dir = resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const jsonPath = join(dir, `${date}-${name}.json`);
  const markdownPath = join(dir, `${date}-${name}.md`);
  writeFileSync(jsonPath, `${JSON.stringify(json, jsonReplacer, 2)}\n`);
  writeFileSync(markdownPath, markdown.endsWith('\n') ? markdown : `${markdown}\n`);
  return { jsonPath, markdownPath };
}

/** NaN and Infinity are not JSON: written as null. BigInts as numbers. */
function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'number' && !Number.isFinite(value)) return null;
  if (typeof value === 'bigint') return Number(value);
  return value;
}

/** Formats a number with thousands separators and fixed decimals, for tables. */
export function fmt(value: number, decimals = 0): string {
  if (!Number.isFinite(value)) return '–';
  return value.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

/** "min–max (spread%)" of per-round figures. */
export function rangeText(s: Spread, decimals = 0): string {
  return `${fmt(s.min, decimals)}–${fmt(s.max, decimals)} (${fmt(s.spreadPct, 0)}%)`;
}

/** The report lines saying what ran where: "Machine: …" (with `extra`, e.g. tool versions) and "Command: `…`". */
export function machineLines(machine: MachineInfo, extra = ''): string[] {
  return [
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.totalMemoryMB} MB, ${machine.kernel}; Node ${machine.node}, OpenSSL ${machine.openssl}; ${machine.softhsm2 === undefined ? '' : `SoftHSM2 ${machine.softhsm2}; `}${extra === '' ? '' : `${extra}; `}load average at start ${machine.loadAverageAtStart.join(' ')}.`,
    `Command: \`${machine.commandLine}\``,
  ];
}

/** One column of a table: its header, its alignment and its cell for a row. */
export type Column<T> = readonly [header: string, align: Align, cell: (row: T) => string];

/** A Markdown table from column specs (header, alignment and cell side by side); `extra` rows go after, as given. */
export function columnTable<T>(rows: readonly T[], columns: readonly Column<T>[], extra: readonly (readonly string[])[] = []): string {
  return markdownTable(
    columns.map(([header]) => header),
    [...rows.map((row) => columns.map(([, , cell]) => cell(row))), ...extra],
    columns.map(([, align]) => align),
  );
}

/** columnTable, or `empty` (what the table needs, e.g. "(needs keyless and in memory)") when there are no rows. */
export const specTable = <T>(rows: readonly T[], columns: readonly Column<T>[], empty: string): string =>
  rows.length === 0 ? empty : columnTable(rows, columns);

/** "min–max" of per-round figures. */
export const minMax = (values: readonly number[], decimals = 0): string => `${fmt(Math.min(...values), decimals)}–${fmt(Math.max(...values), decimals)}`;

/** "1 worker", "2 workers". */
export const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
