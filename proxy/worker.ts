/**
 * One proxy worker: HTTPS listeners terminating TLS with keyless keys, routing
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
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import { ProxyMetrics } from './metrics.js';
import type { ProxyConfig, TlsProfileName } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/errors.js';
import type { Logger } from '../keyserver/log.js';
import { loadCertificateFile, type ServedCertificate } from './certs/certificate.js';
import { createRequestHandler, type Domain } from './http/handler.js';
import { OriginPools } from './http/forward.js';
import { createRedirectHandler } from './http/redirect.js';
import { TrustedPeers } from './http/trusted-peers.js';
import { createUpgradeHandler } from './http/upgrade.js';
import { type KeylessBridge, startKeylessBridge } from './keyless/bridge.js';
import { SecureContextCache } from './tls/contexts.js';
import { buildNameIndex, type NameIndex, selectByName } from './tls/names.js';
import { OcspStapler } from './tls/ocsp.js';
import { ConnectionLimit, createTlsFront } from './tls/front.js';
import { TLS_PROFILES } from './tls/profile.js';

/** A client that has not finished its ClientHello within this is dropped (slowloris). */
const HELLO_TIMEOUT_MS = 10_000;

export interface RunningWorker {
  /** The bound port of each listener, in config order (useful with port 0). */
  readonly ports: readonly number[];
  /** The plain-HTTP redirect listener's port, when configured. */
  readonly httpPort: number | undefined;
  readonly bridge: KeylessBridge;
  setTicketKey(key: Buffer): void;
  close(): Promise<void>;
}

export interface WorkerOptions {
  readonly log: Logger;
  /** Shared by all workers; the primary sends it. A worker started alone makes its own. */
  readonly ticketKey?: Buffer;
  /** Defaults to metrics in prom-client's global registry, which the cluster primary aggregates. */
  readonly metrics?: ProxyMetrics;
}

