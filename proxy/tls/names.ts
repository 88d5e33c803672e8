/**
 * Name selection, the one rule used for SNI (which certificate) and for Host
 * (which origin): an exact name first, then a wildcard covering it, then the
 * default. Pure and synchronous: it runs inside the SNI callback.
 *
 * A wildcard covers exactly one leftmost label (RFC 6125 §6.4.3, as browsers
 * apply it): `*.example.com` covers `a.example.com`, not `example.com` nor
 * `a.b.example.com`. Names compare case-insensitively, a trailing dot ignored
 * (RFC 4343, RFC 1034 §3.1).
 */

export type NameMatch = 'exact' | 'wildcard' | 'default';

export interface NameIndex<T> {
  readonly exact: ReadonlyMap<string, T>;
  /** Keyed by the wildcard's parent: `*.example.com` is stored under `example.com`. */
  readonly wildcard: ReadonlyMap<string, T>;
}

/** Lower-cases and strips a trailing dot; undefined for an empty name. */
export function normaliseName(name: string | undefined | null): string | undefined {
  if (name === undefined || name === null) return undefined;
  const lower = name.toLowerCase();
  const trimmed = lower.endsWith('.') ? lower.slice(0, -1) : lower;
  return trimmed === '' ? undefined : trimmed;
}

/**
 * Builds an index from (names, value) pairs. When two entries claim the same
 * name the first keeps it and the clash is reported through `onConflict`, so
 * the caller decides whether that is an error (config) or a warning.
 */
export function buildNameIndex<T>(
  entries: Iterable<{ readonly names: readonly string[]; readonly value: T }>,
  onConflict: (name: string, kept: T, dropped: T) => void = () => {},
): NameIndex<T> {
  const exact = new Map<string, T>();
  const wildcard = new Map<string, T>();
  for (const { names, value } of entries) {
    for (const raw of names) {
      const name = normaliseName(raw);
      if (name === undefined) continue;
      const [map, key] = name.startsWith('*.') ? [wildcard, name.slice(2)] : [exact, name];
      const kept = map.get(key);
      if (kept === undefined) map.set(key, value);
      else if (kept !== value) onConflict(name, kept, value);
    }
  }
  return { exact, wildcard };
}

export function selectByName<T>(
  index: NameIndex<T>,
  requested: string | undefined | null,
  fallback: T | undefined,
): { readonly value: T; readonly match: NameMatch } | undefined {
  const name = normaliseName(requested);
  if (name !== undefined) {
    const exact = index.exact.get(name);
    if (exact !== undefined) return { value: exact, match: 'exact' };
    const dot = name.indexOf('.');
    if (dot > 0) {
      const wildcard = index.wildcard.get(name.slice(dot + 1));
      if (wildcard !== undefined) return { value: wildcard, match: 'wildcard' };
    }
  }
  return fallback === undefined ? undefined : { value: fallback, match: 'default' };
}

/** Whether `name` is covered by `pattern` (exact or one-label wildcard), as a certificate SAN would cover it. */
export function nameCovers(pattern: string, name: string): boolean {
  const p = normaliseName(pattern);
  const n = normaliseName(name);
  if (p === undefined || n === undefined) return false;
  if (!p.startsWith('*.')) return p === n;
  const dot = n.indexOf('.');
  return dot > 0 && n.slice(dot + 1) === p.slice(2);
}

/**
 * Whether any of `patterns` covers a name, as nameCovers would say, in
 * constant time per name once built (linear in the patterns): checking every
 * pinned name of a certificate with thousands of SANs against each SAN in
 * turn cost quadratic time (9,000 names: 9 s).
 */
export function coveredBy(patterns: readonly string[]): (name: string) => boolean {
  const index = buildNameIndex([{ names: patterns, value: true }]);
  return (name) => selectByName(index, name, undefined) !== undefined;
}
