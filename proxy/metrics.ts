/**
 * The proxy's metrics, prefix `keyedge_proxy_`, kept per worker and summed by
 * the primary's admin port (prom-client AggregatorRegistry).
 *
 * Reload and certificate-expiry metrics are the primary's own (serving/expiry.ts).
 *
 * Labels are bounded by construction: results, TLS versions, status classes
 * and our own error codes come from fixed sets. Never an SNI name, Host,
 * certificate serial or client address: those belong in logs.
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, type Registry, collectDefaultMetrics, register } from 'prom-client';
import type { KeylessStats, KeyserverPoolStats } from './keyless/bridge.js';

/** Why the proxy closed an HTTP/2 connection (proxy/http2/sessions.ts). */
export const HTTP2_CLOSE_REASONS = ['reset_flood', 'protocol_error', 'idle', 'certificate', 'shutdown'] as const;

/** Why the proxy closed an HTTP/1.1 connection of its own accord (proxy/http/retire.ts). */
export const HTTP1_CLOSE_REASONS = ['certificate'] as const;

const PREFIX = 'keyedge_proxy_';

export class ProxyMetrics {
  readonly registry: Registry;

  readonly handshakes: Counter<'result' | 'tls_version' | 'resumed'>;
  readonly handshakeDuration: Histogram<'resumed'>;
  readonly ticketLookups: Counter<'key'>;
  readonly requests: Counter<'status_class' | 'code' | 'protocol'>;
  readonly originDuration: Histogram<'status_class'>;
  readonly openConnections: Gauge;
  readonly rejectedConnections: Counter<'reason'>;
  readonly http2StreamsPerSession: Histogram;
  readonly http2SessionsClosed: Counter<'reason'>;
  readonly http1ConnectionsClosed: Counter<'reason'>;
  readonly recordFloods: Counter;
  /** What keyedge_proxy_origin_resends_total reads at each scrape (`countOriginResends`): the worker's origin pools' count. */
  #originResends: () => number = () => 0;
  readonly #eventLoop: IntervalHistogram;
  /** Request counts kept as plain numbers on the request path and added to `requests` at each scrape (`requestTally`). */
  readonly #tallies: RequestTally[] = [];

