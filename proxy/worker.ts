/**
 * One proxy worker: HTTPS listeners terminating TLS with keyless keys (its KeySource), routing
 * each request to its domain's origin.
 *
 * Lifecycle: `startProxyWorker()` loads and checks every configured
 * certificate, builds their secure contexts off the handshake path, then
 * listens; it rejects with a KeyedgeError naming the file or setting at fault.
 * `close()` stops accepting, lets open requests finish within
 * `shutdownGraceMs`, then closes what is left. Under node:cluster every worker
 * runs one of these and shares the listening sockets (SCHED_NONE: the kernel
 * spreads connections, the primary never touches them).
 *
 * The SNI callback only looks up: name → certificate (names.ts) → context
 * (contexts.ts, cached). Nothing in it waits on I/O.
 *
 * Reloads: the serving state (serving/state.ts) is one reference, replaced
 * whole by `apply()` once every new secure context is built; a handshake in
 * progress keeps the context it was given, so renewals fail no connection.
 */
import { existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import { ProxyMetrics } from './metrics.js';
import type { ProxyConfig, TlsProfileName } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/shared/errors.js';
import { CertificateError } from './certs/errors.js';
import type { Logger } from '../keyserver/shared/log.js';
import type { ServedCertificate } from './certs/certificate.js';
import { answerClientError } from './http/client-error.js';
import { handleExpectations } from './http/expect.js';
import { createRequestHandler } from './http/handler.js';
import { OriginPools } from './http/forward.js';
import { createRedirectHandler } from './http/redirect.js';
import { TrustedPeers } from './http/trusted-peers.js';
import { createUpgradeHandler } from './http/upgrade.js';
import { Http2Sessions } from './http2/sessions.js';
import type { Http2Connection } from './http2/stream.js';
import { startKeylessBridge } from './keyless/bridge.js';
import type { KeySource } from './tls/key-source.js';
import { SecureContextCache } from './tls/contexts.js';
import { type TicketKeyLookup, TicketKeyRing, useTicketKeyRingOnServer } from './tls/tickets.js';
import { selectByName } from './tls/names.js';
import { OcspStapler } from './tls/ocsp.js';
import { ClientConnectionLimit, ConnectionLimit, createTlsFront } from './tls/front.js';
import { TLS_PROFILES } from './tls/profile.js';
import { ServingSource, type NextServing } from './serving/source.js';
import type { ServingDelta } from './serving/spec.js';
import { applyDelta, EMPTY_STATE, type ServingState } from './serving/state.js';
import { listen } from '../keyserver/shared/listen.js';

/** Deltas up to this many certificates (renewals) get their contexts built before the swap, whatever the cache's room. */
const EAGER_CONTEXTS = 64;

export interface RunningWorker {
  /** The bound port of each listener, in config order (useful with port 0). */
  readonly ports: readonly number[];
  /** The plain-HTTP redirect listener's port, when configured. */
  readonly httpPort: number | undefined;
  /** Where the worker's keys come from: the keyless bridge, or the source it was given. */
  readonly keySource: KeySource;
  /** What serves now. */
  readonly state: ServingState;
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
}

export async function startProxyWorker(config: ProxyConfig, options: WorkerOptions): Promise<RunningWorker> {
  const { log } = options;
  const keySource = options.keySource ?? startKeylessBridge(config.keyserver);
  let source: ServingSource | undefined;
  let initial = options.initial;
  if (initial === undefined) {
    source = new ServingSource(config, {
      // A config built in memory (tests, benchmarks) has no file to re-read.
      reloadConfig: existsSync(config.source),
      onUnverified: (reason) => log.warn({ reason }, 'key server unreachable at start: certificates load unverified, handshakes wait for it'),
    });
    const first = await source.next();
    refuseStartOnConfigCertificates(config, first);
    source.commit(first);
    initial = first.delta;
  }

  // One ring for every context of this worker: a rotation reaches all of them at once.
  const tickets = new TicketKeyRing(options.ticketKeys);
  const countTicket = (lookup: TicketKeyLookup): void => metrics.ticketLookups.inc({ key: lookup });
  const contexts = new SecureContextCache(config.tls.contextCacheSize, (c) => keySource.keyFor(c), {}, { ring: tickets, onLookup: countTicket });
  const profiles = [...new Set(config.listen.map((l) => l.profile))];
  const stapler = new OcspStapler(log);
  let state = EMPTY_STATE;
  const onConflict = (name: string, kept: string, dropped: string): void =>
    log.warn({ name, kept, dropped }, 'two certificates cover the same name; the first listed serves it');

  const metrics = options.metrics ?? new ProxyMetrics(() => keySource.stats());
  const limits = config.limits;
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
  const trustedPeers = new TrustedPeers(config.forwarding.trustedProxies);
  const connectionLimit = new ConnectionLimit(config.limits.maxConnectionsPerWorker);
  const perClient = config.limits.maxConnectionsPerClient;
  // A trusted proxy's connections carry many clients: they are not capped as one.
  const clientLimit = perClient === null ? undefined : new ClientConnectionLimit(perClient, (address) => trustedPeers.trusts(address));
  const fronts: net.Server[] = [];
  const tlsServers: https.Server[] = [];
  const noSniServers: { readonly profile: TlsProfileName; readonly server: https.Server }[] = [];

  /** Told after each swap of the serving state (set once the HTTP/2 server exists). */
  let afterApply = (): void => undefined;
  const apply = (delta: ServingDelta): void => {
    const next = applyDelta(state, delta, onConflict);
    // The contexts of a renewal are built (and its keyless key checked against
    // the chain) before the swap, so no handshake pays for them and a failure
    // leaves the current state serving. A delta larger than that (a start with
    // thousands of entries) fills the cache's room; the rest are built on
    // first use, which keeps memory bounded by contextCacheSize.
    const eager = next.changed.length <= EAGER_CONTEXTS ? next.changed : next.changed.slice(0, Math.floor(contexts.room / profiles.length));
    const prepared: ServedCertificate[] = [];
    try {
      for (const certificate of eager) {
        for (const profile of profiles) contexts.prepare(profile, certificate);
        prepared.push(certificate);
      }
    } catch (err) {
      for (const certificate of eager) for (const profile of profiles) contexts.discard(profile, certificate);
      const failed = eager[prepared.length]!;
      throw new CertificateError(failed.source, `certificate '${failed.name}' cannot be served: ${(err as Error).message}`, { cause: err });
    }
    try {
      // Reads the origin CA files now: a bad one refuses the delta, not a request. Pools
      // of origins no longer routed to close once their requests finish.
      pools.retain(delta.routing.domains);
    } catch (err) {
      for (const certificate of eager) for (const profile of profiles) contexts.discard(profile, certificate);
      throw err;
    }
    const previous = state;
    state = next.state;
    for (const name of [...next.removed, ...next.changed.map((c) => c.name)]) {
      const old = previous.certificates.get(name);
      if (old === undefined) continue;
      contexts.forget(old);
      if (config.tls.ocspStapling && previous.records.get(name)?.stapled === true) stapler.untrack(old);
    }
    for (const certificate of eager) for (const profile of profiles) contexts.commit(profile, certificate);
    // Only leaves the primary found an OCSP responder in: parsing all of them here would cost each worker seconds and megabytes at 10,000 entries.
    if (config.tls.ocspStapling)
      trackInBackground(
        stapler,
        next.changed.filter((c) => next.state.records.get(c.name)?.stapled === true),
      );
    afterApply();
    if (state.noSni !== previous.noSni && state.noSni !== undefined) {
      for (const { profile, server } of noSniServers) {
        server.setSecureContext(noSniContextOptions(profile, state.noSni));
        // The new context is the one OpenSSL asks about tickets on this server.
        useTicketKeyRingOnServer(server, tickets, countTicket);
      }
    }
  };
  const noSniContextOptions = (profile: TlsProfileName, certificate: ServedCertificate): tls.SecureContextOptions => ({
    ...TLS_PROFILES[profile],
    cert: certificate.chainPem,
    key: keySource.keyFor(certificate),
  });
  try {
    apply(initial);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(config.source, 'certificates', (err as Error).message, { cause: err });
  }

  const certificateNames = (servername: string | undefined): readonly string[] =>
    (servername === undefined ? state.noSni : selectByName(state.sni, servername, state.fallback)?.value)?.names ?? [];
  const handler = createRequestHandler({
    domains: () => state.domains,
    certificateNames,
    pools,
    maxBodyBytes: config.limits.maxBodyBytes,
    hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds,
    trustedPeers,
    log,
    metrics,
  });
  const upgrade = createUpgradeHandler({
    domains: () => state.domains,
    certificateNames,
    pools,
    hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds,
    trustedPeers,
    log,
    metrics,
  });

  const http2 = new Http2Sessions({
    domains: () => state.domains,
    pools,
    maxBodyBytes: config.limits.maxBodyBytes,
    hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds,
    trustedPeers,
    log,
    metrics,
    limits: config.limits,
  });
  const http2Connection = (socket: tls.TLSSocket): Http2Connection => {
    const servername = typeof socket.servername === 'string' ? socket.servername : undefined;
    return {
      servername,
      certificateNames: certificateNames(servername),
      peer: socket.remoteAddress,
      tlsVersion: socket.getProtocol() ?? undefined,
      resumed: socket.isSessionReused(),
    };
  };

  // A renewal or removal that drops a name an HTTP/2 connection was served for: GOAWAY, so the client reconnects and sees what serves now.
  afterApply = () => {
    http2.retire((c) => {
      const now = certificateNames(c.servername);
      return c.certificateNames.every((name) => now.includes(name));
    });
  };

  const sockets = new Set<net.Socket>();
  const acceptedAt = new WeakMap<net.Socket, bigint>();
  const onSecure = (socket: tls.TLSSocket): void => {
    const resumed = String(socket.isSessionReused());
    metrics.handshakes.inc({ result: 'ok', tls_version: socket.getProtocol() ?? 'unknown', resumed });
    // Node keeps the accepted TCP socket as `_parent` (stable since Node 0.x, not public API).
    const raw = (socket as tls.TLSSocket & { _parent?: net.Socket })._parent;
    const accepted = raw === undefined ? undefined : acceptedAt.get(raw);
    if (accepted !== undefined) metrics.handshakeDuration.observe({ resumed }, Number(process.hrtime.bigint() - accepted) / 1e9);
  };
  const httpsServer = (profile: TlsProfileName, withDefault: boolean, offersHttp2: boolean): https.Server => {
    const server = https.createServer(
      {
        ...TLS_PROFILES[profile],
        // RFC 9113 §3.2: h2 first, the server's preference; http/1.1 for every other client.
        ALPNProtocols: offersHttp2 ? ['h2', 'http/1.1'] : ['http/1.1'],
        ...(withDefault && state.noSni !== undefined ? { cert: state.noSni.chainPem, key: keySource.keyFor(state.noSni) } : {}),
        SNICallback: sniCallback(profile, () => state, contexts, log),
        // Over the limit, Node answers 431 itself; headers not complete in time, 408.
        maxHeaderSize: config.limits.maxHeaderBytes,
        headersTimeout: config.limits.headerTimeoutMs,
        keepAliveTimeout: config.limits.keepAliveTimeoutMs,
        // Node's whole-request deadline (raw 408) stays a backstop behind the body timeouts (body.ts), which answer first.
        requestTimeout: config.limits.headerTimeoutMs + config.limits.bodyTimeoutMs + 1000,
        // How often Node checks those timeouts (default 30 s would let a slow client linger).
        connectionsCheckingInterval: 1000,
        // The front's deadline (from accept) ends the handshake first; this only keeps Node's own 120 s from ever applying.
        handshakeTimeout: config.limits.handshakeTimeoutMs,
      },
      handler,
    );
    if (offersHttp2) {
      // Node's HTTP/1.1 connection listener takes only connections that did not choose h2; those go to the HTTP/2 server.
      const http1 = server.listeners('secureConnection')[0] as (socket: tls.TLSSocket) => void;
      server.removeListener('secureConnection', http1);
      server.prependListener('secureConnection', (socket: tls.TLSSocket) => {
        if (socket.alpnProtocol === 'h2') http2.handle(socket, http2Connection(socket));
        else http1.call(server, socket);
      });
    }
    // Tickets: the shared ring, and a fresh ticket on every resumed connection (tickets.ts).
    useTicketKeyRingOnServer(server, tickets, countTicket);
    // Reads the staple cache only; fetching happens in the stapler's own loop.
    if (config.tls.ocspStapling)
      server.on('OCSPRequest', (cert: Buffer, _issuer: Buffer, done: (err: Error | null, response?: Buffer | null) => void) =>
        done(null, stapler.stapleFor(cert) ?? null),
      );
    server.on('tlsClientError', (err: NodeJS.ErrnoException) => {
      metrics.handshakes.inc({ result: 'failed', tls_version: 'none', resumed: 'false' });
      log.debug({ code: err.code, reason: err.message }, 'TLS handshake failed');
    });
    server.on('secureConnection', onSecure);
    server.on('upgrade', upgrade);
    handleExpectations(server, handler);
    server.on('clientError', answerClientError);
    tlsServers.push(server);
    if (withDefault) noSniServers.push({ profile, server });
    return server;
  };
  for (const listener of config.listen) {
    const withoutSni = httpsServer(listener.profile, true, listener.http2);
    const front = createTlsFront({
      withSni: httpsServer(listener.profile, false, listener.http2),
      withoutSni,
      hasDefault: () => state.noSni !== undefined,
      acceptsName: (name) => selectByName(state.sni, name, state.fallback) !== undefined,
      handshakeTimeoutMs: config.limits.handshakeTimeoutMs,
      onUnknownName: () => metrics.handshakes.inc({ result: 'unknown_name', tls_version: 'none', resumed: 'false' }),
      onHelloTimeout: () => metrics.handshakes.inc({ result: 'timeout', tls_version: 'none', resumed: 'false' }),
      onPlainHttp: (client) => {
        metrics.handshakes.inc({ result: 'plain_http', tls_version: 'none', resumed: 'false' });
        log.debug({ client }, 'plain HTTP request on a TLS port: answered 400');
      },
      limit: connectionLimit,
      ...(clientLimit === undefined ? {} : { clientLimit }),
      onRejected: (reason) => metrics.rejectedConnections.inc({ reason }),
    });
    front.on('connection', (socket: net.Socket) => {
      acceptedAt.set(socket, process.hrtime.bigint());
      sockets.add(socket);
      metrics.openConnections.inc();
      socket.once('close', () => {
        sockets.delete(socket);
        metrics.openConnections.dec();
      });
    });
    await listen(front, { host: listener.host, port: listener.port, exclusive: false });
    fronts.push(front);
  }
  const ports = fronts.map((s) => (s.address() as net.AddressInfo).port);
  let redirect: http.Server | undefined;
  const plain = config.httpRedirect;
  if (plain !== null) {
    const redirectHandler = createRedirectHandler({ domains: () => state.domains, pools, trustedPeers, httpsPort: ports[0] ?? 443, log, metrics });
    redirect = http.createServer(redirectHandler);
    handleExpectations(redirect, redirectHandler);
    redirect.on('clientError', answerClientError);
    await listen(redirect, { host: plain.host, port: plain.port, exclusive: false });
  }
  const httpPort = redirect === undefined ? undefined : (redirect.address() as net.AddressInfo).port;
  log.info(
    { ports, httpPort, certificates: state.certificates.size, domains: state.domains.exact.size + state.domains.wildcard.size, contexts: contexts.size },
    'proxy worker listening',
  );

  let closing: Promise<void> | undefined;
  return {
    ports,
    httpPort,
    keySource,
    get state() {
      return state;
    },
    setTicketKeys(keys) {
      tickets.replace(keys);
    },
    apply,
    async reload() {
      if (source === undefined) throw new ConfigError(config.source, 'reload', 'this worker is driven by the cluster primary; reload through the primary');
      const next = await source.next();
      apply(next.delta);
      source.commit(next);
      return next;
    },
    close() {
      closing ??= (async () => {
        for (const front of fronts) front.close();
        redirect?.close();
        // GOAWAY NO_ERROR: HTTP/2 clients start no new stream here; those in flight finish within the grace.
        http2.close();
        // Idle keep-alive connections close now; busy ones once their response is sent.
        for (const server of tlsServers) server.close(() => undefined);
        const allClosed = new Promise<void>((resolve) => {
          const check = (): void => (sockets.size === 0 ? resolve() : void setTimeout(check, 20));
          check();
        });
        const grace = new Promise<void>((resolve) => setTimeout(resolve, config.shutdownGraceMs).unref());
        await Promise.race([allClosed, grace]);
        for (const socket of sockets) socket.destroy();
        stapler.stop();
        if (options.metrics === undefined) metrics.stop();
        await pools.close();
        keySource.close();
      })();
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

/** Staple fetching parses each leaf: spread over event-loop turns so a start with many certificates stays responsive. */
function trackInBackground(stapler: OcspStapler, certificates: readonly ServedCertificate[]): void {
  const BATCH = 100;
  const step = (from: number): void => {
    for (const certificate of certificates.slice(from, from + BATCH)) stapler.track(certificate);
    if (from + BATCH < certificates.length) setImmediate(() => step(from + BATCH));
  };
  if (certificates.length > 0) step(0);
}

function sniCallback(
  profile: TlsProfileName,
  current: () => ServingState,
  contexts: SecureContextCache,
  log: Logger,
): (servername: string, callback: (err: Error | null, context?: tls.SecureContext) => void) => void {
  return (servername, callback) => {
    const state = current();
    const selected = selectByName(state.sni, servername, state.fallback);
    if (selected === undefined) {
      // Node cannot send unrecognized_name from here: the handshake is closed before any certificate is shown.
      callback(new Error('no certificate for this server name'));
      return;
    }
    try {
      callback(null, contexts.get(profile, selected.value));
    } catch (err) {
      log.error({ certificate: selected.value.name, err }, 'secure context could not be built');
      callback(err as Error);
    }
  };
}
