/**
 * What each maintenance pass (maintain.ts) clears away after the orders:
 * failed on-demand entries nothing serves, a day after their last failure,
 * and the keys certificates no longer use, once their grace period is over.
 *
 * A failed on-demand entry is kept only to show why (GET /certs): once its
 * last failure is FAILED_ON_DEMAND_KEPT_MS old and its backoff over, a pass
 * forgets it, unless a certificate serves it or an order for it runs or
 * starts or waits its turn meanwhile (in a fleet: under its issuance lock, not
 * waited for).
 * Without that, every name a client could make the gate order stayed in the
 * state (memory, the state file or etcd) for ever; now at most a day of
 * on-demand orders (24 × the hourly limit) is kept. A handshake for it later
 * goes through the gate as a new name.
 *
 * A retired key is deleted from the token by one node of the fleet at a time,
 * and never while a certificate in the store uses it. A key already gone
 * counts as deleted (token-keys.ts), and the list is written even when the
 * lock ended meanwhile (shared-state.ts): a deletion made under a lost lock
 * is not retried for ever. A pass whose lock is lost (its lease ended,
 * store/lock.ts) deletes no more keys: another node's pass may run by then.
 */
import type { Logger } from '../../keyserver/shared/log.js';
import type { AcmeMetrics } from '../metrics.js';
import type { HeldLock } from '../store/lock.js';
import type { CertificateRecord } from '../serving/spec.js';
import { type IssuanceLocks, localLocks } from './issuance-locks.js';
import type { OrderRunner } from './orders.js';
import { type IssuerStateStore, type ManagedState, waitsForTheGate } from './state.js';
import type { TokenKeys } from './token-keys.js';

/**
 * A failed on-demand entry nothing serves is forgotten once its last failure is this old (and its backoff over): a day,
 * long enough for an operator to see in GET /certs why a name was not issued, and it bounds the entries kept to a
 * day's on-demand orders (24 × `onDemand.maxOrdersPerHour`). Forgetting it changes no decision: the gate orders
 * its name again only through its own checks and hourly limits, entry or not.
 */
export const FAILED_ON_DEMAND_KEPT_MS = 24 * 3_600_000;

export interface HousekeepingDeps {
  readonly state: IssuerStateStore;
  readonly keys: TokenKeys;
  readonly records: () => ReadonlyMap<string, CertificateRecord>;
  readonly metrics: AcmeMetrics;
  readonly log: Logger;
  readonly locks?: IssuanceLocks;
}

/**
 * Whether an order for an entry runs, or an on-demand one waits its turn for a place (maintain.ts #inTurn): forgotten while
 * it waited, its order was dropped when its turn came.
 */
export type InProgress = Pick<OrderRunner, 'running'>;

/** Whether `name` is a failed on-demand entry to forget: nothing serves it, no order runs, its last failure old, its backoff over. */
function stale(deps: HousekeepingDeps, orders: InProgress, name: string, managed: ManagedState, now: number): boolean {
  if (!waitsForTheGate(managed) || managed.keyId !== '' || orders.running(name) || deps.records().has(name)) return false;
  const failedAt = Date.parse(managed.lastError?.at ?? managed.notBefore ?? '');
  const notBefore = managed.notBefore === undefined ? 0 : Date.parse(managed.notBefore);
  return now - failedAt > FAILED_ON_DEMAND_KEPT_MS && !(notBefore > now);
}

/** Forgets the failed on-demand entries past FAILED_ON_DEMAND_KEPT_MS; in a fleet each under its issuance lock, skipped while another node holds it. */
export async function forgetStaleFailures(deps: HousekeepingDeps, orders: InProgress, now: number): Promise<void> {
  const { state, log, locks } = deps;
  const names = Object.entries(state.state.certificates)
    .filter(([name, managed]) => stale(deps, orders, name, managed, now))
    .map(([name]) => name);
  if (names.length === 0) return;
  const forgotten: string[] = [];
  try {
    if (locks === undefined) forgotten.push(...(await state.forget(names)));
    else {
      for (const name of names) {
        // The lock's holder sees what the previous one wrote: the entry is judged again under it (a handshake may have ordered it).
        await locks
          .hold(`acme/issue/${name}`, 0, async (lock) => {
            const managed = state.state.certificates[name];
            if (managed === undefined || !stale(deps, orders, name, managed, Date.now())) return;
            const dropped = await state.forget([name], lock);
            // A handshake ordered it while its key was deleted: issue() found the entry, and its order waits for this lock.
            // The entry stays for it (the order's save writes it again); forgotten, the order failed as not managed.
            if (orders.running(name)) state.state.certificates[name] = managed;
            else forgotten.push(...dropped);
          })
          .catch(() => undefined);
      }
    }
  } catch (err) {
    // The state file not written (disk full): the entries stay, tried again next pass.
    log.warn({ reason: (err as Error).message }, 'failed on-demand certificates not forgotten; trying again next pass');
  }
  if (forgotten.length > 0) {
    log.info({ count: forgotten.length, names: forgotten.slice(0, 10) }, 'failed on-demand certificates forgotten a day after their last failure');
  }
}

/** One node of the fleet at a time deletes retired keys; the others skip the pass. */
export async function deleteRetiredKeys(deps: HousekeepingDeps, now: number): Promise<void> {
  if (deps.state.state.retiredKeys.length === 0) return;
  // etcd away: the keys wait for the next pass, as after a failed delete.
  await (deps.locks ?? localLocks).hold('acme/retired-keys', 0, (lock) => deleteRetiredKeysHeld(deps, now, lock)).catch(() => undefined);
}

async function deleteRetiredKeysHeld(deps: HousekeepingDeps, now: number, lock: HeldLock | undefined): Promise<void> {
  const { state, keys, metrics, log } = deps;
  const inUse = new Set([...deps.records().values()].map((r) => r.keyId));
  const deleted = new Set<string>();
  for (const retired of [...state.state.retiredKeys]) {
    if (Date.parse(retired.deleteAfter) > now || inUse.has(retired.keyId)) continue;
    // The lock was lost (its lease ended): another node's pass may run now; the keys left wait for the next pass.
    if (lock?.lost.aborted) break;
    try {
      await keys.remove(retired.keyId);
      metrics.keysDeleted.inc();
      deleted.add(retired.keyId);
      log.info({ keyId: retired.keyId }, 'previous certificate key deleted from the token after its grace period');
    } catch (err) {
      log.warn({ keyId: retired.keyId, err: (err as Error).message }, 'could not delete a retired certificate key; trying again next pass');
    }
  }
  if (deleted.size > 0) {
    // Only the keys deleted here go, from the list as it is now: a key retired while the pass deleted others (an order on
    // this node, another node's taken by a refresh) was left out of a list made from the one the pass began with, and the
    // save then removed it for the fleet: left in the token for ever.
    state.state.retiredKeys = state.state.retiredKeys.filter((r) => !deleted.has(r.keyId));
    await state.save(lock);
  }
}
