/**
 * A blocking, fenced lock on etcd, for work one node of the fleet must do
 * alone: the fleet-wide ticket-key rotation, a certificate order per name.
 *
 * etcd3's `lock()` is a try-lock: a transaction that creates the lock key
 * under a lease when no one holds it, and fails otherwise. `acquireLock`
 * blocks on it the etcd way: on failure it watches the key and tries again
 * once the key is deleted (released, or its holder's lease expired), with a
 * slow poll as a safety net for a watch that misses the moment.
 *
 * The fencing token is the lock key's create revision: etcd's revisions only
 * grow, so a later holder's token is always larger. A holder whose lease ran
 * out (a long pause, a partition) no longer owns the key; `fencedPut` writes
 * in one transaction that first checks the key still has the holder's create
 * revision, so a stale holder's write is refused rather than applied over
 * its successor's (Kleppmann, "How to do distributed locking", 2016).
 *
 * An acquisition that fails for any other reason than the lock being held
 * (etcd away, an answer past its deadline) revokes its lease: etcd3 keeps a
 * granted lease alive until it is revoked, and the transaction may have taken
 * the key under it before its answer was lost, so the lock stayed taken, for
 * as long as this process lived, by a holder that never knew (every other
 * node's order of that name, or the fleet's ticket rotation, waited for ever).
 * That revocation, and a holder's release, are tried again until they reach
 * etcd (lease-revocation.ts): sent right after a call failed, a single try was
 * refused by etcd3 itself, and the lock stayed taken for the lease's TTL.
 *
 * A held lock says when it is lost (`lost`, an AbortSignal): its lease ended
 * under the holder (etcd3's 'lost': etcd answered that it no longer has it,
 * or no keepalive got through for twice the TTL, a stall or a partition), so
 * another node may hold the lock now. Nothing listened for it: the holder
 * carried on, and what it did outside etcd under the lock (a certificate
 * ordered from the CA, a key deleted from the token) was done twice, by it
 * and by the next holder. Its writes to etcd are refused by the fence
 * anyway; `fencedPut` and the store's fenced writes refuse at once once the
 * loss is known. Logged once per lock (its key, never a value).
 *
 * Costs: a lease grant, a transaction and a range per acquisition; one watch
 * while waiting.
 */
import { EtcdLockFailedError, type Etcd3, type Lease, type Lock } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';
import { Revocations } from './lease-revocation.js';
import { StoreUnavailableError } from './storage.js';

/** Between tries while the watch says nothing: a missed delete costs at most this. */
const POLL_MS = 1_000;

export interface HeldLock {
  readonly key: string;
  /** The lock key's create revision: compare it in every write made under the lock. */
  readonly fence: string;
  /**
   * Aborted once the lock's lease is lost (ran out while etcd was away or stalled, or etcd no longer has it): another
   * node may hold the lock now. Checked before anything done under the lock takes effect; its reason says which lock.
   */
  readonly lost: AbortSignal;
  /** Revokes the lock's lease; resolves after the first try (a failed one is tried again in the background), never rejects. */
  release(): Promise<void>;
}

export interface LockOptions {
  /** The lease under the lock: a holder that dies frees it after this. */
  readonly ttlSeconds: number;
  /** How long to wait for a holder to release; 0: try once. */
  readonly waitMs: number;
}

/**
 * Resolves with the held lock, or undefined when another holder kept it for `waitMs`. Rejects when etcd cannot be reached.
 * `log`: where a lost lock is said, and a revocation that needed tries again says how it ended; `revocations`: the
 * client's (its store waits for them before it closes the client).
 */
