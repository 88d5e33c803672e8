/**
 * One proxy worker, as wiring only, in the order it is built: its keys (a
 * KeySource, tls/key-source.ts: the keyless bridge unless given one), what
 * it serves (serving/start.ts, then serving/live.ts at every reload), the
 * TLS parts its listeners share (tls/worker-tls.ts), its HTTP side
 * (http-front.ts: HTTP/1.1, HTTP/2, the redirect port), one TLS listener per
 * configured address (tls/listener.ts) with the ACME hooks, and its stop
 * (shutdown.ts). Every decision lives in those modules.
 *
 * Lifecycle: `startProxyWorker()` loads and checks every configured
 * certificate, builds their secure contexts off the handshake path, then
 * listens; it rejects with a KeyedgeError naming the file or setting at fault.
 * `close()` stops accepting, lets open requests finish within
 * `shutdownGraceMs`, then closes what is left. Under node:cluster every worker
 * runs one of these and shares the listening sockets (SCHED_NONE: the kernel
 * spreads connections, the primary never touches them).
 *
 * Reloads: `apply()` swaps the serving state whole once every new secure
 * context is built; a handshake in progress keeps the context it was given,
 * so renewals fail no connection.
 */
import type { ProxyConfig } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/shared/errors.js';
import type { Logger } from '../keyserver/shared/log.js';
import type { ChallengeAnswers } from './acme/challenges.js';
import { missReporter, wantedMessage } from './acme/on-demand.js';
import { ACME_TLS_PROTOCOL, AlpnChallengeContexts, closeAfterHandshake } from './acme/tls-alpn.js';
import { OriginPools, originPoolOptions } from './http/origins.js';
import { HttpFront } from './http-front.js';
import { startKeylessBridge } from './keyless/bridge.js';
import { ProxyMetrics } from './metrics.js';
import { LiveServing } from './serving/live.js';
import type { NextServing } from './serving/source.js';
import type { ServingDelta } from './serving/spec.js';
import { OwnServing, serveFirst } from './serving/start.js';
import type { ServingState } from './serving/state.js';
import { shutDown } from './shutdown.js';
import { stillCovers } from './tls/connection.js';
import { workerConnectionLimits } from './tls/connection-limits.js';
import type { KeySource } from './tls/key-source.js';
import { TlsListener } from './tls/listener.js';
import { WorkerTls } from './tls/worker-tls.js';

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

export async function startProxyWorker(config: ProxyConfig, options: WorkerOptions): Promise<RunningWorker> {
  const { log, challenges } = options;
  const { limits } = config;
  const keySource = options.keySource ?? startKeylessBridge(config.keyserver, log);
  // Started alone (no `initial` from the primary), the worker reads its config file and the store itself.
  const own = options.initial === undefined ? await OwnServing.start(config, log) : undefined;
  const metrics = options.metrics ?? new ProxyMetrics(() => keySource.stats());
  const tls = new WorkerTls(config.tls, keySource, { ticketKeys: options.ticketKeys, metrics, log });
  const { contexts, stapler } = tls;
  const pools = new OriginPools(originPoolOptions(limits));
  const serving = new LiveServing({ contexts, profiles: [...new Set(config.listen.map((l) => l.profile))], pools, stapler, log });
  serveFirst(serving, options.initial ?? own!.initial, config);
  const front = new HttpFront(config, { domains: () => serving.state.domains, pools, log, metrics });
  // After a reload: an HTTP/2 connection served a name its certificate no longer covers gets GOAWAY, so the client reconnects and sees what serves now.
  const apply = (delta: ServingDelta): void => {
    serving.apply(delta);
    front.http2.retire((c) => stillCovers(serving.state, c.servername, c.certificateNames));
  };

  // A name no certificate covers may be one a customer just pointed here: on-demand issuance is told (never waited for).
  const reportMiss = config.acme?.onDemand == null || process.send === undefined ? undefined : missReporter((name) => process.send?.(wantedMessage(name)));
  const alpnChallenges = challenges === undefined ? undefined : new AlpnChallengeContexts(challenges, keySource);
  const everyListener = {
    serving: () => serving.state,
    contexts,
    ...(stapler === undefined ? {} : { stapler }),
    handshakeTimeoutMs: limits.handshakeTimeoutMs,
    ...(reportMiss === undefined ? {} : { onUncoveredName: reportMiss }),
    ...workerConnectionLimits(limits, (address) => front.trustedPeers.trusts(address)),
    metrics,
    log,
  };
  const listeners: TlsListener[] = [];
  const ports: number[] = [];
  for (const { host, port, profile, http2 } of config.listen) {
    const listener = new TlsListener({ ...everyListener, id: `${host}:${port}`, profile, http1: front.http1() });
    // RFC 9113 §3.2: h2 is offered before http/1.1 once registered.
    if (http2) listener.handle('h2', front.h2);
    // RFC 8737: answered only for a name with a pending challenge, on the challenge's own context.
    if (alpnChallenges !== undefined) listener.handle(ACME_TLS_PROTOCOL, closeAfterHandshake, { selectContext: alpnChallenges.selector(profile) });
    ports.push(await listener.listen(host, port));
    listeners.push(listener);
  }
  const httpPort = config.httpRedirect === null ? undefined : await front.startRedirect(config.httpRedirect, ports[0] ?? 443, challenges);
  const { certificates, domains } = serving.state;
  const routed = domains.exact.size + domains.wildcard.size;
  log.info({ ports, httpPort, certificates: certificates.size, domains: routed, contexts: contexts.size }, 'proxy worker listening');

  let closing: Promise<void> | undefined;
  return {
    ports,
    httpPort,
    keySource,
    listeners,
    get state() {
      return serving.state;
    },
    setTicketKeys: (keys) => tls.tickets.replace(keys),
    apply,
    async reload() {
      if (own === undefined) throw new ConfigError(config.source, 'reload', 'this worker is driven by the cluster primary; reload through the primary');
      return own.reload(apply);
    },
    close() {
      // GOAWAY NO_ERROR first: HTTP/2 clients start no new stream here; those in flight finish within the grace.
      if (closing === undefined) front.http2.close();
      closing ??= shutDown({
        listeners,
        servers: front.servers,
        graceMs: config.shutdownGraceMs,
        release: async () => {
          tls.stop();
          if (options.metrics === undefined) metrics.stop();
          await pools.close();
          keySource.close();
          own?.close();
        },
      });
      return closing;
    },
  };
}
