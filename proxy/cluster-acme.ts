/**
 * ACME in the primary (acme/service.ts): orders run here, and what is issued
 * is stored and reloaded like an upload. The challenge answers go to every
 * worker (ChallengeBoard), and a new one is published to the CA only once
 * each synced worker acknowledged it, or after CHALLENGE_PUBLISH_WAIT_MS.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Registry } from 'prom-client';
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import type { BoardMessage } from './acme/challenges.js';
import { ChainStoredNotLoadedError } from './acme/errors.js';
import { type RunningAcme, startAcme } from './acme/service.js';
import { sendToWorker } from './cluster-metrics.js';
import type { ReloadCoordinator } from './serving/coordinator.js';
import { connectKeyserver } from './serving/keyserver-check.js';
import type { ServingSource } from './serving/source.js';
import type { EtcdStore } from './store/etcd-store.js';

/** How long a new ACME challenge waits for every worker to serve it before the CA is told to look. */
const CHALLENGE_PUBLISH_WAIT_MS = 10_000;

/** ACME challenge answers, sent to every worker and acknowledged per generation. */
export class ChallengeBoard {
  readonly #applied = new Map<Worker, number>();
  readonly #waiters = new Set<() => void>();
  readonly #synced: ReadonlySet<Worker>;

  constructor(synced: ReadonlySet<Worker>) {
    this.#synced = synced;
  }

  /** Resolves once each synced worker applied `message` (or after CHALLENGE_PUBLISH_WAIT_MS). */
  async broadcast(message: BoardMessage): Promise<void> {
    const synced = this.#synced;
    const boardApplied = this.#applied;
    const boardWaiters = this.#waiters;
    const holders = [...synced];
    for (const worker of Object.values(cluster.workers ?? {})) if (worker !== undefined) sendToWorker(worker, message);
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        boardWaiters.delete(check);
        resolve();
      };
      const check = (): void => void (holders.every((w) => w.isDead() || (boardApplied.get(w) ?? -1) >= message.generation) && done());
      const timer = setTimeout(done, CHALLENGE_PUBLISH_WAIT_MS);
      boardWaiters.add(check);
      check();
    });
  }

  applied(worker: Worker, generation: number): void {
    this.#applied.set(worker, generation);
    for (const wake of this.#waiters) wake();
  }

  gone(worker: Worker): void {
    this.#applied.delete(worker);
    for (const wake of this.#waiters) wake();
  }
}

/** ACME (acme/service.ts), when configured: orders run here; what it issues is stored and reloaded like an upload. */
export function startAcmeService(
  config: ProxyConfig,
  log: Logger,
  parts: { shared: EtcdStore | undefined; source: ServingSource; coordinator: ReloadCoordinator; registry: Registry; board: ChallengeBoard },
): RunningAcme | undefined {
  if (config.acme === null) return undefined;
  const { shared, source, coordinator, registry, board } = parts;
  return startAcme({
    config,
    acme: config.acme,
    log,
    registry,
    keyserver: () => connectKeyserver(config),
    records: () => source.records,
    // The store itself, not only what serves: an entry refused for now (not yet valid, its key unknown) is the operator's.
    stored: (name) => source.config.certificates.some((c) => c.name === name) || storeHas(source, name),
    store: async (name, chainPem, keyId, domains, lock, options) => {
      await source.putCertificate(name, chainPem, {
        keyId,
        names: domains,
        source: 'ACME',
        ...(lock === undefined ? {} : { lock }),
        ...(options?.newEntry === true ? { newEntry: true } : {}),
      });
      const report = await coordinator.reload('admin', [name]);
      if (report.error !== undefined) throw new ChainStoredNotLoadedError(keyId, report.error.message);
    },
    assertStorable: (name) => source.store.assertOwned?.(name),
    broadcast: (message) => board.broadcast(message),
    shared,
    publishWaitMs: CHALLENGE_PUBLISH_WAIT_MS,
  });
}

/** Whether the store has entry `name` now; a name the store could not hold has none. */
function storeHas(source: ServingSource, name: string): boolean {
  try {
    return source.store.has(name);
  } catch {
    return false;
  }
}
