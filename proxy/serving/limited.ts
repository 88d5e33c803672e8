/**
 * Work over a list with at most `limit` items in flight: the reload path
 * (prepare.ts) reads store files and asks the key server this way, so a
 * pass over 100,000 entries neither runs them one by one nor all at once.
 */

/** `run` over every item, its results in the items' order. */
export async function mapLimited<T, R>(items: readonly T[], limit: number, run: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  await forEachLimited(
    items.map((item, i) => [item, i] as const),
    limit,
    async ([item, i]) => {
      out[i] = await run(item);
    },
  );
  return out;
}

/** `run` over every item, at most `limit` at once, in the items' order of starting. */
export async function forEachLimited<T>(items: readonly T[], limit: number, run: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await run(items[next++]!);
  });
  await Promise.all(lanes);
}
