/**
 * Writing a benchmark's results: `<YYYY-MM-DD>-<name>.json` with everything (machine, settings, every round) for later
 * comparison and `.md` for humans; Markdown tables and number formats; what the run ran on (figures mean little without
 * the CPU, cores, runtime and crypto library).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { versionOf } from './install.js';
import type { Spread } from './stats.js';

/** The local date, YYYY-MM-DD. */
export const dateStamp = (date = new Date()): string => new Date(date.getTime() - date.getTimezoneOffset() * 60_000).toISOString().slice(0, 10);

type Align = 'left' | 'right';

/** A GitHub-flavoured Markdown table; cells are escaped for '|'. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[], align?: readonly Align[]): string {
  const esc = (s: string) => s.replaceAll('|', '\\|');
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => esc(r[i] ?? '').length), 3));
  const right = (i: number) => align?.[i] === 'right';
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => (right(i) ? esc(c).padStart(widths[i]!) : esc(c).padEnd(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (right(i) ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** Writes `<outDir>/<date>-<name>.json` and `.md`; creates outDir. NaN and Infinity are not JSON: written as null, BigInts as numbers. */
export function writeReport(outDir: string, name: string, json: unknown, markdown: string, date = dateStamp()) {
  const dir = resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const [jsonPath, markdownPath] = [join(dir, `${date}-${name}.json`), join(dir, `${date}-${name}.md`)];
  const replacer = (_key: string, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : typeof v === 'bigint' ? Number(v) : v);
  writeFileSync(jsonPath, `${JSON.stringify(json, replacer, 2)}\n`);
  writeFileSync(markdownPath, markdown.endsWith('\n') ? markdown : `${markdown}\n`);
  return { jsonPath, markdownPath };
}

export const fmt = (value: number, decimals = 0): string =>
  Number.isFinite(value) ? value.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals }) : '–';

/** "min–max (spread%)" of per-round figures. */
export const rangeText = (s: Spread, decimals = 0): string => `${fmt(s.min, decimals)}–${fmt(s.max, decimals)} (${fmt(s.spreadPct, 0)}%)`;
export const minMax = (values: readonly number[], decimals = 0): string => `${fmt(Math.min(...values), decimals)}–${fmt(Math.max(...values), decimals)}`;
export const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

export type Column<T> = readonly [header: string, align: Align, cell: (row: T) => string];

/** A Markdown table from column specs (header, alignment and cell side by side); `extra` rows go after, as given. */
export function columnTable<T>(rows: readonly T[], columns: readonly Column<T>[], extra: readonly (readonly string[])[] = []): string {
  const cells = [...rows.map((row) => columns.map(([, , cell]) => cell(row))), ...extra];
  const [headers, aligns] = [columns.map(([header]) => header), columns.map(([, align]) => align)];
  return markdownTable(headers, cells, aligns);
}

/** columnTable, or `empty` (e.g. "(needs keyless and in memory)") when there are no rows. */
export const specTable = <T>(rows: readonly T[], columns: readonly Column<T>[], empty: string): string =>
  rows.length === 0 ? empty : columnTable(rows, columns);

export type MachineInfo = ReturnType<typeof describeMachine>;

export function describeMachine() {
  const quote = (arg: string) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`);
  return {
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    logicalCpus: os.cpus().length,
    totalMemoryMB: Math.round(os.totalmem() / 2 ** 20),
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    node: process.version,
    v8: process.versions.v8,
    openssl: process.versions.openssl,
    uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE,
    softhsm2: versionOf('softhsm2-util', ['--version']),
    commandLine: [process.argv0, ...process.execArgv, ...process.argv.slice(1)].map(quote).join(' '),
    startedAt: new Date().toISOString(),
  };
}

/** The report lines saying what ran where: "Machine: …" (with `extra`, e.g. tool versions) and "Command: `…`". */
export function machineLines(m: MachineInfo, extra = ''): string[] {
  const tools = `${m.softhsm2 === undefined ? '' : `SoftHSM2 ${m.softhsm2}; `}${extra === '' ? '' : `${extra}; `}`;
  return [
    `Machine: ${m.cpuModel}, ${m.cores} cores, ${m.totalMemoryMB} MB, ${m.kernel}; Node ${m.node}, OpenSSL ${m.openssl}; ${tools}load average at start ${m.loadAverageAtStart.join(' ')}.`,
    `Command: \`${m.commandLine}\``,
  ];
}
