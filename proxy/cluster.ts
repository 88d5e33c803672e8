/**
 * `keyedge proxy` under node:cluster: the primary forks the workers, owns the
 * session-ticket keys, replaces workers that die, and stops them gracefully.
 *
 * Scheduling is SCHED_NONE: every worker accepts on the shared socket itself.
 * With the default round-robin policy the primary accepts each connection and
 * passes it to a worker, which cost about +520 µs per handshake here. Each
 * worker runs cluster-worker.ts; what the two say is cluster-messages.ts.
 *
 * The primary never loads the keyless bridge or any key. It owns the reload
 * path (serving/): it validates certificates and the routing table, sends
 * each worker the result, and answers the admin API. A worker starts
 * listening only once it holds the shared ticket keys, so every ticket it
 * issues can be resumed by any other worker, and the primary's serving state.
 *
 * Ticket keys (tls/tickets.ts): the primary keeps a ring (newest and the
 * previous ones), rotates it every `tls.ticketKeyRotationSeconds` or on the
 * admin's POST /tickets/rotate, and sends the whole ring to every worker over
 * the IPC channel, its only way out of this process. In a fleet (`etcd` set)
 * the ring is the fleet's, from the shared store (store/tickets.ts): one node
 * rotates it for all, and every primary takes it from its watch.
 *
 * This file runs the primary's steps in order (start-up, metrics, ticket
 * keys, signals and shutdown); beside it, cluster-supervisor.ts forks and
 * replaces the workers, cluster-serving.ts sends them the serving state,
 * cluster-tickets.ts keeps and sends the ticket key ring, cluster-acme.ts
 * runs ACME and cluster-admin.ts wires the admin API.
 */
import cluster, { type Worker } from 'node:cluster';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type http from 'node:http';
import { Counter, Registry } from 'prom-client';
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { startClusterAdmin } from './cluster-admin.js';
import { applyMessage, isAppliedMessage, isMessage, PACK_OPENED, SHUTDOWN, serveMessage, TICKET_KEYS_APPLIED, WANT_TICKET_KEY } from './cluster-messages.js';
import { ClusterMetrics, sendToWorker } from './cluster-metrics.js';
import { ChallengeBoard, startAcmeService } from './cluster-acme.js';
import { APPLY_TIMEOUT_MS, distributeServing, type Serving } from './cluster-serving.js';
import { WorkerSupervisor } from './cluster-supervisor.js';
import { startTickets, type Tickets } from './cluster-tickets.js';
import { registerFleetStoreMetrics } from './metrics.js';
import { installUncaughtHandlers, UNCAUGHT_EXIT_CODE } from './uncaught.js';
import type { ReloadCoordinator } from './serving/coordinator.js';
import { dueExpiryWarnings, registerServingMetrics } from './serving/expiry.js';
import { ServingSource } from './serving/source.js';
import { refuseStartOnConfigCertificates } from './serving/start.js';
import { watchForChanges } from './serving/watch.js';
import { CACHE_FILE } from './store/cache.js';
import { etcdClient } from './store/etcd-client.js';
import { EtcdStore, type StoreChange } from './store/etcd-store.js';
import { rotateSharedTicketKeys } from './store/tickets.js';
import { boardAppliedGeneration } from './acme/challenges.js';
import type { RunningAcme } from './acme/service.js';
import { wantedName } from './acme/on-demand.js';

/** Expiry warnings are checked this often (and after every reload). */
const EXPIRY_CHECK_MS = 3_600_000;

/**
 * Runs the primary until SIGTERM/SIGINT, then stops the workers gracefully. After an error nothing handled
 * (uncaught.ts) it stops the same way, then exits with UNCAUGHT_EXIT_CODE.
 */
export async function runPrimary(config: ProxyConfig, log: Logger): Promise<void> {
  // SIGHUP's default action ends the process: one that came while the primary starts (a deploy tool's reload) or
  // drains killed it, and its workers with their requests in flight. Caught from the start, it reloads once serving.
  let hangup = (): void => void (hangupWhileStarting = true);
  let hangupWhileStarting = false;
  const onHangup = (): void => hangup();
  process.on('SIGHUP', onHangup);
  // Node's default for an uncaught error ended the primary at once, and its workers with it (they exit when the IPC
  // channel closes), cutting every request in flight. Before the workers run there is nothing to drain.
  let faulted = false;
  let stopOnFault = (): void => process.exit(UNCAUGHT_EXIT_CODE);
  const uninstall = installUncaughtHandlers({
    log,
    consequence: `the proxy stops (its workers drain) and the primary exits with status ${UNCAUGHT_EXIT_CODE}`,
    drain: () => {
      faulted = true;
      stopOnFault();
    },
    // The drain's own bound (every worker killed after the grace period and 5 s), and slack.
    deadlineMs: config.shutdownGraceMs + 10_000,
  });
  try {
    await primary(config, log, {
      onHangup: (reload) => {
        hangup = reload;
        if (hangupWhileStarting) reload();
      },
      onFault: (stop) => (stopOnFault = stop),
    });
  } finally {
    process.off('SIGHUP', onHangup);
    uninstall();
  }
  if (faulted) process.exit(UNCAUGHT_EXIT_CODE);
}

