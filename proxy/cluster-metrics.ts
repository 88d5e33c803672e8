/**
 * The cluster's `/metrics`: every worker's registry summed in the primary,
 * with counters that never go down while the primary runs.
 *
 * prom-client's AggregatorRegistry.clusterMetrics() sums the workers alive at
 * scrape time, so a worker's death took its counts out of the sums and
 * Prometheus read the drop as a counter reset (and a scrape that asked a
 * worker as it died failed after 5 s). Here the primary keeps, per worker,
 * its last counters and histograms (histogram buckets, sums and counts are
 * counters too): polled every POLL_MS, refreshed by every scrape, and sent by
 * the worker itself as it exits (`sendFinalMetrics`). When a worker exits, that
 * last snapshot is folded into a "retired" set that every later scrape adds to
 * the live workers' sums. A dead worker's gauges are dropped: they described
 * a process that is gone.
 *
 * A worker killed outright (SIGKILL, OOM) loses what it counted since its last
 * snapshot: at most POLL_MS. Polls read counters and histograms only, so a
 * gauge that resets on collection (the event-loop delay max "since the last
 * scrape") still means since the last scrape.
 *
 * Messages (IPC, in order per worker): primary → worker `keyedge:metrics-request`
 * { full }; worker → primary `keyedge:metrics` { full, metrics } and, on the way
 * out, `keyedge:metrics-final` { metrics }.
 */
import type { Worker } from 'node:cluster';
import * as promClient from 'prom-client';
import { AggregatorRegistry, Counter, Histogram, type MetricObjectWithValues, type MetricValue, type Registry, register } from 'prom-client';

/** prom-client's aggregators by name (exported at run time, not in its typings): what AggregatorRegistry.aggregate looks up. */
const AGGREGATORS = (promClient as unknown as { readonly aggregators: Readonly<Record<string, unknown>> }).aggregators;

/** How often the primary asks every worker for its counters: the most a SIGKILLed worker can lose. */
const POLL_MS = 5_000;
/** A scrape waits this long for a worker; one that does not answer is summed from its last snapshot. */
const SCRAPE_WAIT_MS = 2_000;

const REQUEST = 'keyedge:metrics-request';
const SNAPSHOT = 'keyedge:metrics';
const FINAL = 'keyedge:metrics-final';

type Metrics = MetricObjectWithValues<MetricValue<string>>[];

interface SnapshotMessage {
  readonly type: typeof SNAPSHOT | typeof FINAL;
  readonly full?: boolean;
  readonly metrics: Metrics;
}

/**
 * A snapshot whose every metric has a name, a type, a known aggregator and values with a number each: one that did not (a null in the
 * array, `values` not an array) threw in the primary's message handler, or at the worker's exit, and ended the proxy.
 */
function isSnapshot(message: unknown): message is SnapshotMessage {
  const type = typeof message === 'object' && message !== null ? (message as { type?: unknown }).type : undefined;
  const metrics = (message as { metrics?: unknown } | undefined)?.metrics;
  return (type === SNAPSHOT || type === FINAL) && Array.isArray(metrics) && metrics.every(isMetric);
}

/**
 * A metric with an `aggregator` prom-client has: one without it, or with another, made AggregatorRegistry.aggregate
 * throw at every scrape (500), and for good once the worker's exit had folded it into the retired set.
 */
function isMetric(metric: unknown): boolean {
  if (typeof metric !== 'object' || metric === null) return false;
  const { name, type, values, aggregator } = metric as { name?: unknown; type?: unknown; values?: unknown; aggregator?: unknown };
  return (
    typeof name === 'string' &&
    typeof type === 'string' &&
    typeof aggregator === 'string' &&
    Object.hasOwn(AGGREGATORS, aggregator) &&
    typeof AGGREGATORS[aggregator] === 'function' &&
    Array.isArray(values) &&
    values.every((v: unknown) => {
      const { value, labels } = (typeof v === 'object' && v !== null ? v : {}) as { value?: unknown; labels?: unknown };
      return typeof value === 'number' && typeof labels === 'object' && labels !== null;
    })
  );
}

function isCounting(metric: { type: unknown }): boolean {
  return String(metric.type) === 'counter' || String(metric.type) === 'histogram';
}

interface WorkerMetrics {
  /** Counters and histograms of the latest snapshot (full or poll): what is kept when the worker dies. */
  counting: Metrics;
  /** The latest full snapshot, gauges included. */
  full: Metrics | undefined;
  readonly waiting: Set<() => void>;
}

/** In the primary: tracks each worker's snapshots and sums them with the retired workers' counts. */
export class ClusterMetrics {
  readonly contentType = register.contentType;
  readonly #workers = new Map<Worker, WorkerMetrics>();
  /** Metric name → series key → the summed value of every dead worker's last snapshot. */
  readonly #retired = new Map<string, { meta: Omit<Metrics[number], 'values'>; values: Map<string, MetricValue<string>> }>();
  readonly #poll: NodeJS.Timeout;
  #scrape: Promise<string> | undefined;

