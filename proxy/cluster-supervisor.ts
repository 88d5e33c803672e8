/**
 * The primary's supervision of its workers (cluster.ts): it forks them, knows
 * which are ready, and replaces the ones that die, hang in their start, or
 * stop answering once serving. What a worker says beyond its readiness and a
 * failed start goes to the primary's other parts through `onMessage`; each
 * death through `onGone`, before its replacement is forked.
 *
 * Replacements are paced: after a death within CRASH_LOOP_MS of its start, or
 * before the worker served at all, the pause doubles with each such death in a
 * row, so a crash loop leaves the serving workers their CPU; a fork the system
 * refuses (EAGAIN, ENOMEM) counts as such a death. While no worker serves and
 * not every first worker has been ready once, a worker that cannot start (a
 * port in use, the bridge not built) ends the proxy with its error through
 * `failStart`: replacing it would fail the same way, for ever; so do
 * FAILED_STARTS failed starts in a row while no worker has served yet. One
 * that cannot start while another serves is replaced like any other death
 * (nginx's master does the same): the serving ones go on.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Counter } from 'prom-client';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import type { Logger } from '../keyserver/shared/log.js';
import { isMessage, isStartFailedMessage, READY } from './cluster-messages.js';
import type { ClusterMetrics } from './cluster-metrics.js';
import { removeWorkerConfig, workerConfigEnv } from './cluster-worker-config.js';

/** A worker that dies sooner than this after starting is restarted after a pause, not at once. */
const CRASH_LOOP_MS = 5_000;
/** The pause doubles with each such death in a row, from 1 s up to this: a crash loop costs the serving workers little CPU. */
const MAX_RESTART_PAUSE_MS = 30_000;
/**
 * How often the serving workers' silence is judged: a serving worker that sent nothing for `workerSilentTimeoutMs`,
 * not even its answers to the metrics polls (every 5 s, cluster-metrics.ts), has a blocked event loop: it is killed
 * and replaced (`applyAllowanceMs` more during a reload).
 */
const WATCH_MS = 5_000;
/**
 * Starts in a row that ended before the worker served (it died, or hung past `workerStartTimeoutMs`) while no worker
 * has served yet: the proxy then stops with an error instead of starting them again for ever.
 */
const FAILED_STARTS = 3;

export interface SupervisorParts {
  readonly config: ProxyConfig;
  /** What a worker forked now runs on: the running configuration (serving/source.ts), not the file as saved since. */
  readonly runningConfig: () => ProxyConfig;
  readonly log: Logger;
  readonly metrics: ClusterMetrics;
  readonly restarts: Counter;
  /** Every message of a worker other than its readiness and a failed start. */
  readonly onMessage: (worker: Worker, message: unknown) => void;
  /** A worker died (or was killed): forget it. Called before a replacement is forked, and while stopping too. */
  readonly onGone: (worker: Worker) => void;
  /** Whether a reload is being applied to the worker: building its contexts may hold its loop this much longer. */
  readonly applying: (worker: Worker) => boolean;
  readonly applyAllowanceMs: number;
}

export class WorkerSupervisor {
  /** Workers that said they serve. */
  readonly ready = new Set<Worker>();
  /** Once set, the start is over for good: a start failure ends it. */
  failStart: ((err: KeyedgeError) => void) | undefined;
  #stopping = false;
  #allStarted = false;
  #everReady = false;
  #quickDeaths = 0;
  #failedStarts = 0;
  readonly #started = new Map<Worker, number>();
  /** When each worker last sent anything (the metrics polls make a live one answer every few seconds). */
  readonly #heardAt = new Map<Worker, number>();
  readonly #startTimedOut = new Set<Worker>();
  readonly #watchdog: NodeJS.Timeout;
  private readonly parts: SupervisorParts;

  constructor(parts: SupervisorParts) {
    this.parts = parts;
    cluster.on('exit', (worker, code, signal) => this.#exited(worker, code, signal));
    let watchedAt = Date.now();
    this.#watchdog = setInterval(() => {
      const now = Date.now();
      // A primary held up itself (a long synchronous validation) has not read its workers' messages yet: judged next time.
      const held = now - watchedAt > 2 * WATCH_MS;
      watchedAt = now;
      if (!held) this.#killSilent(now);
    }, WATCH_MS);
    this.#watchdog.unref();
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  /** Every worker not yet gone. */
  workers(): Worker[] {
    return Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
  }

