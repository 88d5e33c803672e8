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
 */
import cluster, { type Worker } from 'node:cluster';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type http from 'node:http';
import { Counter, Registry } from 'prom-client';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import type { Logger } from '../keyserver/shared/log.js';
import { isLoopbackHost, startProxyAdmin } from './admin.js';
import {
  APPLIED,
  type AppliedMessage,
  applyMessage,
  isAppliedMessage,
  isMessage,
  isStartFailedMessage,
  PACK_OPENED,
  READY,
  SHUTDOWN,
  serveMessage,
  TICKET_KEYS_APPLIED,
  WANT_TICKET_KEY,
} from './cluster-messages.js';
import { ClusterMetrics, sendToWorker } from './cluster-metrics.js';
import { registerFleetStoreMetrics } from './metrics.js';
import { TicketKeyRing, ticketRingMessage } from './tls/tickets.js';
import { installUncaughtHandlers, UNCAUGHT_EXIT_CODE } from './uncaught.js';
import { ReloadCoordinator } from './serving/coordinator.js';
import { dueExpiryWarnings, registerServingMetrics } from './serving/expiry.js';
import { connectKeyserver, ServingSource } from './serving/source.js';
import { Distribution } from './serving/distribute.js';
import { PackShelf } from './serving/pack.js';
import type { ServingDelta } from './serving/spec.js';
import { refuseStartOnConfigCertificates } from './serving/start.js';
import { watchForChanges } from './serving/watch.js';
import { CACHE_FILE } from './store/cache.js';
import { etcdClient } from './store/etcd-client.js';
import { EtcdStore, type StoreChange } from './store/etcd-store.js';
import { deleteRoute, putRoute } from './store/routes.js';
import { rotateSharedTicketKeys, sharedTicketKeys } from './store/tickets.js';
import { boardAppliedGeneration, type BoardMessage } from './acme/challenges.js';
import { ChainStoredNotLoadedError } from './acme/errors.js';
import { type RunningAcme, startAcme } from './acme/service.js';
import { wantedName } from './acme/on-demand.js';

/** How long an admin rotation waits for the workers' acknowledgements. */
const TICKET_ROTATION_WAIT_MS = 10_000;
/** How long a new ACME challenge waits for every worker to serve it before the CA is told to look. */
const CHALLENGE_PUBLISH_WAIT_MS = 10_000;
/** A worker that dies sooner than this after starting is restarted after a pause, not at once. */
const CRASH_LOOP_MS = 5_000;
/** The pause doubles with each such death in a row, from 1 s up to this: a crash loop costs the serving workers little CPU. */
const MAX_RESTART_PAUSE_MS = 30_000;
/**
 * A serving worker that sent nothing for this long, not even its answers to the metrics polls (every 5 s,
 * cluster-metrics.ts), has a blocked event loop: it is killed and replaced (APPLY_TIMEOUT_MS more during a reload).
 */
const SILENT_MS = 30_000;
const WATCH_MS = 5_000;
/**
 * Starts in a row that ended before the worker served (it died, or hung past `workerStartTimeoutMs`) while no worker
 * has served yet: the proxy then stops with an error instead of starting them again for ever.
 */
const FAILED_STARTS = 3;

/** How long the primary waits for every worker to apply a reload before calling it partial. */
const APPLY_TIMEOUT_MS = 30_000;
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

