/** Command-line values shared by the benchmarks. */

/** `value` as a number of at least `min`, `fallback` when absent; a clear error naming the flag otherwise. */
export function numberOption(value: string | undefined, name: string, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min) throw new Error(`${name} must be a number >= ${min}, got '${value}'`);
  return n;
}
