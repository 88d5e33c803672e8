/**
 * The key server's metrics: one Registry, prefix `keyedge_keyserver_`.
 *
 * Labels are bounded by construction: op and algorithm come from the protocol's
 * fixed tables, result from its error-code names, transport is unix|tls,
 * reason from DROP_REASONS (connections) or closed|deadline (signs), result
 * opened|failed (token reopens), algorithm the RSA ones (signatures refused). Key
 * ids, client names and peer addresses are never labels (per-key usage goes to
 * the periodic log line instead).
 *
 * Signs answered ok (nearly every request) are recorded by `signed()` as plain
 * numbers and handed to `requests` and `signDuration` in one pass at each
 * scrape (prom-client's `collect`), or once SIGN_BATCH of one algorithm are
 * held: a sign arrives alone every couple of milliseconds, with the caches cold
 * from whatever ran in between, and prom-client's label handling per call
 * (validate, hash the labels, look up the series, key the bucket by its bound
 * as a string) measured 10-12 µs of key-server CPU per sign there, against
 * about 1 µs per observation in a batch (bench/results/2026-12-05-keyless-hop.md).
 * What a scrape shows is the same either way.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { ALGORITHMS, type AlgorithmInfo } from '../protocol/constants.js';

const PREFIX = 'keyedge_keyserver_';

/** Why the key server closed a connection on its own (README, "Metrics"). */
export const DROP_REASONS = [
  'frame_timeout',
  'evicted_client_cap',
  'evicted_connection_cap',
  'refused_client_cap',
  'refused_connection_cap',
  'evicted_handshake',
  'tls_listener_full',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/**
 * How often the event-loop lag metrics (`..._eventloop_lag_*`) sample the loop.
 * prom-client's 10 ms is a timer firing 100 times a second: on an idle key
 * server that wake-up was its only work (3-4 ms of CPU a second), and between
 * signs at handshake rates it is an extra wake-up with cold caches each time
 * (bench/results/2026-12-05-keyless-hop.md). At 100 ms a stall of 100 ms or
 * more is still always seen, a shorter one in proportion to its length.
 */
const EVENT_LOOP_SAMPLE_MS = 100;

/** The open token's state, read at each scrape (live-token.ts: none while it is not open). */
export interface TokenGauges {
  /** Keys that can sign now. */
  keys(): number;
  /** Signing threads loaded and taking jobs. */
  threadsUp(): number;
}

/** Signs of one algorithm held by `signed()` before they are handed over: 4 KiB of durations each, at most 9 algorithms. */
const SIGN_BATCH = 512;

/** Signs answered ok with one algorithm since the last hand-over, and the series they go to. */
interface HeldSigns {
  count: number;
  readonly seconds: Float64Array;
  readonly requests: { inc(value: number): void };
  readonly duration: { observe(seconds: number): void };
}

export class KeyserverMetrics {
  readonly registry = new Registry();
  /** By algorithm byte; an entry is made at an algorithm's first sign. */
  readonly #held: (HeldSigns | undefined)[] = [];

  readonly requests = new Counter({
    name: `${PREFIX}requests_total`,
    help: 'Requests answered, by operation, algorithm (sign only, else "none") and result ("ok" or the wire error name).',
    labelNames: ['op', 'algorithm', 'result'] as const,
    registers: [this.registry],
    collect: () => this.#handOverSigns(),
  });

  readonly signDuration = new Histogram({
    name: `${PREFIX}sign_duration_seconds`,
    help: 'Time from a sign request being decoded to its answer being queued, including the wait for a token session.',
    labelNames: ['algorithm'] as const,
    // 100 µs (a SoftHSM2 ECDSA sign on an idle core) to 2 s (an RSA-4096 sign on a
    // busy network HSM): the range a deadline of a few seconds can see.
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2],
    registers: [this.registry],
    collect: () => this.#handOverSigns(),
  });

  readonly inFlight = new Gauge({
    name: `${PREFIX}in_flight_requests`,
    help: 'Requests received and not yet answered, over all connections.',
    registers: [this.registry],
  });

  readonly connections = new Gauge({
    name: `${PREFIX}connections`,
    help: 'Open client connections, by transport.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });

  readonly connectionsDropped = new Counter<'reason'>({
    name: `${PREFIX}connections_dropped_total`,
    help:
      'Connections the key server closed on its own, by reason: a frame incomplete past limits.frameTimeoutMs, ' +
      'evicted or refused at the per-client or overall connection cap, a TLS handshake closed for a newer one past ' +
      'limits.maxConnections pending, or dropped by a full TLS listener.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly authzRefusals = new Counter({
    name: `${PREFIX}authorization_refusals_total`,
    help: 'Requests refused because the client may not use the key (each also has an audit log line), by transport.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });

  readonly tlsHandshakeFailures = new Counter({
    name: `${PREFIX}tls_client_rejections_total`,
    help: 'Mutual-TLS connections refused before any request (no client certificate, wrong CA, bad handshake).',
    registers: [this.registry],
  });

  /** What the keys and signing-threads gauges read at each scrape; `watchToken()` sets where from. */
  #token: TokenGauges = { keys: () => 0, threadsUp: () => 0 };

  readonly keys: Gauge = new Gauge({
    name: `${PREFIX}keys`,
    help:
      'Signing keys the key server can sign with now: those found in the token at its last scan, ' +
      'and 0 while the token is not open (being opened again, or it cannot be: signs are refused SIGN_FAILED).',
    registers: [this.registry],
    // Read at the scrape from the token open now: a count kept from a token closed since would say keys sign when none can.
    collect: (): void => this.keys.set(this.#token.keys()),
  });

  readonly signsDropped = new Counter<'reason'>({
    name: `${PREFIX}signs_dropped_total`,
    help:
      'Signs dropped unsigned while they waited to be sent to a signing thread, by reason: their connection closed ' +
      '(closed), or their deadline passed (deadline; answered DEADLINE_EXCEEDED).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly signaturesRefused = new Counter<'algorithm'>({
    name: `${PREFIX}signatures_refused_total`,
    help:
      "RSA signatures the token gave back that did not verify with the key's public key (a faulty token or HSM), by algorithm: " +
      'not sent (a wrong RSA-CRT signature gives the key away), the request answered SIGN_FAILED; logged at error level per key, rate-limited.',
    labelNames: ['algorithm'] as const,
    registers: [this.registry],
  });

  readonly tokenReopens = new Counter<'result'>({
    name: `${PREFIX}token_reopens_total`,
    help:
      'Attempts to open the token again while the key server runs (it was re-created, removed or its sessions lost), by result: ' +
      'opened, or failed (the token is not there or refuses the login; tried again every second, signs are refused SIGN_FAILED meanwhile).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly signThreadsUp: Gauge = new Gauge({
    name: `${PREFIX}sign_threads_up`,
    help:
      'Signing threads loaded and taking jobs; below pkcs11.sessions (or the token session limit less two), threads are failing and ' +
      'restarting (each failure is logged), and signs fall back to the other threads or the event loop.',
    registers: [this.registry],
    // Read at the scrape, not pushed on each change: a thread's state is one field, and a failing thread changes it every backoff.
    collect: (): void => this.signThreadsUp.set(this.#token.threadsUp()),
  });

  readonly signThreadsStuck = new Gauge({
    name: `${PREFIX}sign_threads_stuck`,
    help:
      'Signing threads whose call into the token has not come back for longer than twice limits.requestTimeoutMs (at least 1 s): ' +
      'the token is not answering (logged); nothing is signed on the event loop meanwhile, and while every thread is stuck signs are refused ' +
      'SIGN_FAILED at once; a token reopen and the shutdown wait for these calls, the shutdown at most limits.shutdownGraceMs, a reopen until one has been held ' +
      'limits.tokenStallExitMs (then the process ends, SIGKILL, for its supervisor to start it again).',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    // Every reason exported from the start at 0, so a rate() over it has a baseline.
    for (const reason of DROP_REASONS) this.connectionsDropped.inc({ reason }, 0);
    for (const result of ['opened', 'failed'] as const) this.tokenReopens.inc({ result }, 0);
    // The algorithms whose signatures are checked (sign-verify.ts: RSA only).
    for (const info of ALGORITHMS) if (info.scheme !== 'ecdsa') this.signaturesRefused.inc({ algorithm: info.name }, 0);
  }

  /** Where `keys` and `sign_threads_up` read the token's keys and signing threads up at each scrape. */
  watchToken(token: TokenGauges): void {
    this.#token = token;
  }

  connectionDropped(reason: DropReason): void {
    this.connectionsDropped.inc({ reason });
  }

  /** A sign answered ok after `seconds`: one `requests` {op="sign", result="ok"} and one `signDuration` observation, as of the next scrape. */
  signed(algorithm: AlgorithmInfo, seconds: number): void {
    const held = this.#held[algorithm.byte] ?? this.#holdFor(algorithm);
    held.seconds[held.count++] = seconds;
    if (held.count === SIGN_BATCH) this.#handOverSigns();
  }

  #holdFor(algorithm: AlgorithmInfo): HeldSigns {
    const held: HeldSigns = {
      count: 0,
      seconds: new Float64Array(SIGN_BATCH),
      requests: this.requests.labels('sign', algorithm.name, 'ok'),
      duration: this.signDuration.labels(algorithm.name),
    };
    this.#held[algorithm.byte] = held;
    return held;
  }

  #handOverSigns(): void {
    for (const held of this.#held) {
      if (held === undefined || held.count === 0) continue;
      held.requests.inc(held.count);
      for (let i = 0; i < held.count; i++) held.duration.observe(held.seconds[i]!);
      held.count = 0;
    }
  }
}
