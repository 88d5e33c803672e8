/**
 * Set-up that runs side by side: waits for every start to settle, then throws the first failure. None is left
 * running unseen: each start the caller records as it resolves (`.then((x) => (lab = x))`) is there for its
 * clean-up, even when another start failed.
 */
export async function settleAll(starts: readonly Promise<unknown>[]): Promise<void> {
  const settled = await Promise.allSettled(starts);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}
