/** A --cpu-prof profile's top functions as a Markdown table: by self or inclusive time, in the report's unit and shares. */
import type { FunctionCost } from './cpuprofile.js';
import { fmt, markdownTable } from './report.js';

/** `unit`: the time columns' unit, e.g. "µs/request"; `per` turns µs into it. */
type TopOptions = { top: number; by: 'selfUs' | 'inclusiveUs'; unit: string; per: (us: number) => number; decimals: number };

export function topFunctionsTable(functions: readonly FunctionCost[], o: TopOptions): string {
  const rows = [...functions].sort((a, b) => b[o.by] - a[o.by]).slice(0, o.top);
  const time = (us: number) => fmt(o.per(us), o.decimals);
  return markdownTable(
    ['function', `self ${o.unit}`, 'self %', `inclusive ${o.unit}`, 'incl %'],
    rows.map((f) => [f.function, time(f.selfUs), fmt(f.selfPct, 1), time(f.inclusiveUs), fmt(f.inclusivePct, 1)]),
    ['left', 'right', 'right', 'right', 'right'],
  );
}

/** Two tables, by self and by inclusive time, under `heading` ("##", "###"). */
export function topFunctionsTables(functions: readonly FunctionCost[], heading: string, o: Omit<TopOptions, 'by'>): string[] {
  const table = (by: TopOptions['by']) => topFunctionsTable(functions, { ...o, by });
  return [`${heading} by self time`, '', table('selfUs'), '', `${heading} by inclusive time`, '', table('inclusiveUs'), ''];
}
