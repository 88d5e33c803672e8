/**
 * `keyedge proxy` under node:cluster: the primary forks the workers, owns the
 * session-ticket key, replaces workers that die, and stops them gracefully.
 *
 * Scheduling is SCHED_NONE: every worker accepts on the shared socket itself.
 * With the default round-robin policy the primary accepts each connection and
 * passes it to a worker, which cost about +520 µs per handshake here.
 *
 * The primary never loads the keyless bridge, certificates or keys; a worker
 * starts listening only once it holds the shared ticket key, so every ticket
 * it issues can be resumed by any other worker.
 */
import cluster, { type Worker } from 'node:cluster';
import type http from 'node:http';
import { AggregatorRegistry } from 'prom-client';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { KeyserverClient } from '../keyserver/client/client.js';
import type { Logger } from '../keyserver/log.js';
import { startProxyAdmin } from './admin.js';
import { decodeTicketKey, isTicketKeyMessage, newTicketKey, ticketKeyMessage } from './tls/tickets.js';
import { startProxyWorker } from './worker.js';

const SHUTDOWN = { type: 'keyedge:shutdown' } as const;
const READY = { type: 'keyedge:ready' } as const;
/** A worker asks for the ticket key once it listens for messages: one sent on 'online' could arrive before that and be lost. */
const WANT_TICKET_KEY = { type: 'keyedge:want-ticket-key' } as const;

function isMessage(message: unknown, type: string): boolean {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}
/** A worker that dies sooner than this after starting is restarted after a pause, not at once. */
const CRASH_LOOP_MS = 5_000;

export function isShutdownMessage(message: unknown): boolean {
  return isMessage(message, SHUTDOWN.type);
}

/** Runs the primary until SIGTERM/SIGINT, then stops the workers gracefully. */
export async function runPrimary(config: ProxyConfig, log: Logger): Promise<void> {
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  let ticketKey = newTicketKey();
  let stopping = false;
  const started = new Map<Worker, number>();

  const ready = new Set<Worker>();
  const fork = (): void => {
    const worker = cluster.fork();
    started.set(worker, Date.now());
    worker.on('message', (message: unknown) => {
      if (isMessage(message, WANT_TICKET_KEY.type)) worker.send(ticketKeyMessage(ticketKey));
      else if (isMessage(message, READY.type)) ready.add(worker);
    });
  };
  cluster.on('exit', (worker, code, signal) => {
    const lived = Date.now() - (started.get(worker) ?? 0);
    started.delete(worker);
    ready.delete(worker);
    if (stopping) return;
    log.error({ worker: worker.id, pid: worker.process.pid, code, signal, livedMs: lived }, 'proxy worker died; starting a replacement');
    if (lived < CRASH_LOOP_MS) setTimeout(() => !stopping && fork(), 1000).unref();
    else fork();
  });

  for (let i = 0; i < config.workers; i++) fork();
  const rotation = setInterval(() => {
    ticketKey = newTicketKey();
    for (const worker of Object.values(cluster.workers ?? {})) worker?.send(ticketKeyMessage(ticketKey));
    log.info('session ticket key rotated');
  }, config.tls.ticketKeyRotationSeconds * 1000);
  rotation.unref();
  let admin: http.Server | undefined;
  if (config.admin !== null) {
    const aggregator = new AggregatorRegistry();
    admin = await startProxyAdmin(config.admin.host, config.admin.port, {
      config,
      metrics: async () => ({ contentType: aggregator.contentType, body: await (await aggregator.clusterMetrics()).toString() }),
      notReadyReason: async () => {
        if (ready.size < config.workers) return `${ready.size} of ${config.workers} workers have loaded their certificates`;
        return keyserverUnreachableReason(config);
      },
    });
  }
  log.info({ workers: config.workers, listen: config.listen, admin: admin?.address() }, 'proxy primary started');

  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      clearInterval(rotation);
      log.info({ signal }, 'stopping proxy workers');
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      if (workers.length === 0) return resolve();
      let left = workers.length;
      for (const worker of workers) {
        worker.once('exit', () => --left === 0 && resolve());
        worker.send(SHUTDOWN);
      }
      // Workers that do not finish within the grace period (plus slack) are killed.
      setTimeout(() => {
        for (const worker of workers) if (!worker.isDead()) worker.kill('SIGKILL');
      }, config.shutdownGraceMs + 5_000).unref();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  admin?.close();
  log.info('proxy stopped');
}

/** Pings the key server the way a worker reaches it; undefined when it answers. */
async function keyserverUnreachableReason(config: ProxyConfig): Promise<string | undefined> {
  const { socket, tcp } = config.keyserver;
  try {
    const client = await KeyserverClient.connect({
      ...(socket === null ? {} : { unixPath: socket }),
      ...(tcp === null ? {} : { tcp: { host: tcp.host, port: tcp.port, ca: tcp.ca, cert: tcp.cert, key: tcp.key, ...(tcp.servername === null ? {} : { servername: tcp.servername }) } }),
      timeoutMs: config.keyserver.timeoutMs * 4,
    });
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

/** Runs one worker: waits for the primary's ticket key, serves, stops on the primary's word or SIGTERM. */
export async function runWorker(config: ProxyConfig, log: Logger): Promise<void> {
  // Constructing one installs the worker's side of the aggregation: it answers
  // the primary's metrics requests with this process's global registry.
  new AggregatorRegistry();
  const firstKey = await new Promise<Buffer>((resolve) => {
    const onMessage = (message: unknown): void => {
      if (!isTicketKeyMessage(message)) return;
      process.off('message', onMessage);
      resolve(decodeTicketKey(message));
    };
    process.on('message', onMessage);
    process.send?.(WANT_TICKET_KEY);
  });
  const worker = await startProxyWorker(config, { log, ticketKey: firstKey });
  process.send?.(READY);
  await new Promise<void>((resolve) => {
    const stop = (): void => void worker.close().then(resolve);
    process.on('message', (message: unknown) => {
      if (isTicketKeyMessage(message)) worker.setTicketKey(decodeTicketKey(message));
      else if (isShutdownMessage(message)) stop();
    });
    // The primary relays SIGTERM as a message; a worker signalled directly stops the same way.
    process.once('SIGTERM', stop);
    process.once('SIGINT', () => undefined);
  });
  // The IPC channel to the primary is the last thing keeping this process alive.
  process.disconnect?.();
}