  constructor(private readonly primary: Registry) {
    this.#poll = setInterval(() => {
      for (const worker of this.#workers.keys()) ask(worker, false);
    }, POLL_MS);
    this.#poll.unref();
  }

  /**
   * Starts tracking a forked worker. Its last counts are folded into the
   * retired set once it has exited and its IPC channel has closed: 'exit' can
   * come before the last messages (its final snapshot) are read, the channel's
   * end never does.
   */
  track(worker: Worker): void {
    const entry: WorkerMetrics = { counting: [], full: undefined, waiting: new Set() };
    this.#workers.set(worker, entry);
    const wakeAll = (): void => {
      for (const wake of entry.waiting) wake();
      entry.waiting.clear();
    };
    worker.on('message', (message: unknown) => {
      if (!isSnapshot(message)) return;
      entry.counting = message.metrics.filter(isCounting);
      // A scrape waits for a full answer: a poll's answer has no gauges.
      if (message.full === true) {
        entry.full = message.metrics;
        wakeAll();
      }
    });
    const retire = (): void => {
      if (!this.#workers.has(worker) || worker.isConnected() || !worker.isDead()) return;
      this.#workers.delete(worker);
      this.#retire(entry.counting);
    };
    worker.once('exit', () => {
      wakeAll();
      retire();
    });
    worker.once('disconnect', retire);
  }

  /**
   * Prometheus text: live workers (asked now) + retired counts, then the primary's own registry. Scrapes that come
   * while one asks the workers share its answer: 100 at once asked every worker for its whole registry 100 times.
   */
  metrics(): Promise<string> {
    this.#scrape ??= this.#collect().finally(() => (this.#scrape = undefined));
    return this.#scrape;
  }

  async #collect(): Promise<string> {
    const live = [...this.#workers];
    await Promise.all(
      live.map(
        ([worker, entry]) =>
          new Promise<void>((resolve) => {
            const wake = (): void => {
              clearTimeout(timer);
              resolve();
            };
            // A worker that never answers (its event loop blocked) kept every scrape's waiter for as long as it lived.
            const timer = setTimeout(() => {
              entry.waiting.delete(wake);
              resolve();
            }, SCRAPE_WAIT_MS);
            entry.waiting.add(wake);
            ask(worker, true);
          }),
      ),
    );
    // A worker that died while asked is retired by now: summing its snapshot too would count it twice.
    const snapshots = live.filter(([worker]) => this.#workers.has(worker)).map(([, entry]) => entry.full ?? entry.counting);
    const summed = AggregatorRegistry.aggregate([this.#retiredMetrics(), ...snapshots]);
    return `${await summed.metrics()}\n${await this.primary.metrics()}`;
  }

  stop(): void {
    clearInterval(this.#poll);
  }

  #retire(metrics: Metrics): void {
    for (const metric of metrics) {
      let kept = this.#retired.get(metric.name);
      if (kept === undefined) {
        const { values: _values, ...meta } = metric;
        kept = { meta, values: new Map() };
        this.#retired.set(metric.name, kept);
      }
      for (const value of metric.values) {
        const key = seriesKey(value);
        const sum = kept.values.get(key);
        kept.values.set(key, { ...value, value: (sum?.value ?? 0) + value.value });
      }
    }
  }

  #retiredMetrics(): Metrics {
    return [...this.#retired.values()].map(({ meta, values }) => ({ ...meta, values: [...values.values()] }));
  }
}

function ask(worker: Worker, full: boolean): void {
  sendToWorker(worker, { type: REQUEST, full });
}

/**
 * Sends `message` to `worker` if its IPC channel is still open. A worker that
 * has disconnected but not yet exited is still listed in cluster.workers, and
 * a send to it emits 'error' on the Worker, which nothing listens to: an
 * uncaught exception in the primary. The callback takes any send error.
 */
export function sendToWorker(worker: Worker, message: object): void {
  if (worker.isConnected()) worker.send(message, () => undefined);
}

function seriesKey(value: MetricValue<string>): string {
  const labels = value.labels as Record<string, string | number | undefined>;
  const name = (value as { metricName?: string }).metricName ?? '';
  return `${name}{${Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`)
    .join(',')}}`;
}

/** In a worker: answers the primary's requests from `registry` (prom-client's global one by default). */
export function serveWorkerMetrics(registry: Registry = register): void {
  process.on('message', (message: unknown) => {
    if (typeof message !== 'object' || message === null || (message as { type?: unknown }).type !== REQUEST) return;
    const full = (message as { full?: unknown }).full === true;
    void snapshot(registry, full).then(
      (metrics) => process.connected && process.send?.({ type: SNAPSHOT, full, metrics } satisfies SnapshotMessage, () => undefined),
      () => undefined,
    );
  });
}

/**
 * In a worker about to exit (graceful stop, or after an uncaught exception):
 * sends its counters and histograms to the primary, so what it counted since
 * the last poll survives in the cluster's sums. Resolves once the message is
 * handed to the IPC channel, or after a second at most; never rejects.
 */
export function sendFinalMetrics(registry: Registry = register): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected || process.send === undefined) return resolve();
    const timer = setTimeout(resolve, 1000);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    snapshot(registry, false).then((metrics) => {
      if (!process.connected) return done();
      process.send!({ type: FINAL, metrics } satisfies SnapshotMessage, () => done());
    }, done);
  });
}

/** Everything (full), or counters and histograms only: a gauge's collect() may reset what it measures. */
async function snapshot(registry: Registry, full: boolean): Promise<Metrics> {
  if (full) return (await registry.getMetricsAsJSON()) as Metrics;
  const counting = registry.getMetricsAsArray().filter((m) => m instanceof Counter || m instanceof Histogram);
  return (await Promise.all(counting.map((m) => (m as Counter).get()))) as Metrics;
}
