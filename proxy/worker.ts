/**
 * One proxy worker, as wiring: its keys (a KeySource: the keyless bridge),
 * what it serves (serving/live.ts), one TLS listener per configured address
 * (tls/listener.ts) handing HTTP/1.1 connections to its HTTP server
 * (http/server.ts), the plain-HTTP redirect port, and its stop (shutdown.ts).
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
import { existsSync } from 'node:fs';
import type http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/shared/errors.js';
import type { Logger } from '../keyserver/shared/log.js';
import { OriginPools } from './http/forward.js';
import { createRequestHandler } from './http/handler.js';
import { createHttp1Server, startRedirectServer } from './http/server.js';
import type { ChallengeAnswers } from './acme/challenges.js';
import { missReporter, wantedMessage } from './acme/on-demand.js';
import { ACME_TLS_PROTOCOL, AlpnChallengeContexts, closeAfterHandshake } from './acme/tls-alpn.js';
import { TrustedPeers } from './http/trusted-peers.js';
import { createUpgradeHandler } from './http/upgrade.js';
import { http2Connection, Http2Sessions } from './http2/sessions.js';
import { startKeylessBridge } from './keyless/bridge.js';
import { ProxyMetrics } from './metrics.js';
import { LiveServing } from './serving/live.js';
import { type NextServing, ServingSource } from './serving/source.js';
import type { ServingDelta } from './serving/spec.js';
import type { ServingState } from './serving/state.js';
import { shutDown } from './shutdown.js';
import { ClientConnectionLimit, ConnectionLimit } from './tls/connection-limits.js';
import { SecureContextCache } from './tls/contexts.js';
import type { KeySource } from './tls/key-source.js';
import { TlsListener } from './tls/listener.js';
import { OcspStapler } from './tls/ocsp.js';
import { TicketKeyRing } from './tls/tickets.js';
import { selectByName } from './tls/names.js';

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
  const { log } = options;
  const keySource = options.keySource ?? startKeylessBridge(config.keyserver, log);
  let source: ServingSource | undefined;
  let initial = options.initial;
  if (initial === undefined) {
    source = new ServingSource(config, {
      // A config built in memory (tests, benchmarks) has no file to re-read.
      reloadConfig: existsSync(config.source),
      onUnverified: (reason) => log.warn({ reason }, 'key server unreachable at start: certificates load unverified, handshakes wait for it'),
      warn: (message) => log.warn(message),
    });
    const first = await source.next();
    refuseStartOnConfigCertificates(config, first);
    source.commit(first);
    initial = first.delta;
  }

  const metrics = options.metrics ?? new ProxyMetrics(() => keySource.stats());
  // One ring for every context of this worker: a rotation reaches all of them at once.
  const tickets = new TicketKeyRing(options.ticketKeys);
  const contexts = new SecureContextCache(
    config.tls.contextCacheSize,
    (c) => keySource.keyFor(c),
    {},
    {
      ring: tickets,
      onLookup: (lookup) => metrics.ticketLookups.inc({ key: lookup }),
    },
  );
  const stapler = config.tls.ocspStapling ? new OcspStapler(log) : undefined;
  const { limits } = config;
  const pools = new OriginPools({
    connectMs: limits.originConnectTimeoutMs,
    responseMs: limits.originResponseTimeoutMs,
    failureCooldownMs: limits.originFailureCooldownMs,
    admission: { maxConnections: limits.originMaxConnections, maxQueue: limits.originMaxQueue, queueTimeoutMs: limits.originQueueTimeoutMs },
    bodies: {
      bufferBytes: limits.bodyBufferBytes,
      bufferTotalBytes: limits.bodyBufferTotalBytes,
      idleTimeoutMs: limits.bodyIdleTimeoutMs,
      timeoutMs: limits.bodyTimeoutMs,
    },
    sendTimeoutMs: limits.sendTimeoutMs,
  });
  const serving = new LiveServing({ contexts, profiles: [...new Set(config.listen.map((l) => l.profile))], pools, stapler, log });
  try {
    serving.apply(initial);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(config.source, 'certificates', (err as Error).message, { cause: err });
  }

  const trustedPeers = new TrustedPeers(config.forwarding.trustedProxies);
  const domains = (): ServingState['domains'] => serving.state.domains;
  const routing = { domains, pools, hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds, trustedPeers, log, metrics };
  const handler = createRequestHandler({ ...routing, maxBodyBytes: limits.maxBodyBytes });
  const upgrade = createUpgradeHandler(routing);
  const http2 = new Http2Sessions({ ...routing, maxBodyBytes: limits.maxBodyBytes, limits });
  // The names the certificate serving `serverName` covers now.
  const servingNames = (serverName: string | undefined): readonly string[] => {
    const state = serving.state;
    return (serverName === undefined ? state.noSni : selectByName(state.sni, serverName, state.fallback)?.value)?.names ?? [];
  };
  // After a reload: an HTTP/2 connection served a name its certificate no longer covers gets GOAWAY, so the client reconnects and sees what serves now.
  const apply = (delta: ServingDelta): void => {
    serving.apply(delta);
    http2.retire((c) => {
      const now = servingNames(c.servername);
      return c.certificateNames.every((name) => now.includes(name));
    });
  };
  const connectionLimit = new ConnectionLimit(limits.maxConnectionsPerWorker);
  // A trusted proxy's connections carry many clients: they are not capped as one.
  const clientLimit =
    limits.maxConnectionsPerClient === null ? undefined : new ClientConnectionLimit(limits.maxConnectionsPerClient, (a) => trustedPeers.trusts(a));
  const listeners: TlsListener[] = [];
  const servers: http.Server[] = [];
  const ports: number[] = [];
  // A name no certificate covers may be one a customer just pointed here: on-demand issuance is told (never waited for).
  const alpnChallenges = options.challenges === undefined ? undefined : new AlpnChallengeContexts(options.challenges, keySource);
  const reportMiss = config.acme?.onDemand == null || process.send === undefined ? undefined : missReporter((name) => process.send?.(wantedMessage(name)));
  for (const { host, port, profile, http2: offersHttp2 } of config.listen) {
    const http1 = createHttp1Server(limits, handler, upgrade);
    const listener = new TlsListener({
      id: `${host}:${port}`,
      profile,
      serving: () => serving.state,
      contexts,
      ...(stapler === undefined ? {} : { stapler }),
      http1: http1.take,
      handshakeTimeoutMs: limits.handshakeTimeoutMs,
      ...(reportMiss === undefined ? {} : { onUncoveredName: reportMiss }),
      limit: connectionLimit,
      ...(clientLimit === undefined ? {} : { clientLimit }),
      metrics,
      log,
    });
    // RFC 9113 §3.2: h2 is offered before http/1.1 once registered.
    if (offersHttp2) listener.handle('h2', (socket, connection) => http2.handle(socket, http2Connection(socket, connection)));
    // RFC 8737: answered only for a name with a pending challenge, on the challenge's own context.
    if (alpnChallenges !== undefined) listener.handle(ACME_TLS_PROTOCOL, closeAfterHandshake, { selectContext: alpnChallenges.selector(profile) });
    ports.push(await listener.listen(host, port));
    listeners.push(listener);
    servers.push(http1.server);
  }
  let httpPort: number | undefined;
  if (config.httpRedirect !== null) {
    const redirect = await startRedirectServer(config.httpRedirect, {
      domains,
      pools,
      trustedPeers,
      httpsPort: ports[0] ?? 443,
      log,
      metrics,
      ...(options.challenges === undefined ? {} : { challenges: options.challenges }),
    });
    servers.push(redirect.server);
    httpPort = redirect.port;
  }
  const state = serving.state;
  log.info(
    { ports, httpPort, certificates: state.certificates.size, domains: state.domains.exact.size + state.domains.wildcard.size, contexts: contexts.size },
    'proxy worker listening',
  );

  let closing: Promise<void> | undefined;
  return {
    ports,
    httpPort,
    keySource,
    listeners,
    get state() {
      return serving.state;
    },
    setTicketKeys: (keys) => tickets.replace(keys),
    apply,
    async reload() {
      if (source === undefined) throw new ConfigError(config.source, 'reload', 'this worker is driven by the cluster primary; reload through the primary');
      const next = await source.next();
      apply(next.delta);
      source.commit(next);
      return next;
    },
    close() {
      // GOAWAY NO_ERROR first: HTTP/2 clients start no new stream here; those in flight finish within the grace.
      if (closing === undefined) http2.close();
      closing ??= shutDown({
        listeners,
        servers,
        graceMs: config.shutdownGraceMs,
        release: async () => {
          stapler?.stop();
          if (options.metrics === undefined) metrics.stop();
          await pools.close();
          keySource.close();
          source?.close();
        },
      });
      return closing;
    },
  };
}

/** At start, a certificate named in the config file must load: it is what the operator asked for by name. */
export function refuseStartOnConfigCertificates(config: ProxyConfig, first: NextServing): void {
  const refused = first.refused.find((r) => config.certificates.some((c) => c.name === r.name));
  if (refused !== undefined)
    throw new ConfigError(config.source, 'certificates', `certificate '${refused.name}' (${refused.source}) cannot be served: ${refused.message}`);
}
