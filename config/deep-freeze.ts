/**
 * The last step of loading: the resolved config frozen all the way down, so
 * no code path can change it after start.
 */

/** Freezes `value` and everything reachable from it. */
export function deepFreeze<T>(value: T, seen = new WeakSet<object>()): T {
  if (typeof value !== 'object' || value === null || seen.has(value)) return value;
  seen.add(value);
  // A frozen container may still hold unfrozen children, so recurse anyway.
  for (const key of Reflect.ownKeys(value)) deepFreeze((value as Record<PropertyKey, unknown>)[key], seen);
  return Object.freeze(value);
}