async function primary(config: ProxyConfig, log: Logger, { onHangup, onFault }: PrimaryHooks): Promise<void> {
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  const tickets = new TicketKeyRing();
  let ticketGeneration = 0;
  // Set once the coordinator and the ticket distribution exist; the store's changes before that are read by the first pass.
  let onStoreChange: (changes: ReadonlySet<StoreChange>) => void = () => {};
  const shared =
    config.etcd === null
      ? undefined
      : new EtcdStore(etcdClient(config.etcd, config.source), {
          prefix: config.etcd.prefix,
          timeoutMs: config.etcd.timeoutMs,
          cacheFile: path.join(config.stateDir, CACHE_FILE),
          log,
          onChange: (changes) => onStoreChange(changes),
        });
  await shared?.start();
  const ticketsApplied = new Map<Worker, number>();
  const ticketWaiters = new Set<() => void>();
  let stopping = false;
  const started = new Map<Worker, number>();
  /** When each worker last sent anything (the metrics polls make a live one answer every few seconds). */
  const heardAt = new Map<Worker, number>();

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
  const primaryRegistry = new Registry();
  const reloads = registerServingMetrics(primaryRegistry, { records: () => source.records, refusals: () => source.refusals });
  if (shared !== undefined) registerFleetStoreMetrics(primaryRegistry, () => shared.health);
  const restarts = new Counter({
    name: 'keyedge_proxy_worker_restarts_total',
    help: 'Workers that died and were replaced; a crash loop shows as a steady rise (the pause between quick deaths doubles up to 30 s).',
    registers: [primaryRegistry],
  });
  reloads.inc({ trigger: 'start', result: first.refused.length > 0 ? 'refused' : 'ok' });
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

  // Large deltas (a worker's whole state) go to workers as files, not through the IPC pipe (serving/pack.ts).
  // The newest whole state stays in the state directory: the next start sends it again rather than reading the store (serving/kept.ts).
  const keepIn = source.keptDir();
  const packs = new PackShelf<Worker>(
    keepIn === undefined
      ? {}
      : {
          keepIn,
          keep: (packed, delta, chains) => source.keepWritten(packed, delta, chains),
          existing: (delta) => source.keptPackFor(delta),
          ...(source.keptPack === undefined ? {} : { kept: source.keptPack }),
        },
  );
  const distribution = new Distribution();
  // Workers that hold the current serving state and get every delta after it.
  const synced = new Set<Worker>();
  let inFlight: ServingDelta | undefined;
  const acks = new Map<Worker, (message: AppliedMessage) => void>();
  const applyEverywhere = async (next: ServingDelta): Promise<string[]> => {
    // The delta, or the whole state after it when the workers' layers would grow too far (serving/distribute.ts).
    const delta = distribution.shape(next, () => source.wholeWith(next));
    inFlight = delta;
    try {
      const results = await Promise.all(
        [...synced].map(
          (worker) =>
            new Promise<string | undefined>((resolve) => {
              const timer = setTimeout(() => {
                acks.delete(worker);
                resolve(`worker ${worker.id}: no answer within ${APPLY_TIMEOUT_MS} ms`);
              }, APPLY_TIMEOUT_MS);
              acks.set(worker, (message) => {
                if (message.generation !== delta.generation) return;
                clearTimeout(timer);
                acks.delete(worker);
                resolve(message.error === undefined ? undefined : `worker ${worker.id}: ${message.error}`);
              });
              sendToWorker(worker, applyMessage(packs.wire('delta', delta, worker)));
            }),
        ),
      );
      return results.filter((r): r is string => r !== undefined);
    } finally {
      inFlight = undefined;
    }
  };
  const coordinator = new ReloadCoordinator(source, {
    log,
    apply: applyEverywhere,
    onReport: (report) => {
      reloads.inc({ trigger: report.trigger, result: report.result });
      warnExpiry(report.changed);
    },
  });

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

  // ACME (acme/service.ts): orders run here; challenge answers go to every worker, acknowledged per generation.
  const boardApplied = new Map<Worker, number>();
  const boardWaiters = new Set<() => void>();
  const broadcastBoard = async (message: BoardMessage): Promise<void> => {
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
  };
  let acme: RunningAcme | undefined;
  if (config.acme !== null) {
    acme = startAcme({
      config,
      acme: config.acme,
      log,
      registry: primaryRegistry,
      keyserver: () => connectKeyserver(config),
      records: () => source.records,
      store: async (name, chainPem, keyId, domains, lock) => {
        await source.putCertificate(name, chainPem, { keyId, names: domains, source: 'ACME', ...(lock === undefined ? {} : { lock }) });
        const report = await coordinator.reload('admin', [name]);
        if (report.error !== undefined) throw new ChainStoredNotLoadedError(keyId, report.error.message);
      },
      broadcast: broadcastBoard,
      shared,
      publishWaitMs: CHALLENGE_PUBLISH_WAIT_MS,
    });
    // The fleet's ACME state (account, orders, challenges) from the store's watch.
    const running = acme;
    const previous = onStoreChange;
    onStoreChange = (changes) => {
      previous(changes);
      if (changes.has('acme')) running.storeChanged();
    };
  }

  // The admin port first: one already in use fails the start before any worker runs.
  const clusterMetrics = new ClusterMetrics(primaryRegistry);
  const ready = new Set<Worker>();
  let admin: http.Server | undefined;
  let keyserverPing: Promise<string | undefined> | undefined;
  if (config.admin !== null) {
    try {
      admin = await startProxyAdmin(config.admin.host, config.admin.port, {
        config: () => source.config,
        metrics: async () => ({ contentType: clusterMetrics.contentType, body: await clusterMetrics.metrics() }),
        degradedReason: () => {
          const health = shared?.health;
          if (health === undefined || health.up) return undefined;
          return `etcd unreachable since ${new Date(health.since).toISOString()} (${health.reason}); serving the last good state (revision ${health.revision}), changes refused`;
        },
        notReadyReason: async () => {
          if (ready.size < config.workers) return `${ready.size} of ${config.workers} workers have loaded their certificates`;
          const missing = [...source.refusals.values()].find((r) => !source.records.has(r.name));
          if (missing !== undefined) return `certificate '${missing.name}' is not loaded: ${missing.message}`;
          // One ping at a time, shared by every probe meanwhile: a burst of probes opened a key-server connection each,
          // which took the key server's allowance for this host from the workers' bridges, and read as not ready.
          keyserverPing ??= keyserverUnreachableReason(config).finally(() => (keyserverPing = undefined));
          return keyserverPing;
        },
        control: {
          tokenFile: config.admin.tokenFile,
          reload: () => coordinator.reload('admin'),
          putCertificate: async (name, chainText) => {
            await source.putCertificate(name, chainText);
            return coordinator.reload('admin', [name]);
          },
          certificates: () => listCertificates(source, acme),
          ...(acme === undefined
            ? {}
            : {
                acmeIssue: async (domains: readonly string[], name?: string, replaceDomains = false) =>
                  describeIssued(await acme.manager.issue(domains, name, false, replaceDomains)),
                acmeRenew: async (name: string) => describeIssued(await acme.manager.renew(name)),
              }),
          ownedByConfig: (name) => source.config.certificates.some((c) => c.name === name),
          rotateTicketKeys: () => rotateTickets(),
          ...(shared === undefined
            ? {}
            : {
                putRoute: async (name: string, body: unknown) => {
                  await putRoute(shared, name, body);
                  return coordinator.reload('admin');
                },
                deleteRoute: async (name: string) => {
                  if (!(await deleteRoute(shared, name))) return undefined;
                  return coordinator.reload('admin');
                },
              }),
        },
      });
      if (!isLoopbackHost(config.admin.host)) {
        log.warn(
          { admin: admin.address() },
          'the admin API listens beyond loopback: /metrics, /readyz, /config and /certs answer anyone who reaches it (changes still need the token)',
        );
      }
    } catch (err) {
      clusterMetrics.stop();
      await shared?.close();
      throw err;
    }
  }

  // Until every first worker has been ready once, a worker that cannot start
  // (a port in use, the bridge not built) ends the proxy with its error:
  // replacing it would fail the same way, forever. Later, a replacement that
  // cannot start is logged and retried after the crash-loop pause.
  let allStarted = false;
  let failStart: ((err: KeyedgeError) => void) | undefined;
  // A worker that hangs in its start (before it listens for messages, or while it loads its state) sends nothing and
  // is not ready, which the silence watchdog below does not judge: it is killed after workerStartTimeoutMs.
  const startTimedOut = new Set<Worker>();
  const watchStart = (worker: Worker): void => {
    let due = Date.now() + config.workerStartTimeoutMs;
    const check = (): void => {
      if (stopping || worker.isDead() || ready.has(worker)) return;
      // A primary held up itself may not have read the worker's word yet: judged again a moment later.
      if (Date.now() - due > WATCH_MS) {
        due = Date.now() + 1_000;
        timer = setTimeout(check, 1_000).unref();
        return;
      }
      log.error(
        { worker: worker.id, pid: worker.process.pid, timeoutMs: config.workerStartTimeoutMs },
        `proxy worker did not become ready within ${config.workerStartTimeoutMs} ms; killing it`,
      );
      startTimedOut.add(worker);
      worker.process.kill('SIGKILL');
    };
    let timer = setTimeout(check, config.workerStartTimeoutMs).unref();
    worker.once('exit', () => clearTimeout(timer));
  };
  const fork = (): void => {
    const worker = cluster.fork();
    started.set(worker, Date.now());
    watchStart(worker);
    clusterMetrics.track(worker);
    worker.on('message', (message: unknown) => {
      heardAt.set(worker, Date.now());
      if (isMessage(message, WANT_TICKET_KEY.type)) {
        // Stopping already: the shutdown sent to it may have come before it listened for messages, and been lost. It
        // serves nothing yet and has no SIGTERM handler: it ends at once, instead of starting and waiting for the SIGKILL.
        if (stopping) return void worker.process.kill('SIGTERM');
        sendToWorker(worker, ticketRingMessage(tickets, ticketGeneration));
        // The committed state, then the delta being applied (if any): IPC
        // keeps order, so the worker ends up where every other worker is.
        sendToWorker(worker, serveMessage(packs.wire('snapshot', source.snapshot(), worker)));
        if (inFlight !== undefined) sendToWorker(worker, applyMessage(packs.wire('delta', inFlight, worker)));
        if (acme !== undefined) sendToWorker(worker, acme.board.message());
        synced.add(worker);
      } else if (isMessage(message, PACK_OPENED)) {
        packs.opened(worker, String((message as { file?: unknown }).file));
      } else if (isMessage(message, TICKET_KEYS_APPLIED)) {
        ticketsApplied.set(worker, Number((message as { generation?: unknown }).generation));
        for (const wake of ticketWaiters) wake();
      } else if (wantedName(message) !== undefined) {
        void acme?.onDemand?.wanted(wantedName(message) ?? '');
      } else if (boardAppliedGeneration(message) !== undefined) {
        boardApplied.set(worker, boardAppliedGeneration(message) ?? -1);
        for (const wake of boardWaiters) wake();
      } else if (isMessage(message, READY.type)) {
        ready.add(worker);
        everReady = true;
        if (ready.size >= config.workers) allStarted = true;
      } else if (isAppliedMessage(message)) {
        acks.get(worker)?.(message);
        // A worker that could not apply a delta is behind the others: replace it, and its successor starts from the committed state.
        if (message.error !== undefined) sendToWorker(worker, SHUTDOWN);
      } else if (isStartFailedMessage(message)) {
        if (!allStarted) failStart?.(new KeyedgeError(message.code, `proxy worker could not start: ${message.message}`));
        else log.error({ worker: worker.id, code: message.code, reason: message.message }, 'a replacement proxy worker could not start');
      }
    });
  };
  let quickDeaths = 0;
  let everReady = false;
  let failedStarts = 0;
  cluster.on('exit', (worker, code, signal) => {
    const lived = Date.now() - (started.get(worker) ?? 0);
    const wasReady = ready.has(worker);
    const timedOut = startTimedOut.delete(worker);
    started.delete(worker);
    heardAt.delete(worker);
    ready.delete(worker);
    synced.delete(worker);
    packs.gone(worker);
    ticketsApplied.delete(worker);
    boardApplied.delete(worker);
    for (const wake of ticketWaiters) wake();
    for (const wake of boardWaiters) wake();
    acks.get(worker)?.({ type: APPLIED, generation: inFlight?.generation ?? -1, error: 'exited' });
    if (stopping) return;
    restarts.inc();
    // One that died before it served failed its start, however long that took.
    quickDeaths = lived < CRASH_LOOP_MS || !wasReady ? quickDeaths + 1 : 0;
    if (!wasReady && !everReady && ++failedStarts >= FAILED_STARTS) {
      const last = timedOut ? `not ready within ${config.workerStartTimeoutMs} ms` : `exited (${signal ?? code}) before it served`;
      return failStart?.(new KeyedgeError('KEYEDGE_ERR_SETUP', `no proxy worker became ready: ${failedStarts} starts in a row failed, the last one ${last}`));
    }
    // A fixed 1 s pause had a worker that dies at start (a bad host, a bug in its start) re-forked, and its whole state
    // loaded again, every second for ever, on the cores the serving workers need.
    const pauseMs = quickDeaths === 0 ? 0 : Math.min(1000 * 2 ** (quickDeaths - 1), MAX_RESTART_PAUSE_MS);
    log.error({ worker: worker.id, pid: worker.process.pid, code, signal, livedMs: lived, restartInMs: pauseMs }, 'proxy worker died; starting a replacement');
    if (pauseMs > 0) setTimeout(() => !stopping && fork(), pauseMs).unref();
    else fork();
  });

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
  // A worker whose event loop is blocked (a hot loop, a hang in native code) answers nothing and holds its connections
  // for ever; the kernel gives new ones to the others, so nothing else would notice. It is killed and replaced.
  let watchedAt = Date.now();
  const watchdog = setInterval(() => {
    const now = Date.now();
    // A primary held up itself (a long synchronous validation) has not read its workers' messages yet: judged next time.
    const held = now - watchedAt > 2 * WATCH_MS;
    watchedAt = now;
    if (held) return;
    for (const worker of ready) {
      const silentMs = now - (heardAt.get(worker) ?? now);
      // Building a large reload's contexts holds a worker's loop: while one is applied to it, it has that long more.
      if (silentMs < SILENT_MS + (acks.has(worker) ? APPLY_TIMEOUT_MS : 0) || worker.isDead()) continue;
      log.error({ worker: worker.id, pid: worker.process.pid, silentMs }, 'proxy worker unresponsive (its event loop is blocked); killing it');
      worker.process.kill('SIGKILL');
    }
  }, WATCH_MS);
  watchdog.unref();
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
  onHangup(() => void coordinator.reload('signal'));
  log.info({ workers: config.workers, listen: config.listen, admin: admin?.address(), certificates: source.records.size }, 'proxy primary started');

  const stopTimers = (): void => {
    stopping = true;
    clearInterval(rotation);
    clearInterval(watchdog);
    clearInterval(expiryTimer);
    clusterMetrics.stop();
    acme?.stop();
    stopWatching();
    onHangup(() => undefined);
    source.close();
    packs.close();
  };
  // Every SIGTERM/SIGINT is caught until the end: a second one's default action ended the primary at once, mid-drain,
  // and its workers with it (they exit when the IPC channel closes). The drain is bounded by the grace period.
  let stop: (reason: string) => void = () => undefined;
  const onStopSignal = (signal: NodeJS.Signals): void => stop(signal);
  process.on('SIGTERM', onStopSignal);
  process.on('SIGINT', onStopSignal);
  try {
    await new Promise<void>((resolve, reject) => {
      failStart = (err) => {
        if (stopping) return;
        stopTimers();
        log.error({ code: err.code, reason: err.message }, 'a proxy worker could not start; stopping');
        // Workers still starting have no SIGTERM handler yet and end at once; started ones stop gracefully.
        for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
        reject(err);
      };
      stop = (reason) => {
        if (stopping) return;
        stopTimers();
        log.info({ reason }, 'stopping proxy workers');
        const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
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
    // Every admin connection too: one still sending its head (or an upload) kept the stopped primary running until it ended.
    admin?.close();
    admin?.closeAllConnections();
    await shared?.close();
  }
  log.info('proxy stopped');
}

/** What an ACME issuance answers the admin: never key material, the key id only; an issue adds its entry and the names it covers. */
function describeIssued(issued: { keyId: string; newKey: boolean; entry?: string; domains?: readonly string[]; previousDomains?: readonly string[] }): unknown {
  return {
    keyId: issued.keyId,
    newKey: issued.newKey,
    ...(issued.entry === undefined ? {} : { name: issued.entry, domains: issued.domains }),
    ...(issued.previousDomains === undefined ? {} : { previousDomains: issued.previousDomains }),
  };
}

/** GET /certs: what serves, what was refused, and each ACME-managed entry's renewal state. */
function listCertificates(source: ServingSource, acme: RunningAcme | undefined): unknown {
  return {
    certificates: [...source.records.values()].map((r) => ({
      name: r.name,
      from: r.from,
      names: r.names,
      serial: r.serial,
      issuer: r.issuer,
      notAfter: r.notAfter,
      keyId: r.keyId,
      loadedAt: r.loadedAt,
      refused: source.refusals.get(r.name) ?? null,
      ...(acme === undefined ? {} : { acme: acme.manager.view(r.name) ?? null }),
    })),
    refused: [...source.refusals.values()].filter((r) => !source.records.has(r.name)),
  };
}

/** Pings the key server; undefined when it answers. */
async function keyserverUnreachableReason(config: ProxyConfig): Promise<string | undefined> {
  try {
    const client = await connectKeyserver(config);
    try {
      await client.ping();
    } finally {
      client.close();
    }
    return undefined;
  } catch (err) {
    return `key server: ${(err as Error).message}`;
  }
}