interface PrimaryHooks {
  /** From now on SIGHUP calls `reload` (at once if one came already); a no-op while stopping. */
  readonly onHangup: (reload: () => void) => void;
  /** From now on an uncaught error calls `stop`. */
  readonly onFault: (stop: () => void) => void;
}

/**
 * The primary's steps, in order: the shared store and the first pass over the certificates (startServing), the
 * metrics, the serving state's distribution and the reload coordinator (distributeServing), the ticket keys
 * (startTickets), ACME (startAcmeService), the admin API, the workers (WorkerSupervisor, cluster-supervisor.ts), the
 * background work (watchBackground); then it runs until stopped (untilStopped).
 */
async function primary(config: ProxyConfig, log: Logger, { onHangup, onFault }: PrimaryHooks): Promise<void> {
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  // Set once the coordinator and the ticket distribution exist; the store's changes before that are read by the first pass.
  let onStoreChange: (changes: ReadonlySet<StoreChange>) => void = () => {};
  const { shared, source, configFile, refusedAtStart } = await startServing(config, log, (changes) => onStoreChange(changes));
  const metrics = primaryMetrics(log, shared, source, refusedAtStart);
  const serving = distributeServing(source, log, metrics);
  const ticketRing = await startTickets({ config, log, shared, synced: serving.synced, coordinator: serving.coordinator });
  const { rotateTickets, takeSharedTickets } = ticketRing;
  const board = new ChallengeBoard(serving.synced);
  const acme = startAcmeService(config, log, { shared, source, coordinator: serving.coordinator, registry: metrics.registry, board });
  onStoreChange = (changes) => {
    ticketRing.onStoreChange(changes);
    // The fleet's ACME state (account, orders, challenges) from the store's watch.
    if (changes.has('acme')) acme?.storeChanged();
  };

  // The admin port first: one already in use fails the start before any worker runs.
  const clusterMetrics = new ClusterMetrics(metrics.registry);
  const supervisor = new WorkerSupervisor({
    config,
    log,
    metrics: clusterMetrics,
    restarts: metrics.restarts,
    onMessage: (worker, message) => onWorkerMessage(worker, message, { supervisor, serving, ticketRing, board, acme }),
    onGone: (worker) => {
      serving.gone(worker);
      ticketRing.gone(worker);
      board.gone(worker);
    },
    applying: (worker) => serving.acks.has(worker),
    applyAllowanceMs: APPLY_TIMEOUT_MS,
  });
  let admin: http.Server | undefined;
  try {
    admin = await startClusterAdmin({
      config,
      log,
      source,
      shared,
      metrics: clusterMetrics,
      ready: supervisor.ready,
      coordinator: serving.coordinator,
      acme,
      rotateTickets,
    });
  } catch (err) {
    supervisor.stop();
    clusterMetrics.stop();
    await shared?.close();
    throw err;
  }

  const fork = (): void => supervisor.fork();
  for (let i = 0; i < config.workers; i++) fork();
  const rotationMs = config.tls.ticketKeyRotationSeconds * 1000;
  // A fleet's nodes each look a dozen times a period whether the shared ring is due; the one holding the lock rotates it.
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
  const stopBackground = watchBackground(config, log, { source, coordinator: serving.coordinator, warnExpiry: metrics.warnExpiry, configFile });
  onHangup(() => void serving.coordinator.reload('signal'));
  log.info({ workers: config.workers, listen: config.listen, admin: admin?.address(), certificates: source.records.size }, 'proxy primary started');
  try {
    await untilStopped(config, log, supervisor, onFault, () => {
      supervisor.stop();
      clearInterval(rotation);
      stopBackground();
      clusterMetrics.stop();
      acme?.stop();
      onHangup(() => undefined);
      source.close();
      serving.packs.close();
    });
  } finally {
    // Every admin connection too: one still sending its head (or an upload) kept the stopped primary running until it ended.
    admin?.close();
    admin?.closeAllConnections();
    await shared?.close();
  }
  log.info('proxy stopped');
}

