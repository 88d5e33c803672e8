/**
 * Session-ticket keys shared by the fleet (tls/tickets.ts explains the ring):
 * one etcd key holds the ring, newest first, so a ticket issued by any node
 * resumes on every other, and the rotation happens once for the fleet, not
 * once per node.
 *
 * Rotation: every node checks now and then whether the ring is older than
 * the period (or dated ahead of its clock by more than RING_FUTURE_SKEW_MS:
 * written under a clock that was off); the one that gets the rotation lock (lock.ts) reads the ring
 * again under it, and only if it is still due writes a new ring in a fenced
 * transaction (refused without asking etcd once the lock is known lost, its
 * lease ended: another node may be rotating). Every node, the writer included, takes the new ring from the
 * watch. Tickets under the previous keys still decrypt: the ring keeps
 * TICKET_KEYS_KEPT keys.
 *
 * Failures are the store's own errors (etcd-calls.ts): StoreUnavailableError
 * while etcd cannot be reached, with what was being done; never etcd3's or
 * gRPC's raw errors, which reached the admin API as a 500 under a
 * certificate's code.
 *
 * Secrets: the keys are in etcd (protected by etcd's TLS and auth, README,
 * "Fleet deployment") and in memory; never in the node's cache file, a log
 * line, an error or a metric.
 */
import { newTicketKey, TICKET_KEY_BYTES, TICKET_KEYS_KEPT } from '../tls/tickets.js';
import type { EtcdStore } from './etcd-store.js';
import { TICKETS } from './layout.js';

/** Below the store's `locks/`. */
const ROTATION_LOCK = 'ticket-rotation';
/** The lock's lease: a node that dies holding it frees it after this. */
const LOCK_TTL_SECONDS = 10;
/**
 * How far ahead of this node's clock a ring's rotation time may be and still count as recent: clocks of a fleet
 * differ by this little. A ring dated further ahead (written by a node whose clock was off, a year ahead from a bad
 * RTC before NTP set it) is due now: taken as recent, it stayed "not due" on every node until that date, and the
 * fleet's ticket keys were never rotated meanwhile.
 */
export const RING_FUTURE_SKEW_MS = 60_000;

export interface SharedTicketKeys {
  /** Newest first. */
  readonly keys: readonly Buffer[];
  readonly rotatedAt: number;
  /** The etcd revision of the ring: a node applies a ring only once, in order. */
  readonly revision: number;
}

/** The ring as the store's mirror holds it, or undefined when there is none (or it is malformed). */
export function sharedTicketKeys(store: EtcdStore): SharedTicketKeys | undefined {
  const item = store.item(TICKETS);
  return item === undefined ? undefined : parseRing(item.value, item.modRevision);
}

export type RotationResult = 'rotated' | 'not-due' | 'busy' | 'lost-lock';

/**
 * Rotates the fleet's ring when it is older than `periodMs` (or absent), or
 * always with `force` (the admin's POST /tickets/rotate, which waits up to
 * `waitMs` for another node's rotation to finish). Rejects with
 * StoreUnavailableError when etcd cannot be reached: the caller keeps the
 * ring it has.
 */
export async function rotateSharedTicketKeys(
  store: EtcdStore,
  options: { readonly force: boolean; readonly periodMs: number; readonly waitMs: number },
): Promise<RotationResult> {
  const client = store.client;
  const lock = await store.lock(ROTATION_LOCK, { ttlSeconds: LOCK_TTL_SECONDS, waitMs: options.waitMs });
  if (lock === undefined) return 'busy';
  try {
    // Read under the lock, from etcd itself: another node may have rotated a moment ago.
    const range = await store.call('read the session-ticket key ring', () => client.get(store.prefix + TICKETS).exec());
    const kv = range.kvs[0];
    const current = kv === undefined ? undefined : parseRing(kv.value.toString('utf8'), Number(kv.mod_revision));
    const age = current === undefined ? Number.NaN : Date.now() - current.rotatedAt;
    if (!options.force && current !== undefined && kv !== undefined && age < options.periodMs && age >= -RING_FUTURE_SKEW_MS) {
      // What etcd holds is the ring to use, whether or not the watch has brought it yet.
      store.applyLocal(TICKETS, kv.value.toString('utf8'), current.revision);
      return 'not-due';
    }
    const keys = [newTicketKey(), ...(current?.keys ?? [])].slice(0, TICKET_KEYS_KEPT);
    const value = JSON.stringify({ keys: keys.map((k) => k.toString('base64')), rotatedAt: new Date().toISOString() });
    // The operation is named, never the value: it is the ring.
    // Loaded here, on a fleet only: lock.ts loads the etcd client's module, which a proxy without etcd never needs.
    const { fencedPut } = await import('./lock.js');
    const revision = await store.call('write the session-ticket key ring', () => fencedPut(client, lock, store.prefix + TICKETS, value));
    if (revision === undefined) return 'lost-lock';
    store.applyLocal(TICKETS, value, revision);
    return 'rotated';
  } finally {
    await lock.release().catch(() => undefined);
  }
}

function parseRing(text: string, revision: number): SharedTicketKeys | undefined {
  try {
    const raw = JSON.parse(text) as { keys?: unknown; rotatedAt?: unknown };
    if (!Array.isArray(raw.keys) || raw.keys.length === 0 || typeof raw.rotatedAt !== 'string') return undefined;
    // The newest TICKET_KEYS_KEPT, as a rotation keeps: a ring written by hand with more keys than a ring takes
    // (tls/tickets.ts) made the primary's replace throw, at start and from the watch, on every node at once.
    const keys = raw.keys.slice(0, TICKET_KEYS_KEPT).map((k) => Buffer.from(String(k), 'base64'));
    if (keys.some((k) => k.length !== TICKET_KEY_BYTES)) return undefined;
    const rotatedAt = Date.parse(raw.rotatedAt);
    return Number.isFinite(rotatedAt) ? { keys, rotatedAt, revision } : undefined;
  } catch {
    return undefined;
  }
}
