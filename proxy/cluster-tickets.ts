/**
 * The primary's session-ticket keys (tls/tickets.ts): the ring (newest key
 * and the previous ones), its distribution to every worker over the IPC
 * channel, with the wait for their acknowledgements, and in a fleet the
 * shared ring from the store (store/tickets.ts), taken once per etcd revision
 * in order. The keys leave this process only over IPC; a log line says how
 * many keys the ring holds, never the keys.
 */
import cluster, { type Worker } from 'node:cluster';
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { sendToWorker } from './cluster-metrics.js';
import type { ReloadCoordinator } from './serving/coordinator.js';
import type { EtcdStore, StoreChange } from './store/etcd-store.js';
import { rotateSharedTicketKeys, sharedTicketKeys } from './store/tickets.js';
import { TicketKeyRing, ticketRingMessage } from './tls/tickets.js';

/** How long an admin rotation waits for the workers' acknowledgements. */
const TICKET_ROTATION_WAIT_MS = 10_000;

export interface TicketParts {
  readonly config: ProxyConfig;
  readonly log: Logger;
  readonly shared: EtcdStore | undefined;
  readonly synced: ReadonlySet<Worker>;
  readonly coordinator: ReloadCoordinator;
}

export type Tickets = Awaited<ReturnType<typeof startTickets>>;

/** Session-ticket keys: the ring, its distribution to every worker, and in a fleet the shared ring from the store. */
export async function startTickets({ config, log, shared, synced, coordinator }: TicketParts) {
  const tickets = new TicketKeyRing();
  let ticketGeneration = 0;
  const ticketsApplied = new Map<Worker, number>();
  const ticketWaiters = new Set<() => void>();
  let onStoreChange: (changes: ReadonlySet<StoreChange>) => void = () => {};
  // The ring goes to every worker; resolves once each worker that held the old one applied it (or after the wait).
  const distributeTickets = async (): Promise<{ keys: number; workers: number; applied: number }> => {
    const generation = ++ticketGeneration;
    const holders = [...synced];
    for (const worker of Object.values(cluster.workers ?? {})) if (worker !== undefined) sendToWorker(worker, ticketRingMessage(tickets, generation));
    // Never the keys themselves: only how many the ring holds.
    log.info({ keys: tickets.size }, 'session ticket key rotated');
    const applied = (): number => holders.filter((w) => (ticketsApplied.get(w) ?? -1) >= generation).length;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        ticketWaiters.delete(check);
        resolve();
      };
      const check = (): void => void (holders.every((w) => w.isDead() || (ticketsApplied.get(w) ?? -1) >= generation) && done());
      const timer = setTimeout(done, TICKET_ROTATION_WAIT_MS);
      ticketWaiters.add(check);
      check();
    });
    return { keys: tickets.size, workers: holders.length, applied: applied() };
  };
  // The fleet's ring, once per etcd revision, in order.
  let sharedTicketRevision = 0;
  const takeSharedTickets = async (): Promise<{ keys: number; workers: number; applied: number } | undefined> => {
    const ring = shared === undefined ? undefined : sharedTicketKeys(shared);
    if (ring === undefined || ring.revision <= sharedTicketRevision) return undefined;
    sharedTicketRevision = ring.revision;
    tickets.replace(ring.keys);
    return distributeTickets();
  };
  const rotateTickets = async (): Promise<unknown> => {
    if (shared === undefined) {
      tickets.rotate();
      return distributeTickets();
    }
    // Fleet-wide: refused while etcd is away (the current ring keeps serving), else answered once this node's workers use the new ring.
    shared.assertWritable();
    const result = await rotateSharedTicketKeys(shared, { force: true, periodMs: 0, waitMs: TICKET_ROTATION_WAIT_MS });
    const applied = (await takeSharedTickets()) ?? { keys: tickets.size, workers: synced.size, applied: synced.size };
    return { ...applied, result, fleet: true };
  };
  if (shared !== undefined) {
    // The fleet's ring, made by the first node if there is none yet; a node that starts while etcd is away uses a ring of its own until it is back.
    if (sharedTicketKeys(shared) === undefined && shared.health.up) {
      await rotateSharedTicketKeys(shared, { force: false, periodMs: config.tls.ticketKeyRotationSeconds * 1000, waitMs: 5_000 }).catch((err: Error) =>
        log.warn({ reason: err.message }, 'cannot make the fleet ticket key ring yet; using one of this node until etcd answers'),
      );
    }
    const ring = sharedTicketKeys(shared);
    if (ring !== undefined) {
      tickets.replace(ring.keys);
      sharedTicketRevision = ring.revision;
    }
    onStoreChange = (changes) => {
      if (changes.has('certificates') || changes.has('routes')) void coordinator.reload('store');
      if (changes.has('tickets')) void takeSharedTickets();
    };
    // Whatever changed between the first pass and now.
    void coordinator.reload('store');
    void takeSharedTickets();
  }
  return {
    rotateTickets,
    takeSharedTickets,
    onStoreChange: (changes: ReadonlySet<StoreChange>) => onStoreChange(changes),
    /** The ring as a worker that starts gets it. */
    message: () => ticketRingMessage(tickets, ticketGeneration),
    applied: (worker: Worker, generation: number): void => {
      ticketsApplied.set(worker, generation);
      for (const wake of ticketWaiters) wake();
    },
    gone: (worker: Worker): void => {
      ticketsApplied.delete(worker);
      for (const wake of ticketWaiters) wake();
    },
  };
}

/**
 * The ticket ring's periodic rotation, every `tls.ticketKeyRotationSeconds`. A fleet's nodes each look a dozen times
 * a period whether the shared ring is due; the one holding the lock rotates it, and every node takes it from the store.
 */
export function scheduleTicketRotation(
  config: ProxyConfig,
  log: Logger,
  shared: EtcdStore | undefined,
  { rotateTickets, takeSharedTickets }: Pick<Tickets, 'rotateTickets' | 'takeSharedTickets'>,
): NodeJS.Timeout {
  const rotationMs = config.tls.ticketKeyRotationSeconds * 1000;
  const rotation =
    shared === undefined
      ? setInterval(() => void rotateTickets(), rotationMs)
      : setInterval(
          () => {
            if (!shared.health.up) return;
            rotateSharedTicketKeys(shared, { force: false, periodMs: rotationMs, waitMs: 0 }).then(
              () => void takeSharedTickets(),
              (err: Error) => log.warn({ reason: err.message }, 'fleet ticket key rotation check failed; the current ring keeps serving'),
            );
          },
          Math.min(Math.max(rotationMs / 12, 5_000), 300_000),
        );
  rotation.unref();
  return rotation;
}
