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
 * This file runs the primary's steps in order and catches its signals and
 * uncaught errors; each step is a module beside it: cluster-startup.ts (the
 * store and the first pass over the certificates), cluster-primary-metrics.ts
 * (its metrics and expiry warnings), cluster-serving.ts (the serving state
 * sent to the workers), cluster-tickets.ts (the ticket key ring, its rotation
 * and distribution), cluster-acme.ts (ACME), cluster-admin.ts (the admin
 * API's wiring), cluster-supervisor.ts (forking and replacing the workers),
 * cluster-on-worker-message.ts (what the workers say), cluster-background.ts
 * (expiry check, file watch) and cluster-shutdown.ts (the stop).
 */
import cluster from 'node:cluster';
import type http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { keepInspectorClosed } from '../keyserver/shared/inspector-signal.js';
import type { Logger } from '../keyserver/shared/log.js';
import { ChallengeBoard, startAcmeService } from './cluster-acme.js';
import { startClusterAdmin } from './cluster-admin.js';
import { watchBackground } from './cluster-background.js';
import { ClusterMetrics } from './cluster-metrics.js';
import { removeStaleWorkerConfigs } from './cluster-worker-config.js';
import { onWorkerMessage } from './cluster-on-worker-message.js';
import { warnLooseSecretFiles } from './cluster-secret-files.js';
import { primaryMetrics } from './cluster-primary-metrics.js';
import { distributeServing } from './cluster-serving.js';
import { untilStopped } from './cluster-shutdown.js';
import { startServing } from './cluster-startup.js';
import { WorkerSupervisor } from './cluster-supervisor.js';
import { scheduleTicketRotation, startTickets } from './cluster-tickets.js';
import type { StoreChange } from './store/etcd-store.js';
import { installUncaughtHandlers, UNCAUGHT_EXIT_CODE } from './uncaught.js';

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
  // SIGUSR2's default action ends the process too: HAProxy's reload signal, sent by habit or by a reload script written
  // for it, ended the primary at once, and its workers with it, cutting every request in flight. Said and ignored.
  const onUser2 = (): void => log.warn('SIGUSR2 ignored: SIGHUP reloads the proxy, SIGTERM stops it gracefully');
  process.on('SIGUSR2', onUser2);
  // SIGUSR1 (nginx's log reopening, sent by habit or a rotation script) opened Node's inspector on 127.0.0.1:9229,
  // which any local user may connect to and run code in the process: the admin token, the ticket keys, the etcd
  // password. Kept closed from the start, PIN or not (keyserver/shared/inspector-signal.ts).
  keepInspectorClosed(() => log.warn('SIGUSR1 ignored: the proxy opens no inspector (any local user could connect to it and run code in the process)'));
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
    process.off('SIGUSR2', onUser2);
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
 * ticket rotation (scheduleTicketRotation), the background work (watchBackground); then it runs until stopped
 * (untilStopped).
 */
async function primary(config: ProxyConfig, log: Logger, { onHangup, onFault }: PrimaryHooks): Promise<void> {
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  warnLooseSecretFiles(config, log);
  const stale = removeStaleWorkerConfigs(config.stateDir, config.workerStartTimeoutMs);
  if (stale.length > 0) log.info({ files: stale.length, stateDir: config.stateDir }, 'removed worker config files left by a primary that is gone');
  // Set once the coordinator and the ticket distribution exist; the store's changes before that are read by the first pass.
  let onStoreChange: (changes: ReadonlySet<StoreChange>) => void = () => {};
  const { shared, source, configFile, refusedAtStart } = await startServing(config, log, (changes) => onStoreChange(changes));
  const metrics = primaryMetrics(log, shared, source, refusedAtStart);
  const serving = distributeServing(source, log, metrics, config.reloadApplyTimeoutMs);
  const ticketRing = await startTickets({ config, log, shared, synced: serving.synced, coordinator: serving.coordinator });
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
    runningConfig: () => source.config,
    log,
    metrics: clusterMetrics,
    restarts: metrics.restarts,
    onMessage: (worker, message) => onWorkerMessage(worker, message, { supervisor, serving, ticketRing, board, acme, log }),
    onGone: (worker) => {
      serving.gone(worker);
      ticketRing.gone(worker);
      board.gone(worker);
    },
    applying: (worker) => serving.acks.has(worker),
    applyAllowanceMs: config.reloadApplyTimeoutMs,
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
      rotateTickets: ticketRing.rotateTickets,
    });
  } catch (err) {
    supervisor.stop();
    clusterMetrics.stop();
    await shared?.close();
    throw err;
  }

  const fork = (): void => supervisor.fork();
  for (let i = 0; i < config.workers; i++) fork();
  const rotation = scheduleTicketRotation(config, log, shared, ticketRing);
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