/** Start-up: the fleet's store (if any), then the first pass over the certificates, validated here before any worker starts. */
async function startServing(
  config: ProxyConfig,
  log: Logger,
  onChange: (changes: ReadonlySet<StoreChange>) => void,
): Promise<{ shared: EtcdStore | undefined; source: ServingSource; configFile: string | undefined; refusedAtStart: boolean }> {
  const shared =
    config.etcd === null
      ? undefined
      : new EtcdStore(etcdClient(config.etcd, config.source), {
          prefix: config.etcd.prefix,
          timeoutMs: config.etcd.timeoutMs,
          maxRequestBytes: config.etcd.maxRequestBytes,
          cacheFile: path.join(config.stateDir, CACHE_FILE),
          log,
          onChange,
        });
  await shared?.start();
  // Certificates are validated here, once, before any worker starts: workers
  // receive the result and never parse or judge a certificate themselves.
  const configFile = existsSync(config.source) ? config.source : undefined;
  const source = new ServingSource(config, {
    ...(shared === undefined ? {} : { shared }),
    reloadConfig: configFile !== undefined,
    onUnverified: (reason) => log.warn({ reason }, 'key server unreachable at start: certificates load unverified, handshakes wait for it'),
    warn: (message) => log.warn(message),
    keepState: true,
  });
  let first: Awaited<ReturnType<ServingSource['next']>>;
  try {
    first = await source.next();
    refuseStartOnConfigCertificates(config, first);
  } catch (err) {
    // The etcd client's connections would keep a refused start from exiting.
    await shared?.close();
    throw err;
  }
  source.commit(first);
  for (const refusal of first.refused) {
    log.error(
      { certificate: refusal.name, source: refusal.source, reason: refusal.reason, code: 'KEYEDGE_ERR_CERTIFICATE' },
      `certificate refused: ${refusal.message}`,
    );
  }
  return { shared, source, configFile, refusedAtStart: first.refused.length > 0 };
}

interface PrimaryMetrics {
  readonly registry: Registry;
  readonly reloads: ReturnType<typeof registerServingMetrics>;
  readonly restarts: Counter;
  /** Logs the certificates due to expire: all of them, or after a reload only those it changed. */
  readonly warnExpiry: (changed?: readonly string[]) => void;
}

/** The primary's own metrics (summed with the workers' on /metrics), counting the first pass, and its expiry warnings. */
function primaryMetrics(log: Logger, shared: EtcdStore | undefined, source: ServingSource, refusedAtStart: boolean): PrimaryMetrics {
  const registry = new Registry();
  const reloads = registerServingMetrics(registry, { records: () => source.records, refusals: () => source.refusals });
  if (shared !== undefined) registerFleetStoreMetrics(registry, () => shared.health);
  const restarts = new Counter({
    name: 'keyedge_proxy_worker_restarts_total',
    help: 'Workers that died and were replaced; a crash loop shows as a steady rise (the pause between quick deaths doubles up to 30 s).',
    registers: [registry],
  });
  reloads.inc({ trigger: 'start', result: refusedAtStart ? 'refused' : 'ok' });
  const warned = new Map<string, number>();
  // After a reload, only the certificates it changed: a look at each of 100,000 records is for the hourly check.
  const warnExpiry = (changed?: readonly string[]): void => {
    const records = changed === undefined ? source.records.values() : changed.flatMap((name) => source.records.get(name) ?? []);
    for (const due of dueExpiryWarnings(records, new Date(), warned, changed === undefined)) {
      log.warn(
        { certificate: due.name, notAfter: due.notAfter, withinDays: due.days },
        `certificate expires within ${due.days} day${due.days === 1 ? '' : 's'}`,
      );
    }
  };
  warnExpiry();
  return { registry, reloads, restarts, warnExpiry };
}

