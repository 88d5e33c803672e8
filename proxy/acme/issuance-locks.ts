/**
 * One node orders a name: the ACME work that must happen once for the whole
 * fleet (an order per certificate, the account's registration, deleting a
 * retired key from the token) runs under a lock of that name.
 *
 * For one node alone the lock is nothing: the manager's in-flight map already
 * keeps one order per name in the one process that orders. In a fleet it is
 * etcd's (store/lock.ts): blocking, under a lease (a node that dies frees it
 * within LOCK_TTL_SECONDS), with a fence the certificate write compares in
 * its transaction, so a node that lost the lock mid-order (a long pause, a
 * partition) cannot write over its successor's result.
 *
 * Once the lock is held, the node's mirror of the store is brought up to the
 * lock's revision before the work starts: whatever the previous holder wrote
 * (its certificate, the managed entry's `lastIssuedAt`, the account) was
 * written before it released, so before this lock was taken, and the work
 * sees it (the manager then does not order again what was just issued);
 * when the mirror cannot get there in time, the work is refused, not run on
 * an older state.
 *
 * Costs (fleet): a lease, a transaction and a range per hold; a watch while
 * another node holds it.
 */
import type { EtcdStore } from '../store/etcd-store.js';
import type { HeldLock } from '../store/lock.js';
import { StoreUnavailableError } from '../store/storage.js';

/** The lease under an issuance lock; etcd3 keeps it alive while the holder lives. */
const LOCK_TTL_SECONDS = 10;
/** How long a new holder waits for its mirror to reach the lock's revision (the watch is normally milliseconds behind). */
const CATCH_UP_MS = 5_000;

export interface IssuanceLocks {
  /**
   * Runs `work` holding the lock `name`, with its fence (undefined for one
   * node alone). Resolves undefined, without running it, when another node
   * held the lock for `waitMs`; rejects with StoreUnavailableError while
   * etcd cannot be reached.
   */
  hold<T>(name: string, waitMs: number, work: (lock: HeldLock | undefined) => Promise<T>): Promise<{ readonly value: T } | undefined>;
}

export const localLocks: IssuanceLocks = {
  hold: async (_name, _waitMs, work) => ({ value: await work(undefined) }),
};

/** Locks in the fleet's store; `caughtUp` runs once the mirror holds everything before the lock (the issuer's state re-reads it). */
export function fleetLocks(store: EtcdStore, caughtUp: () => void): IssuanceLocks {
  return {
    async hold(name, waitMs, work) {
      const lock = await store.lock(name, { ttlSeconds: LOCK_TTL_SECONDS, waitMs });
      if (lock === undefined) return undefined;
      try {
        if (!(await store.reached(Number(lock.fence), CATCH_UP_MS))) {
          // Working on a mirror that misses the previous holder's writes would
          // order again what it just issued, or register a second account.
          throw new StoreUnavailableError(
            `the fleet's store mirror did not reach the lock's revision ${lock.fence} within ${CATCH_UP_MS} ms; ${name} not worked on from an older state`,
          );
        }
        caughtUp();
        return { value: await work(lock) };
      } finally {
        await lock.release().catch(() => undefined);
      }
    },
  };
}
