/**
 * One worker of `keyedge proxy` (node:cluster): it asks the primary
 * (cluster.ts) for the ticket keys and its serving state, serves them
 * (worker.ts), applies each reload the primary sends, and stops on the
 * primary's word or its own SIGTERM, or drains after an uncaught error or the
 * loss of its primary (cluster-primary-gone.ts). The messages are
 * cluster-messages.ts's.
 */
import assert from 'node:assert/strict';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import { keepInspectorClosed } from '../keyserver/shared/inspector-signal.js';
import type { Logger } from '../keyserver/shared/log.js';
import { boardAppliedMessage, ChallengeAnswers, isBoardMessage } from './acme/challenges.js';
import {
  APPLIED,
  APPLY,
  type AppliedMessage,
  isMessage,
  isShutdownMessage,
  PACK_OPENED,
  READY,
  SERVE,
  START_FAILED,
  type StartFailedMessage,
  TICKET_KEYS_APPLIED,
  WANT_TICKET_KEY,
} from './cluster-messages.js';
import { sendFinalMetrics, serveWorkerMetrics } from './cluster-metrics.js';
import { watchPrimary } from './cluster-primary-gone.js';
import { uncaughtErrorsCounter } from './metrics.js';
import { isPackedDelta, type PackedDelta, readPack, type WireDelta } from './serving/pack.js';
import type { ServingDelta } from './serving/spec.js';
import { decodeTicketKeys, isTicketKeyMessage } from './tls/tickets.js';
import { installUncaughtHandlers, UNCAUGHT_EXIT_CODE } from './uncaught.js';
import { type RunningWorker, startProxyWorker, type WorkerOptions } from './worker.js';

/**
 * Runs one worker: waits for the primary's ticket key and serving state,
 * serves, applies each reload the primary sends, stops on the primary's word
 * or SIGTERM, or drains after an uncaught error (and exits non-zero).
 * `options.keySource`: as WorkerOptions (embedding, benchmarks); `keyedge proxy` passes none.
 */
export async function runWorker(config: ProxyConfig, log: Logger, options: Pick<WorkerOptions, 'keySource'> = {}): Promise<void> {
  // From the start, not once serving: a signal to the whole process group (a terminal's ^C or hangup) ends a worker
  // by default. The primary relays SIGINT as a message; SIGHUP goes to the primary, which reloads for every worker;
  // SIGUSR2 (HAProxy's reload) the primary says it ignores.
  process.on('SIGINT', () => undefined);
  process.on('SIGHUP', () => undefined);
  process.on('SIGUSR2', () => undefined);
  // Nor does SIGUSR1 open the inspector here, which would run any local user's code beside the keyless bridge and the
  // ticket keys (keyserver/shared/inspector-signal.ts); said, as the primary says it.
  keepInspectorClosed(() => log.warn('SIGUSR1 ignored: the proxy opens no inspector (any local user could connect to it and run code in the process)'));
  // Answers the primary's metrics requests with this process's global registry.
  serveWorkerMetrics();
  // Deltas that arrive while the worker starts are applied, in order, once it listens.
  const early: ServingDelta[] = [];
  let worker: RunningWorker | undefined;
  let stop: (() => void) | undefined;
  let stopEarly = false;
  let ticketKeys: Buffer[] | undefined;
  let status = 0;
  const challenges = new ChallengeAnswers();
  // An error nothing handled is counted, logged, and drains this worker (uncaught.ts); before it serves, nothing is in flight.
  installUncaughtHandlers({
    log,
    counter: uncaughtErrorsCounter(),
    consequence: 'this worker drains and exits; the primary starts a replacement',
    drain: () => {
      status = UNCAUGHT_EXIT_CODE;
      if (stop === undefined) process.exit(status);
      else stop();
    },
    deadlineMs: config.shutdownGraceMs + 5_000,
  });
  // A primary gone unasked (SIGKILL, the OOM killer) ended this worker at once (node:cluster's exit on the IPC
  // channel's loss), cutting every request in flight: it drains instead, as on SIGTERM (cluster-primary-gone.ts).
  const primary = watchPrimary(
    log,
    config.shutdownGraceMs + 5_000,
    () => status,
    () => {
      if (stop === undefined) process.exit(status);
      else stop();
    },
  );
  const applyNow = (delta: ServingDelta): void => {
    assert(worker !== undefined);
    try {
      worker.apply(delta);
      process.send?.({ type: APPLIED, generation: delta.generation } satisfies AppliedMessage);
    } catch (err) {
      log.error({ generation: delta.generation, err }, 'reload could not be applied in this worker; the previous state keeps serving until it is replaced');
      process.send?.({ type: APPLIED, generation: delta.generation, error: (err as Error).message } satisfies AppliedMessage);
    }
  };
  const initial = new Promise<ServingDelta>((resolve) => {
    process.on('message', (message: unknown) => {
      if (isTicketKeyMessage(message)) {
        ticketKeys = decodeTicketKeys(message);
        worker?.setTicketKeys(ticketKeys);
        process.send?.({ type: TICKET_KEYS_APPLIED, generation: message.generation });
      } else if (isBoardMessage(message)) {
        challenges.apply(message);
        process.send?.(boardAppliedMessage(message.generation));
      } else if (isMessage(message, SERVE)) resolve(received(message as WireDelta));
      else if (isMessage(message, APPLY)) {
        const delta = received(message as WireDelta);
        if (worker === undefined) early.push(delta);
        else applyNow(delta);
      } else if (isShutdownMessage(message)) {
        // Told to stop while still starting: stop as soon as it listens.
        if (stop === undefined) stopEarly = true;
        else stop();
      }
    });
    process.send?.(WANT_TICKET_KEY);
  });
  const delta = await initial;
  assert(ticketKeys !== undefined, 'the primary sends the ticket keys before the serving state');
  try {
    worker = await startProxyWorker(config, { log, ticketKeys, initial: delta, challenges, ...options });
  } catch (err) {
    const code = err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_SETUP';
    process.send?.({ type: START_FAILED, code, message: (err as Error).message } satisfies StartFailedMessage);
    throw err;
  }
  for (const pending of early.splice(0)) applyNow(pending);
  process.send?.(READY);
  const running = worker;
  await new Promise<void>((resolve) => {
    stop = (): void => void running.close().then(resolve);
    if (stopEarly) stop();
    // The primary relays SIGTERM as a message; a worker signalled directly stops the same way.
    // Every one: a second SIGTERM's default action cut this worker's requests in flight (close() is idempotent).
    process.on('SIGTERM', stop);
  });
  // What this worker counted since the primary's last poll stays in the cluster's sums.
  await sendFinalMetrics();
  // node:cluster exits a worker with 0 when it disconnects: a drained one exits with its own status. One whose primary
  // is gone has no channel left to close.
  if (status !== 0 || primary.gone()) process.exit(status);
  // The IPC channel to the primary is the last thing keeping this process alive.
  primary.leaving();
  process.disconnect?.();
}

/** The delta of a SERVE or APPLY message, read from its pack at once when it came as one (and the primary told). */
function received(message: WireDelta): ServingDelta {
  if (!('packed' in message)) return message.delta;
  const packed: PackedDelta = message.packed;
  assert(isPackedDelta(packed), 'a packed delta names its file');
  try {
    return readPack(packed);
  } finally {
    process.send?.({ type: PACK_OPENED, file: packed.file });
  }
}