export async function acquireLock(
  client: Etcd3,
  key: string,
  options: LockOptions,
  log?: Logger,
  revocations: Revocations = new Revocations(log),
): Promise<HeldLock | undefined> {
  const deadline = Date.now() + options.waitMs;
  const revoker = (lock: Lock): Promise<void> => revocations.revoke(() => lock.release(), options.ttlSeconds, `the lock ${key}`);
  for (;;) {
    const lock = client.lock(key).ttl(options.ttlSeconds);
    try {
      await lock.acquire();
      return await held(client, key, lock, revoker, log);
    } catch (err) {
      if (!(err instanceof EtcdLockFailedError)) {
        // Its keepalive ends at once (etcd3 closes the lease before it asks etcd to revoke it): even while etcd is away,
        // the key goes at the latest when the lease runs out.
        void revoker(lock);
        throw err;
      }
    }
    const left = deadline - Date.now();
    if (left <= 0) return undefined;
    await released(client, key, Math.min(left, POLL_MS));
  }
}

/** Puts `value` at `target` only while `lock` is still held by its holder: the revision of the write, or undefined when the lock was lost. */
export async function fencedPut(client: Etcd3, lock: HeldLock, target: string, value: string): Promise<number | undefined> {
  if (lock.lost.aborted) return undefined;
  const result = await client.if(lock.key, 'Create', '==', lock.fence).then(client.put(target).value(value)).commit();
  return result.succeeded ? Number(result.header.revision) : undefined;
}

async function held(client: Etcd3, key: string, lock: Lock, revoke: (lock: Lock) => Promise<void>, log?: Logger): Promise<HeldLock> {
  // Listened to before the read: a loss while it runs is not missed.
  const lost = whenLost(lock, key, log);
  const [range, leaseId] = await Promise.all([client.get(key).exec(), lock.leaseId()]);
  const kv = range.kvs[0];
  // The key must still be ours: when our lease expired between the transaction
  // and this read (a pause) and another node took the lock meanwhile, the key
  // is its key, and its create revision would give two holders one fence.
  const fence = kv !== undefined && leaseId !== null && kv.lease === String(leaseId) ? kv.create_revision : undefined;
  if (fence === undefined) {
    // The lease expired between the transaction and this read: not held.
    await revoke(lock);
    throw new EtcdLockFailedError(`lost the lock on ${key} as it was taken`);
  }
  return {
    key,
    fence,
    lost,
    release: () => revoke(lock),
  };
}

/** Aborted when the lease under `lock` (just acquired) is lost; a release ends the lease without a 'lost' (etcd3 closes it first). */
function whenLost(lock: Lock, key: string, log?: Logger): AbortSignal {
  // etcd3 keeps the lease its Lock takes to itself (a private field): the one object that says the lease was lost.
  const lease = (lock as unknown as { lease?: Lease }).lease;
  if (lease === undefined) throw new Error(`etcd3 gave no lease for the lock on ${key} (an etcd3 version this proxy does not know)`);
  const controller = new AbortController();
  lease.once('lost', (err: Error) => {
    log?.warn({ lock: key, reason: err.message }, 'a fleet lock was lost (its lease ended: etcd away or stalled past its TTL); the work under it is abandoned');
    controller.abort(new StoreUnavailableError(`the lock ${key} was lost (its lease ended: ${err.message}); another node may hold it now`));
  });
  return controller.signal;
}

/** Resolves when `key` is deleted, or after `waitMs`, whichever is first; never waits longer, even when etcd is away or stalls. */
async function released(client: Etcd3, key: string, waitMs: number): Promise<void> {
  // Not create(): it waits for the stream to connect, which never happens while etcd is away.
  const watcher = client.watch().key(key).watcher();
  try {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      watcher.once('delete', done);
      // An error ends the wait early; the next try says whether etcd answers.
      watcher.on('error', done);
    });
  } finally {
    // Not awaited: a cancel waits for etcd's answer (or for etcd3 to see the stream end), and an etcd that stalls gives
    // neither; the wait then outlived `waitMs` for ever, and the order waiting for the lock with it.
    watcher.removeAllListeners();
    // An 'error' with no listener would throw out of etcd3's stream handler.
    watcher.on('error', () => undefined);
    void watcher.cancel().catch(() => undefined);
  }
}