/** What a worker says beyond its readiness (cluster-supervisor.ts): it wants its start state, or acknowledges something. */
function onWorkerMessage(
  worker: Worker,
  message: unknown,
  {
    supervisor,
    serving,
    ticketRing,
    board,
    acme,
  }: { supervisor: WorkerSupervisor; serving: Serving; ticketRing: Tickets; board: ChallengeBoard; acme: RunningAcme | undefined },
): void {
  if (isMessage(message, WANT_TICKET_KEY.type)) {
    // Stopping already: the shutdown sent to it may have come before it listened for messages, and been lost. It
    // serves nothing yet and has no SIGTERM handler: it ends at once, instead of starting and waiting for the SIGKILL.
    if (supervisor.stopping) return void worker.process.kill('SIGTERM');
    sendToWorker(worker, ticketRing.message());
    // The committed state, then the delta being applied (if any): IPC
    // keeps order, so the worker ends up where every other worker is.
    sendToWorker(worker, serveMessage(serving.packs.wire('snapshot', serving.snapshot(), worker)));
    const inFlight = serving.inFlight();
    if (inFlight !== undefined) sendToWorker(worker, applyMessage(serving.packs.wire('delta', inFlight, worker)));
    if (acme !== undefined) sendToWorker(worker, acme.board.message());
    serving.synced.add(worker);
  } else if (isMessage(message, PACK_OPENED)) {
    serving.packs.opened(worker, String((message as { file?: unknown }).file));
  } else if (isMessage(message, TICKET_KEYS_APPLIED)) {
    ticketRing.applied(worker, Number((message as { generation?: unknown }).generation));
  } else if (wantedName(message) !== undefined) {
    void acme?.onDemand?.wanted(wantedName(message) ?? '');
  } else if (boardAppliedGeneration(message) !== undefined) {
    board.applied(worker, boardAppliedGeneration(message) ?? -1);
  } else if (isAppliedMessage(message)) {
    serving.acks.get(worker)?.(message);
    // A worker that could not apply a delta is behind the others: replace it, and its successor starts from the committed state.
    if (message.error !== undefined) sendToWorker(worker, SHUTDOWN);
  }
}

/** The expiry check, the store and config-file watch: running until the returned function stops them. */
function watchBackground(
  config: ProxyConfig,
  log: Logger,
  {
    source,
    coordinator,
    warnExpiry,
    configFile,
  }: { source: ServingSource; coordinator: ReloadCoordinator; warnExpiry: () => void; configFile: string | undefined },
): () => void {
  const expiryTimer = setInterval(warnExpiry, EXPIRY_CHECK_MS);
  expiryTimer.unref();
  const stopWatching = watchForChanges({
    storeDir: config.certStore.dir,
    configFile,
    rescanSeconds: config.certStore.rescanSeconds,
    onChange: (trigger, names) => coordinator.reload(trigger, names),
    followed: () => source.followed,
    log,
  });
  return () => {
    clearInterval(expiryTimer);
    stopWatching();
  };
}

/**
 * Shutdown: resolves once SIGTERM/SIGINT (or an uncaught error, through `onFault`) stopped every worker gracefully;
 * rejects when a first worker cannot start. `stopTimers` ends the primary's own work first.
 */
async function untilStopped(
  config: ProxyConfig,
  log: Logger,
  supervisor: WorkerSupervisor,
  onFault: (stop: () => void) => void,
  stopTimers: () => void,
): Promise<void> {
  // Every SIGTERM/SIGINT is caught until the end: a second one's default action ended the primary at once, mid-drain,
  // and its workers with it (they exit when the IPC channel closes). The drain is bounded by the grace period.
  let stop: (reason: string) => void = () => undefined;
  const onStopSignal = (signal: NodeJS.Signals): void => stop(signal);
  process.on('SIGTERM', onStopSignal);
  process.on('SIGINT', onStopSignal);
  try {
    await new Promise<void>((resolve, reject) => {
      supervisor.failStart = (err) => {
        if (supervisor.stopping) return;
        stopTimers();
        log.error({ code: err.code, reason: err.message }, 'a proxy worker could not start; stopping');
        // Workers still starting have no SIGTERM handler yet and end at once; started ones stop gracefully.
        for (const worker of supervisor.workers()) worker.process.kill('SIGTERM');
        reject(err);
      };
      stop = (reason) => {
        if (supervisor.stopping) return;
        stopTimers();
        log.info({ reason }, 'stopping proxy workers');
        const workers = supervisor.workers();
        if (workers.length === 0) return resolve();
        let left = workers.length;
        for (const worker of workers) {
          worker.once('exit', () => --left === 0 && resolve());
          sendToWorker(worker, SHUTDOWN);
        }
        // Workers that do not finish within the grace period (plus slack) are killed.
        setTimeout(() => {
          for (const worker of workers) if (!worker.isDead()) worker.kill('SIGKILL');
        }, config.shutdownGraceMs + 5_000).unref();
      };
      onFault(() => stop('uncaught error'));
    });
  } finally {
    process.off('SIGTERM', onStopSignal);
    process.off('SIGINT', onStopSignal);
  }
}
