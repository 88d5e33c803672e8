/**
 * Overrides (from tests, benchmarks, embedding) laid over a parsed
 * config file before validation, so they are validated with it: a deep merge
 * of plain objects that cannot pollute a prototype.
 */

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/**
 * `overrides` laid over `base`: objects merge key by key, anything else
 * (arrays, null included) replaces. Keys are defined, not assigned, so a
 * "__proto__" key stays an ordinary key for the schema to reject.
 */
export function mergeOverrides(base: unknown, overrides: unknown): unknown {
  if (overrides === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(overrides)) return overrides;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(base)) define(out, k, v);
  for (const [k, v] of Object.entries(overrides)) define(out, k, mergeOverrides(out[k], v));
  return out;
}

function define(target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}
