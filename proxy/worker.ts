/**
 * One proxy worker, as wiring only, in the order it is built: its keys (a
 * KeySource, tls/key-source.ts: the keyless bridge unless given one), what
 * it serves (serving/start.ts, then serving/live.ts at every reload), the
 * TLS parts its listeners share (tls/worker-tls.ts), its HTTP side
 * (http-front.ts: HTTP/1.1, HTTP/2, the redirect port), one TLS listener per
 * configured address (listeners.ts) with the ACME hooks, and its stop
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
import { missReporter, wantedMessage } from './acme/on-demand-names.js';
import { AlpnChallengeContexts } from './acme/tls-alpn.js';
import { OriginPools, originPoolOptions } from './http/origins.js';
import { HttpFront } from './http-front.js';
import { openListeners } from './listeners.js';
import { startKeylessBridge } from './keyless/bridge.js';
import { ProxyMetrics } from './metrics.js';
import { LiveServing } from './serving/live.js';
import type { ServingDelta } from './serving/spec.js';
import { OwnServing, serveFirst } from './serving/start.js';
import { shutDown } from './shutdown.js';
import { stillCovers } from './tls/connection.js';
import { workerConnectionLimits } from './tls/connection-limits.js';
import { WorkerTls } from './tls/worker-tls.js';
import type { RunningWorker, WorkerOptions } from './worker-api.js';

export type { RunningWorker, WorkerOptions } from './worker-api.js';

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
  metrics.countOriginResends(() => pools.resends);
  const serving = new LiveServing({ contexts, profiles: [...new Set(config.listen.map((l) => l.profile))], pools, stapler, log });
  serveFirst(serving, options.initial ?? own!.initial, config);
  // A connection served a name its certificate no longer covers is ended (after a reload, or as it starts when its
  // handshake outlived one): HTTP/2 with GOAWAY, HTTP/1.1 closed; the client reconnects and sees what serves now.
  const covers = (serverName: string | undefined, names: readonly string[]): boolean => stillCovers(serving.state, serverName, names);
  const front = new HttpFront(config, { domains: () => serving.state.domains, pools, log, metrics, stillCovers: covers });
  const apply = (delta: ServingDelta): void => {
    serving.apply(delta);
    front.retire();
  };

  // A name no certificate covers may be one a customer just pointed here: on-demand issuance is told (never waited for).
  const reportMiss =
    config.acme?.onDemand == null || process.send === undefined
      ? undefined
      : missReporter(
          (name, client) => process.send?.(wantedMessage(name, client)),
          (address) => front.trustedPeers.trusts(address),
        );
  const alpnChallenges = challenges === undefined ? undefined : new AlpnChallengeContexts(challenges, keySource);
  // One set of caps for every port of the worker, the plain-HTTP one included.
  const caps = workerConnectionLimits(limits, (address) => front.trustedPeers.trusts(address));
  const everyListener = {
    serving: () => serving.state,
    contexts,
    ...(stapler === undefined ? {} : { stapler }),
    handshakeTimeoutMs: limits.handshakeTimeoutMs,
    ...(reportMiss === undefined ? {} : { onUncoveredName: reportMiss }),
    ...caps,
    metrics,
    log,
  };
  const { listeners, ports } = await openListeners(config.listen, everyListener, front, alpnChallenges);
  const httpPort = config.httpRedirect === null ? undefined : await front.startRedirect(config.httpRedirect, ports[0] ?? 443, caps, challenges);
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
      // GOAWAY NO_ERROR and `Connection: close` first: clients send no new request here; those already forwarded are
      // answered within the grace.
      if (closing === undefined) front.stop();
      closing ??= shutDown({
        listeners: [...listeners, ...front.redirectPorts],
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