  fork(): void {
    let worker: Worker;
    const env = workerConfigEnv(this.parts.runningConfig(), (message) => this.parts.log.warn(message));
    try {
      worker = cluster.fork(env);
    } catch (err) {
      removeWorkerConfig(env);
      // A fork the system refuses at once (ENOMEM, ENOTDIR) throws here: out of the 'exit' handler or the pause's timer
      // that called it, an uncaught exception that stopped the whole proxy. Judged a turn later, when a first fork's
      // start failure can already end the start (failStart is set once the first workers are forked).
      setImmediate(() => this.#notForked(err as NodeJS.ErrnoException));
      return;
    }
    // A fork refused later (EAGAIN at a pids cgroup's limit, systemd's TasksMax; ENOENT) is said by 'error' on the
    // worker, never by 'exit': unheard, an uncaught exception that stopped the whole proxy, and heard only, a worker
    // never replaced. Any other 'error' (a signal it could not be sent) is no reason to stop anything.
    worker.on('error', (err: NodeJS.ErrnoException) => {
      if (worker.process.pid === undefined) {
        removeWorkerConfig(env);
        this.#notForked(err, worker);
      } else this.parts.log.warn({ worker: worker.id, pid: worker.process.pid, code: err.code, reason: err.message }, 'proxy worker process error');
    });
    // The worker removes its configuration's file once read; one that died before is the primary's to remove.
    worker.once('exit', () => removeWorkerConfig(env));
    this.#started.set(worker, Date.now());
    this.#watchStart(worker);
    this.parts.metrics.track(worker);
    worker.on('message', (message: unknown) => {
      this.#heardAt.set(worker, Date.now());
      if (isMessage(message, READY.type)) {
        this.ready.add(worker);
        this.#everReady = true;
        if (this.ready.size >= this.parts.config.workers) this.#allStarted = true;
      } else if (isStartFailedMessage(message)) {
        // While no worker serves, a failed start ends the proxy with its reason (a port in use, the bridge not built:
        // every worker would fail the same way), and nothing is in flight. Once one serves, the failed one is replaced
        // after the crash-loop pause, as nginx's master replaces a worker: ending the proxy cut the serving worker's
        // requests in flight (the primary exits a second after a failed start, and its workers with it).
        if (!this.#allStarted && this.ready.size === 0) this.failStart?.(new KeyedgeError(message.code, `proxy worker could not start: ${message.message}`));
        else
          this.parts.log.error(
            { worker: worker.id, code: message.code, reason: message.message },
            this.#allStarted ? 'a replacement proxy worker could not start' : 'a proxy worker could not start; another serves, so it is replaced',
          );
      } else this.parts.onMessage(worker, message);
    });
  }

  /** No more replacements or kills: the proxy stops. */
  stop(): void {
    this.#stopping = true;
    clearInterval(this.#watchdog);
  }

  /**
   * A worker whose event loop is blocked (a hot loop, a hang in native code) answers nothing and holds its connections
   * for ever; the kernel gives new ones to the others, so nothing else would notice. It is killed and replaced.
   */
  #killSilent(now: number): void {
    for (const worker of this.ready) {
      const silentMs = now - (this.#heardAt.get(worker) ?? now);
      // Building a large reload's contexts holds a worker's loop: while one is applied to it, it has that long more.
      if (silentMs < this.parts.config.workerSilentTimeoutMs + (this.parts.applying(worker) ? this.parts.applyAllowanceMs : 0) || worker.isDead()) continue;
      this.parts.log.error({ worker: worker.id, pid: worker.process.pid, silentMs }, 'proxy worker unresponsive (its event loop is blocked); killing it');
      worker.process.kill('SIGKILL');
    }
  }

  /**
   * A worker that hangs in its start (before it listens for messages, or while it loads its state) sends nothing and
   * is not ready, which the silence watchdog does not judge: it is killed after workerStartTimeoutMs.
   */
  #watchStart(worker: Worker): void {
    const { config, log } = this.parts;
    let due = Date.now() + config.workerStartTimeoutMs;
    const check = (): void => {
      if (this.#stopping || worker.isDead() || this.ready.has(worker)) return;
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
      this.#startTimedOut.add(worker);
      worker.process.kill('SIGKILL');
    };
    let timer = setTimeout(check, config.workerStartTimeoutMs).unref();
    worker.once('exit', () => clearTimeout(timer));
  }

  #exited(worker: Worker, code: number, signal: string): void {
    const { config, log } = this.parts;
    const lived = Date.now() - (this.#started.get(worker) ?? 0);
    const wasReady = this.ready.has(worker);
    const timedOut = this.#startTimedOut.delete(worker);
    this.#forget(worker);
    if (this.#stopping) return;
    const last = timedOut ? `not ready within ${config.workerStartTimeoutMs} ms` : `exited (${signal ?? code}) before it served`;
    this.#replace(lived, wasReady, last, (pauseMs) =>
      log.error(
        { worker: worker.id, pid: worker.process.pid, code, signal, livedMs: lived, restartInMs: pauseMs },
        'proxy worker died; starting a replacement',
      ),
    );
  }

  /** A fork the system refused (`worker`: one node:cluster made before the refusal came): a start that failed at once. */
  #notForked(err: NodeJS.ErrnoException, worker?: Worker): void {
    if (worker !== undefined) this.#forget(worker);
    if (this.#stopping) return;
    this.#replace(0, false, `could not be forked (${err.code ?? err.message})`, (pauseMs) =>
      this.parts.log.error({ worker: worker?.id, code: err.code, reason: err.message, restartInMs: pauseMs }, 'proxy worker could not be forked; trying again'),
    );
  }

  #forget(worker: Worker): void {
    this.#started.delete(worker);
    this.#heardAt.delete(worker);
    this.ready.delete(worker);
    this.parts.onGone(worker);
  }

  /** Counts a worker lost after `lived` ms, and forks its replacement after the crash-loop pause, which `report` is told. */
  #replace(lived: number, wasReady: boolean, last: string, report: (pauseMs: number) => void): void {
    this.parts.restarts.inc();
    // One that died before it served failed its start, however long that took.
    this.#quickDeaths = lived < CRASH_LOOP_MS || !wasReady ? this.#quickDeaths + 1 : 0;
    if (!wasReady && !this.#everReady && ++this.#failedStarts >= FAILED_STARTS) {
      return this.failStart?.(
        new KeyedgeError('KEYEDGE_ERR_SETUP', `no proxy worker became ready: ${this.#failedStarts} starts in a row failed, the last one ${last}`),
      );
    }
    // A fixed 1 s pause had a worker that dies at start (a bad host, a bug in its start) re-forked, and its whole state
    // loaded again, every second for ever, on the cores the serving workers need.
    const pauseMs = this.#quickDeaths === 0 ? 0 : Math.min(1000 * 2 ** (this.#quickDeaths - 1), MAX_RESTART_PAUSE_MS);
    report(pauseMs);
    if (pauseMs > 0) setTimeout(() => !this.#stopping && this.fork(), pauseMs).unref();
    else this.fork();
  }
}