  /**
   * `registry` defaults to prom-client's global one, which is what the
   * cluster aggregator collects from each worker.
   */
  constructor(keylessStats: () => KeylessStats, registry: Registry = register) {
    this.registry = registry;
    const registers = [registry];
    this.handshakes = new Counter({
      name: `${PREFIX}tls_handshakes_total`,
      help: 'TLS handshakes by result (ok, failed, unknown_name, timeout: no ClientHello within the deadline, plain_http: answered 400), negotiated version and whether a session was resumed.',
      labelNames: ['result', 'tls_version', 'resumed'] as const,
      registers,
    });
    this.handshakeDuration = new Histogram({
      name: `${PREFIX}tls_handshake_duration_seconds`,
      help: 'From TCP accept to the end of a successful TLS handshake.',
      labelNames: ['resumed'] as const,
      // 250 µs (a resumed handshake on loopback) to 5 s (a slow client on a lossy
      // link): below that the figure is noise, above it the client has gone.
      buckets: [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.ticketLookups = new Counter({
      name: `${PREFIX}tls_ticket_lookups_total`,
      help: 'Session tickets presented, by the key they name: newest, previous (still resumes, after a rotation) or unknown (a full handshake).',
      labelNames: ['key'] as const,
      registers,
    });
    this.requests = new Counter({
      name: `${PREFIX}http_requests_total`,
      help: 'HTTP requests answered, by status class (2xx…5xx), our own error code ("none" when the origin answered) and protocol (http/1.1, h2).',
      labelNames: ['status_class', 'code', 'protocol'] as const,
      registers,
      collect: () => this.#flushTallies(),
    });
    this.originDuration = new Histogram({
      name: `${PREFIX}origin_request_duration_seconds`,
      help: 'From sending a request to the origin to the end of its answer; for an Upgrade, to its 101 (or the end of its refusal).',
      labelNames: ['status_class'] as const,
      // 1 ms (an origin on the same host) to 60 s (a long download or a slow API).
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.openConnections = new Gauge({
      name: `${PREFIX}open_connections`,
      help: 'Client connections currently open, TLS and plain-HTTP ports alike.',
      registers,
    });
    this.rejectedConnections = new Counter({
      name: `${PREFIX}connections_rejected_total`,
      help: 'Client connections closed at accept, by reason: worker_limit (limits.maxConnectionsPerWorker), client_limit (limits.maxConnectionsPerClient).',
      labelNames: ['reason'] as const,
      registers,
    });
    // Both series exist from the start, so a rate over them starts at 0 rather than at the first refusal.
    for (const reason of ['worker_limit', 'client_limit'] as const) this.rejectedConnections.inc({ reason }, 0);
    this.http2StreamsPerSession = new Histogram({
      name: `${PREFIX}http2_streams_per_connection`,
      help: 'Streams (requests) an HTTP/2 connection carried, observed when it closes.',
      // One request (a curl) to thousands (a long-lived browser tab); past the reset bound a connection is cut.
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 1000, 10_000],
      registers,
    });
    this.http2SessionsClosed = new Counter({
      name: `${PREFIX}http2_connections_closed_total`,
      help: 'HTTP/2 connections the proxy closed, by reason: reset_flood (Rapid Reset or MadeYouReset: GOAWAY ENHANCE_YOUR_CALM), protocol_error (nghttp2 ended it: a frame flood or bad frame), idle, certificate (its certificate no longer covers a name it served), shutdown.',
      labelNames: ['reason'] as const,
      registers,
    });
    for (const reason of HTTP2_CLOSE_REASONS) this.http2SessionsClosed.inc({ reason }, 0);
    this.http1ConnectionsClosed = new Counter({
      name: `${PREFIX}http1_connections_closed_total`,
      help: 'HTTP/1.1 connections the proxy closed of its own accord, by reason: certificate (its certificate no longer covers a name it served: closed at once when idle, after the answer in progress otherwise).',
      labelNames: ['reason'] as const,
      registers,
    });
    for (const reason of HTTP1_CLOSE_REASONS) this.http1ConnectionsClosed.inc({ reason }, 0);
    this.recordFloods = new Counter({
      name: `${PREFIX}tls_record_floods_total`,
      help: 'TLS connections closed for sending records without application data past their credit (a KeyUpdate flood, RFC 8446 §4.6.3).',
      registers,
    });
    const originResends = (): number => this.#originResends();
    new Counter({
      name: `${PREFIX}origin_resends_total`,
      help: 'Requests without a body and with an idempotent method sent once more, on a new connection or the next free one, because their kept-alive origin connection closed under them before any byte of the answer (the keep-alive race); what the resend met is counted as any request.',
      registers,
      collect() {
        this.reset();
        this.inc(originResends());
      },
    });

    this.#eventLoop = monitorEventLoopDelay({ resolution: 10 });
    this.#eventLoop.enable();
    const eventLoop = this.#eventLoop;
    new Gauge({
      name: `${PREFIX}event_loop_delay_max_seconds`,
      help: 'Longest event-loop delay since the last scrape: a keyless RPC blocks the worker, so this shows the key server as seen by clients.',
      registers,
      collect() {
        this.set(eventLoop.max / 1e9);
        eventLoop.reset();
      },
    });
    const keylessFailureReasons = ['connect', 'timeout', 'remote', 'protocol', 'breaker'] as const;
    new Counter({
      name: `${PREFIX}keyless_signs_total`,
      help: 'Private-key operations sent to the key server and answered with a signature.',
      registers,
      collect() {
        this.reset();
        this.inc(keylessStats().signs);
      },
    });
    new Counter({
      name: `${PREFIX}keyless_failures_total`,
      help: 'Private-key operations that failed (each fails one handshake), by reason of the last attempt: connect, timeout, remote (key server refused), protocol, breaker (failed fast while every key server is down).',
      labelNames: ['reason'] as const,
      registers,
      collect() {
        const failures = keylessStats().failures;
        this.reset();
        for (const reason of keylessFailureReasons) this.inc({ reason }, failures[reason]);
      },
    });
    registerKeyserverPoolMetrics(registers, keylessStats);
    collectDefaultMetrics({ register: registry, prefix: PREFIX });
  }

  stop(): void {
    this.#eventLoop.disable();
  }

  /** `keyedge_proxy_origin_resends_total` reads `count` (a plain number the origin pools keep: nothing on the request path). */
  countOriginResends(count: () => number): void {
    this.#originResends = count;
  }

  /**
   * A cell of `requests` for one label set, counted with `tally.count++` on
   * the request path and added to the counter when it is scraped. prom-client
   * hashes and checks the label set on every `inc`, even through a child of
   * `labels()`: a few thousand instructions per request saved. Make one per
   * label set and keep it (the labels are bounded).
   */
  requestTally(statusClass: string, code: string, protocol: string): RequestTally {
    const tally = { labels: { status_class: statusClass, code, protocol }, count: 0 };
    this.#tallies.push(tally);
    return tally;
  }

  #flushTallies(): void {
    for (const tally of this.#tallies) {
      if (tally.count === 0) continue;
      this.requests.inc(tally.labels, tally.count);
      tally.count = 0;
    }
  }
}

/** See `ProxyMetrics.requestTally`. */
export interface RequestTally {
  readonly labels: Readonly<Record<'status_class' | 'code' | 'protocol', string>>;
  count: number;
}

/**
 * Per key server of the pool (label `server`: its configured name or index,
 * at most 16 values), from the bridge's counters.
 */
function registerKeyserverPoolMetrics(registers: Registry[], keylessStats: () => KeylessStats): void {
  const servers = () => keylessStats().servers ?? [];
  const counter = (name: string, help: string, value: (s: KeyserverPoolStats) => number): void => {
    new Counter({
      name: `${PREFIX}keyserver_${name}`,
      help,
      labelNames: ['server'] as const,
      registers,
      collect() {
        this.reset();
        for (const s of servers()) this.inc({ server: s.name }, value(s));
      },
    });
  };
  counter('signs_total', 'Signatures each key server returned.', (s) => s.signs);
  counter(
    'sign_seconds_total',
    'Time spent in the signatures each key server returned: divided by keyserver_signs_total, its mean latency.',
    (s) => s.signSeconds,
  );
  counter('failovers_total', 'Signs that failed on this key server and were retried on another within the handshake deadline.', (s) => s.failovers);
  counter('rejoins_total', 'Times a health check brought this key server back into the pool.', (s) => s.rejoins);
  new Counter({
    name: `${PREFIX}keyserver_failures_total`,
    help: 'Failed attempts on each key server, by reason (connect, timeout, remote, protocol); a failover may still have saved the handshake.',
    labelNames: ['server', 'reason'] as const,
    registers,
    collect() {
      this.reset();
      for (const s of servers())
        for (const reason of ['connect', 'timeout', 'remote', 'protocol'] as const) this.inc({ server: s.name, reason }, s.failures[reason]);
    },
  });
  new Gauge({
    name: `${PREFIX}keyserver_down`,
    help: 'Workers that have this key server out of their choice (summed over workers): breaker open after a failure, or down until a health check answers.',
    labelNames: ['server'] as const,
    registers,
    collect() {
      this.reset();
      for (const s of servers()) this.set({ server: s.name }, s.state === 'up' ? 0 : 1);
    },
  });
  new Gauge({
    name: `${PREFIX}keyserver_latency_ewma_seconds`,
    help: 'EWMA of each key server sign latency, what the choice compares (averaged over workers; 0 until measured).',
    labelNames: ['server'] as const,
    registers,
    aggregator: 'average',
    collect() {
      this.reset();
      for (const s of servers()) this.set({ server: s.name }, s.latencyEwmaMs / 1000);
    },
  });
}

/** What reached a worker's process-level handlers (uncaught.ts). */
export type UncaughtKind = 'uncaughtException' | 'unhandledRejection';

/**
 * `keyedge_proxy_uncaught_errors_total`, in `registry` (the global one, which
 * the cluster primary aggregates). Both kinds start at 0, so the series exist
 * before anything goes wrong: an alert on them needs no absent() guard.
 */
export function uncaughtErrorsCounter(registry: Registry = register): Counter<'kind'> {
  const counter = new Counter({
    name: `${PREFIX}uncaught_errors_total`,
    help: 'Exceptions and promise rejections nothing handled, in a worker (each one drains and replaces that worker): a bug, always worth a look.',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  for (const kind of ['uncaughtException', 'unhandledRejection'] satisfies UncaughtKind[]) counter.inc({ kind }, 0);
  return counter;
}

export function statusClass(status: number): string {
  return status >= 100 && status < 600 ? `${Math.floor(status / 100)}xx` : 'other';
}

/**
 * The fleet's store, in the primary's registry (only when `etcd` is set):
 * whether etcd answers (1) or the node serves its last good state (0), and the
 * etcd revision that state was read at: nodes of one fleet at different
 * revisions for long are not converging.
 */
export function registerFleetStoreMetrics(registry: Registry, health: () => { readonly up: boolean; readonly revision: number }): void {
  new Gauge({
    name: `${PREFIX}fleet_store_up`,
    help: "1 while the fleet's etcd answers; 0 while this node serves its last good state and refuses changes (degraded).",
    registers: [registry],
    collect() {
      this.set(health().up ? 1 : 0);
    },
  });
  new Gauge({
    name: `${PREFIX}fleet_store_revision`,
    help: 'The etcd revision of the fleet state this node holds; it only grows.',
    registers: [registry],
    collect() {
      this.set(health().revision);
    },
  });
}

/** The ACME problem types counted by name; any other is `other` (labels stay bounded whatever a CA sends). */
export const ACME_PROBLEMS = [
  'none',
  'badNonce',
  'rateLimited',
  'unauthorized',
  'connection',
  'dns',
  'serverInternal',
  'timeout',
  'malformed',
  'other',
] as const;

export interface AcmeMetrics {
  readonly orders: Counter<'result'>;
  readonly renewals: Counter<'result' | 'problem'>;
  readonly keysDeleted: Counter;
  readonly onDemand: Counter<'outcome' | 'reason'>;
}

/** The primary's ACME metrics (proxy/acme/): orders, renewal attempts by outcome, retired keys deleted, certificates failing now. */
export function registerAcmeMetrics(registry: Registry, failing: () => number): AcmeMetrics {
  const registers = [registry];
  new Gauge({
    name: `${PREFIX}acme_certificates_failing`,
    help: 'Managed certificates whose latest issuance or renewal attempt failed (they keep serving their current certificate).',
    registers,
    collect() {
      this.set(failing());
    },
  });
  return {
    orders: new Counter({
      name: `${PREFIX}acme_orders_total`,
      help: 'ACME orders sent to the CA, by result (ok, failed).',
      labelNames: ['result'] as const,
      registers,
    }),
    renewals: new Counter({
      name: `${PREFIX}acme_attempts_total`,
      help: 'Issuance and renewal attempts, by result (ok, failed) and ACME problem type of a failure (none, badNonce, rateLimited, unauthorized, connection, dns, serverInternal, timeout, malformed, other).',
      labelNames: ['result', 'problem'] as const,
      registers,
    }),
    keysDeleted: new Counter({
      name: `${PREFIX}acme_keys_deleted_total`,
      help: 'Previous certificate keys deleted from the token after their grace period.',
      registers,
    }),
    onDemand: new Counter({
      name: `${PREFIX}acme_on_demand_total`,
      help:
        'Names first seen in a handshake, by what on-demand issuance decided (ordered, refused, remembered: refused before, rate_limited, busy: too many checks at once or checks paused after a failed one, ignored); ' +
        'an ignored name by its reason (a name a CA refuses by policy: too_long, ip_address, numeric_tld, syntax, reserved_label, bad_idn, public_suffix, special_use, not_icann_tld, too_many_labels; managed; backoff: its last order failed and its retry wait is not over; checking; client_limit: its client over acme.onDemand.maxChecksPerClientPerMinute).',
      labelNames: ['outcome', 'reason'] as const,
      registers,
    }),
  };
}