export async function startProxyWorker(config: ProxyConfig, options: WorkerOptions): Promise<RunningWorker> {
  const { log } = options;
  const bridge = startKeylessBridge(config.keyserver);
  const certificates = config.certificates.map((c) => loadCertificateFile(c.name, c.chain));
  const byName = new Map(certificates.map((c) => [c.name, c]));
  const sni = buildNameIndex(
    certificates.map((c) => ({ names: c.names, value: c })),
    (name, kept, dropped) => log.warn({ name, kept: kept.name, dropped: dropped.name }, 'two certificates cover the same name; the first listed serves it'),
  );
  const fallback = config.sni.onUnknown === 'default' && config.sni.default !== null ? byName.get(config.sni.default) : undefined;
  const noSniCertificate = config.sni.default === null ? undefined : byName.get(config.sni.default);

  const contexts = new SecureContextCache(config.tls.contextCacheSize, (c) => bridge.keyPemFor(c));
  const profiles = [...new Set(config.listen.map((l) => l.profile))];
  // Building a context decodes the keyless key and checks it against the
  // chain: done now, so a mismatch fails the start, not a customer's handshake.
  for (const certificate of certificates) {
    try {
      contexts.build(profiles[0] ?? 'intermediate', certificate);
    } catch (err) {
      throw new ConfigError(config.source, 'certificates', `certificate '${certificate.name}' (${certificate.source}) cannot be served: ${(err as Error).message}`, { cause: err });
    }
  }
  contexts.warm(profiles, certificates);
  const stapler = new OcspStapler(log);
  if (config.tls.ocspStapling) for (const certificate of certificates) stapler.track(certificate);

  const domains: NameIndex<Domain> = buildNameIndex(config.domains.map((d) => ({ names: [d.name], value: d })));
  const pools = new OriginPools({ connectMs: config.limits.originConnectTimeoutMs, responseMs: config.limits.originResponseTimeoutMs, failureCooldownMs: config.limits.originFailureCooldownMs });
  // Reads the origin CA files now: a bad one fails the start, not a request.
  pools.retain(config.domains);
  const trustedPeers = new TrustedPeers(config.forwarding.trustedProxies);
  const connectionLimit = new ConnectionLimit(config.limits.maxConnectionsPerWorker);
  const metrics = options.metrics ?? new ProxyMetrics(() => bridge.stats());
  const certificateNames = (servername: string | undefined): readonly string[] =>
    (servername === undefined ? noSniCertificate : selectByName(sni, servername, fallback)?.value)?.names ?? [];
  const handler = createRequestHandler({ domains: () => domains, certificateNames, pools, maxBodyBytes: config.limits.maxBodyBytes, hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds, trustedPeers, log, metrics });
  const upgrade = createUpgradeHandler({ domains: () => domains, certificateNames, pools, hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds, trustedPeers, log, metrics });

  const fronts: net.Server[] = [];
  const tlsServers: https.Server[] = [];
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
  const httpsServer = (profile: TlsProfileName, defaultCertificate: ServedCertificate | undefined): https.Server => {
    const server = https.createServer(
      {
        ...TLS_PROFILES[profile],
        ...(defaultCertificate === undefined ? {} : { cert: defaultCertificate.chainPem, key: bridge.keyPemFor(defaultCertificate) }),
        SNICallback: sniCallback(profile, sni, fallback, contexts, log),
        ...(options.ticketKey === undefined ? {} : { ticketKeys: options.ticketKey }),
        // Over the limit, Node answers 431 itself; headers not complete in time, 408.
        maxHeaderSize: config.limits.maxHeaderBytes,
        headersTimeout: config.limits.headerTimeoutMs,
        keepAliveTimeout: config.limits.keepAliveTimeoutMs,
        // How often Node checks those timeouts (default 30 s would let a slow client linger).
        connectionsCheckingInterval: 1000,
      },
      handler,
    );
    // Reads the staple cache only; fetching happens in the stapler's own loop.
    if (config.tls.ocspStapling) server.on('OCSPRequest', (cert: Buffer, _issuer: Buffer, done: (err: Error | null, response?: Buffer | null) => void) => done(null, stapler.stapleFor(cert) ?? null));
    server.on('tlsClientError', (err: NodeJS.ErrnoException) => {
      metrics.handshakes.inc({ result: 'failed', tls_version: 'none', resumed: 'false' });
      log.debug({ code: err.code, reason: err.message }, 'TLS handshake failed');
    });
    server.on('secureConnection', onSecure);
    server.on('upgrade', upgrade);
    tlsServers.push(server);
    return server;
  };
  for (const listener of config.listen) {
    const front = createTlsFront({
      withSni: httpsServer(listener.profile, undefined),
      withoutSni: noSniCertificate === undefined ? undefined : httpsServer(listener.profile, noSniCertificate),
      acceptsName: (name) => selectByName(sni, name, fallback) !== undefined,
      helloTimeoutMs: HELLO_TIMEOUT_MS,
      onUnknownName: () => metrics.handshakes.inc({ result: 'unknown_name', tls_version: 'none', resumed: 'false' }),
      limit: connectionLimit,
      onRejected: () => metrics.rejectedConnections.inc(),
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
    await new Promise<void>((resolve, reject) => {
      front.once('error', reject);
      front.listen({ host: listener.host, port: listener.port, exclusive: false }, () => {
        front.off('error', reject);
        resolve();
      });
    });
    fronts.push(front);
  }
  const ports = fronts.map((s) => (s.address() as net.AddressInfo).port);
  let redirect: http.Server | undefined;
  const plain = config.httpRedirect;
  if (plain !== null) {
    redirect = http.createServer(createRedirectHandler({ domains: () => domains, pools, trustedPeers, httpsPort: ports[0] ?? 443, log, metrics }));
    const server = redirect;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: plain.host, port: plain.port, exclusive: false }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }
  const httpPort = redirect === undefined ? undefined : (redirect.address() as net.AddressInfo).port;
  log.info({ ports, httpPort, certificates: certificates.length, domains: config.domains.length, contexts: contexts.size }, 'proxy worker listening');

  let closing: Promise<void> | undefined;
  return {
    ports,
    httpPort,
    bridge,
    setTicketKey(key) {
      for (const server of tlsServers) server.setTicketKeys(key);
    },
    close() {
      closing ??= (async () => {
        for (const front of fronts) front.close();
        redirect?.close();
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
      })();
      return closing;
    },
  };
}

function sniCallback(
  profile: TlsProfileName,
  index: NameIndex<ServedCertificate>,
  fallback: ServedCertificate | undefined,
  contexts: SecureContextCache,
  log: Logger,
): (servername: string, callback: (err: Error | null, context?: tls.SecureContext) => void) => void {
  return (servername, callback) => {
    const selected = selectByName(index, servername, fallback);
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
