/**
 * What a proxy worker is to those who start it (cluster.ts, tests,
 * benchmarks): the options it takes and the handle it returns. The wiring
 * that builds one is worker.ts.
 */
import type { ChallengeAnswers } from './acme/challenges.js';
import type { ProxyMetrics } from './metrics.js';
import type { NextServing } from './serving/next-serving.js';
import type { ServingDelta } from './serving/spec.js';
import type { ServingState } from './serving/state.js';
import type { KeySource } from './tls/key-source.js';
import type { TlsListener } from './tls/listener.js';
import type { Logger } from '../keyserver/shared/log.js';

export interface RunningWorker {
  /** The bound port of each listener, in config order (useful with port 0). */
  readonly ports: readonly number[];
  /** The plain-HTTP redirect listener's port, when configured. */
  readonly httpPort: number | undefined;
  /** Where the worker's keys come from: the keyless bridge, or the source it was given. */
  readonly keySource: KeySource;
  /** What serves now. */
  readonly state: ServingState;
  /** Its HTTPS listeners, in config order: where a protocol handler registers (TlsListener.handle). */
  readonly listeners: readonly TlsListener[];
  /** The primary's ticket keys, newest first (tickets.ts); a malformed key throws and keeps the current ones. */
  setTicketKeys(keys: readonly Buffer[]): void;
  /**
   * Builds every secure context the delta needs, then swaps the serving state
   * in one step. Throws (and keeps the current state) when a context cannot
   * be built. Contract: deltas arrive in generation order, one at a time.
   */
  apply(delta: ServingDelta): void;
  /**
   * Started on its own (no `initial` delta): re-reads the config file and the
   * store, validates what changed and applies it, as the cluster primary
   * does for its workers. Rejects with a ConfigError when the config is refused.
   */
  reload(): Promise<NextServing>;
  close(): Promise<void>;
}

export interface WorkerOptions {
  readonly log: Logger;
  /** Session-ticket keys, newest first, shared by all workers; the primary sends them. A worker started alone makes its own. */
  readonly ticketKeys?: readonly Buffer[];
  /** Defaults to metrics in prom-client's global registry, which the cluster primary aggregates. */
  readonly metrics?: ProxyMetrics;
  /** What to serve, from the cluster primary; without it the worker prepares it from its config and the store. */
  readonly initial?: ServingDelta;
  /** Where keys come from (embedding, benchmarks); defaults to the keyless bridge to `config.keyserver`. Not a config key. */
  readonly keySource?: KeySource;
  /** The ACME issuer's HTTP-01 tokens and TLS-ALPN-01 certificates, kept current by the cluster primary (acme/challenges.ts). */
  readonly challenges?: ChallengeAnswers;
}
