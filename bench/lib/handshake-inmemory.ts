/**
 * The comparison server of bench/handshake.ts: the proxy's own modules put
 * together the way proxy/worker.ts and proxy/cluster.ts put them together,
 * but each certificate's private key is a real PEM key file held in memory,
 * and there is no keyless bridge. It is a bench script, not a mode of the
 * product: the difference between the two is exactly the keyless hop (the
 * provider's synchronous RPC and the key server's sign instead of an
 * in-process sign).
 *
 * Same as the product, piece by piece:
 *   - node:cluster, SCHED_NONE, `workers` workers each accepting on the shared
 *     socket (`exclusive: false`); the primary makes the session-ticket key and
 *     hands it to every worker, and serves the summed metrics on an admin port;
 *   - per worker: createTlsFront (ClientHello peek) → an https.Server with
 *     TLS_PROFILES[profile] whose SNI callback selects by name (names.ts) and
 *     takes the context from a SecureContextCache (contexts.ts), OCSP stapler
 *     wiring, ProxyMetrics (handshakes, duration, connections, event loop),
 *     createRequestHandler + OriginPools (undici) for the origin, the product's
 *     pino logger at the configured level (one access line per request at info).
 * Different: `key:` is the PEM key read from the file named in the config,
 * and the keyless counters in ProxyMetrics read zero.
 *
 * Usage: node dist/bench/lib/handshake-inmemory.js --config FILE
 * FILE is the JSON of `InMemoryConfig`. When every worker listens the primary
 * prints one JSON line `{"msg":"in-memory ready","port":…,"workers":[pid…]}`
 * on stdout. SIGTERM/SIGINT to the primary stops the workers (open
 * connections get `shutdownGraceMs`) and then the primary.
 */
import cluster, { type Worker } from 'node:cluster';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import { parseArgs } from 'node:util';
import { AggregatorRegistry } from 'prom-client';
import { PROXY_DEFAULTS, type TlsProfileName } from '../../config/proxy-schema.js';
import { createLogger, type Logger } from '../../keyserver/shared/log.js';
import { loadCertificateFile, type ServedCertificate } from '../../proxy/certs/certificate.js';
import { createRequestHandler, type Domain } from '../../proxy/http/handler.js';
import { OriginPools } from '../../proxy/http/forward.js';
import type { KeylessStats } from '../../proxy/keyless/bridge.js';
import { ProxyMetrics } from '../../proxy/metrics.js';
import { SecureContextCache } from '../../proxy/tls/contexts.js';
import { createTlsFront } from '../../proxy/tls/front.js';
import { buildNameIndex, type NameIndex, selectByName } from '../../proxy/tls/names.js';
import { OcspStapler } from '../../proxy/tls/ocsp.js';
import { TLS_PROFILES } from '../../proxy/tls/profile.js';
import { decodeTicketKey, isTicketKeyMessage, newTicketKey, ticketKeyMessage } from '../../proxy/tls/tickets.js';
import { listen } from '../../keyserver/shared/listen.js';

export interface InMemoryConfig {
  readonly host: string;
  readonly port: number;
  readonly workers: number;
  readonly profile: TlsProfileName;
  /** `key` is a PEM private key file: the point of this server. */
  readonly certificates: readonly { readonly name: string; readonly chain: string; readonly key: string }[];
  readonly domains: readonly { readonly name: string; readonly origin: string }[];
  readonly admin: { readonly host: string; readonly port: number };
  readonly logLevel: string;
  readonly hstsMaxAgeSeconds: number;
  readonly ocspStapling: boolean;
  readonly shutdownGraceMs: number;
}

/** As the default of limits.handshakeTimeoutMs (config/proxy-schema.ts). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** The product's default tls.contextCacheSize. */
const CONTEXT_CACHE_SIZE = 1000;

const NO_KEYLESS: KeylessStats = { signs: 0, failures: { connect: 0, timeout: 0, remote: 0, protocol: 0, breaker: 0 }, lastError: '' };

const READY = 'bench:inmemory-ready';
const SHUTDOWN = 'bench:inmemory-shutdown';
const WANT_TICKET_KEY = 'bench:want-ticket-key';

const isType = (message: unknown, type: string): boolean => typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;

// ---------------------------------------------------------------------------
// Worker: startProxyWorker with a key file instead of the bridge.

interface RunningInMemoryWorker {
  readonly port: number;
  setTicketKey(key: Buffer): void;
  close(): Promise<void>;
}

async function startInMemoryWorker(config: InMemoryConfig, log: Logger, ticketKey: Buffer): Promise<RunningInMemoryWorker> {
  const certificates = config.certificates.map((c) => loadCertificateFile(c.name, c.chain));
  const keyPem = new Map(config.certificates.map((c) => [c.name, readFileSync(c.key, 'utf8')]));
  const sni = buildNameIndex(certificates.map((c) => ({ names: c.names, value: c })));
  const contexts = new SecureContextCache(CONTEXT_CACHE_SIZE, (c) => {
    const pem = keyPem.get(c.name);
    if (pem === undefined) throw new Error(`no key file for certificate '${c.name}'`);
    return pem;
  });
  for (const certificate of certificates) contexts.build(config.profile, certificate); // a key/cert mismatch fails the start
  contexts.warm([config.profile], certificates);
  const stapler = new OcspStapler(log);
  if (config.ocspStapling) for (const certificate of certificates) stapler.track(certificate);

  const domains: NameIndex<Domain> = buildNameIndex(
    config.domains.map((d) => ({
      names: [d.name],
      value: {
        name: d.name,
        origins: [d.origin],
        originHost: null,
        originTls: { ca: null, servername: null },
        maxBodyBytes: null,
        hsts: { includeSubDomains: false, preload: false },
      },
    })),
  );
  const pools = new OriginPools();
  const metrics = new ProxyMetrics(() => NO_KEYLESS);
  // As worker.ts: the names the connection's certificate covers (no default certificate here).
  const certificateNames = (servername: string | undefined): readonly string[] =>
    (servername === undefined ? undefined : selectByName<ServedCertificate>(sni, servername, undefined)?.value)?.names ?? [];
  const handler = createRequestHandler({
    domains: () => domains,
    certificateNames,
    pools,
    maxBodyBytes: PROXY_DEFAULTS.limits.maxBodyBytes,
    hstsMaxAgeSeconds: config.hstsMaxAgeSeconds,
    log,
    metrics,
  });

  const sockets = new Set<net.Socket>();
  const acceptedAt = new WeakMap<net.Socket, bigint>();
  const onSecure = (socket: tls.TLSSocket): void => {
    const resumed = String(socket.isSessionReused());
    metrics.handshakes.inc({ result: 'ok', tls_version: socket.getProtocol() ?? 'unknown', resumed });
    const raw = (socket as tls.TLSSocket & { _parent?: net.Socket })._parent;
    const accepted = raw === undefined ? undefined : acceptedAt.get(raw);
    if (accepted !== undefined) metrics.handshakeDuration.observe({ resumed }, Number(process.hrtime.bigint() - accepted) / 1e9);
  };
  const server = https.createServer(
    {
      ...TLS_PROFILES[config.profile],
      SNICallback: (servername, callback) => {
        const selected = selectByName<ServedCertificate>(sni, servername, undefined);
        if (selected === undefined) {
          callback(new Error('no certificate for this server name'));
          return;
        }
        try {
          callback(null, contexts.get(config.profile, selected.value));
        } catch (err) {
          log.error({ certificate: selected.value.name, err }, 'secure context could not be built');
          callback(err as Error);
        }
      },
      ticketKeys: ticketKey,
    },
    handler,
  );
  if (config.ocspStapling) {
    server.on('OCSPRequest', (cert: Buffer, _issuer: Buffer, done: (err: Error | null, response?: Buffer | null) => void) =>
      done(null, stapler.stapleFor(cert) ?? null),
    );
  }
  server.on('tlsClientError', (err: NodeJS.ErrnoException) => {
    metrics.handshakes.inc({ result: 'failed', tls_version: 'none', resumed: 'false' });
    log.debug({ code: err.code, reason: err.message }, 'TLS handshake failed');
  });
  server.on('secureConnection', onSecure);

  const front = createTlsFront({
    withSni: server,
    withoutSni: undefined,
    acceptsName: (name) => selectByName(sni, name, undefined) !== undefined,
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
    onUnknownName: () => metrics.handshakes.inc({ result: 'unknown_name', tls_version: 'none', resumed: 'false' }),
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
  await listen(front, { host: config.host, port: config.port, exclusive: false });
  const port = (front.address() as net.AddressInfo).port;
  log.info({ port, certificates: certificates.length }, 'in-memory worker listening');

  let closing: Promise<void> | undefined;
  return {
    port,
    setTicketKey: (key) => server.setTicketKeys(key),
    close() {
      closing ??= (async () => {
        front.close();
        server.close(() => undefined);
        const allClosed = new Promise<void>((resolve) => {
          const check = (): void => (sockets.size === 0 ? resolve() : void setTimeout(check, 20));
          check();
        });
        await Promise.race([allClosed, new Promise<void>((resolve) => setTimeout(resolve, config.shutdownGraceMs).unref())]);
        for (const socket of sockets) socket.destroy();
        stapler.stop();
        metrics.stop();
        await pools.close();
      })();
      return closing;
    },
  };
}

async function runWorker(config: InMemoryConfig): Promise<void> {
  const log = createLogger(`inmemory-worker-${cluster.worker?.id ?? 0}`, config.logLevel);
  new AggregatorRegistry(); // answers the primary's metrics requests, as proxy/cluster.ts
  const firstKey = await new Promise<Buffer>((resolve) => {
    const onMessage = (message: unknown): void => {
      if (!isTicketKeyMessage(message)) return;
      process.off('message', onMessage);
      resolve(decodeTicketKey(message));
    };
    process.on('message', onMessage);
    process.send?.({ type: WANT_TICKET_KEY });
  });
  const worker = await startInMemoryWorker(config, log, firstKey);
  process.send?.({ type: READY, port: worker.port });
  await new Promise<void>((resolve) => {
    const stop = (): void => void worker.close().then(resolve);
    process.on('message', (message: unknown) => {
      if (isTicketKeyMessage(message)) worker.setTicketKey(decodeTicketKey(message));
      else if (isType(message, SHUTDOWN)) stop();
    });
    process.once('SIGTERM', stop);
    process.once('SIGINT', () => undefined);
  });
  process.disconnect?.();
}

// ---------------------------------------------------------------------------
// Primary

async function runPrimary(config: InMemoryConfig): Promise<void> {
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  const ticketKey = newTicketKey();
  const aggregator = new AggregatorRegistry();
  const admin = http.createServer((req, res) => {
    if ((req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    aggregator.clusterMetrics().then(
      (body) => res.writeHead(200, { 'content-type': aggregator.contentType }).end(body),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  await listen(admin, { host: config.admin.host, port: config.admin.port });

  let stopping = false;
  const workers: Worker[] = [];
  const ready = new Map<Worker, number>();
  await new Promise<void>((resolve, reject) => {
    for (let i = 0; i < config.workers; i++) {
      const worker = cluster.fork();
      workers.push(worker);
      worker.on('message', (message: unknown) => {
        if (isType(message, WANT_TICKET_KEY)) worker.send(ticketKeyMessage(ticketKey));
        else if (isType(message, READY)) {
          ready.set(worker, (message as { port: number }).port);
          if (ready.size === config.workers) resolve();
        }
      });
      worker.once('exit', (code, signal) => {
        if (!stopping) reject(new Error(`in-memory worker ${worker.process.pid} exited during start-up (${signal ?? `status ${code}`})`));
      });
    }
  });
  process.stdout.write(`${JSON.stringify({ msg: 'in-memory ready', port: [...ready.values()][0], workers: workers.map((w) => w.process.pid) })}\n`);
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) process.stderr.write(`in-memory worker ${worker.process.pid} died (${signal ?? `status ${code}`})\n`);
  });

  await new Promise<void>((resolve) => {
    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      const alive = workers.filter((w) => !w.isDead());
      if (alive.length === 0) return resolve();
      let left = alive.length;
      for (const worker of alive) {
        worker.once('exit', () => --left === 0 && resolve());
        worker.send({ type: SHUTDOWN });
      }
      setTimeout(() => {
        for (const worker of alive) if (!worker.isDead()) worker.kill('SIGKILL');
      }, config.shutdownGraceMs + 5_000).unref();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  admin.close();
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
  if (values.config === undefined) throw new Error('usage: handshake-inmemory.js --config FILE');
  const config = JSON.parse(readFileSync(values.config, 'utf8')) as InMemoryConfig;
  if (cluster.isPrimary) await runPrimary(config);
  else await runWorker(config);
}

main().catch((err: unknown) => {
  process.stderr.write(`handshake-inmemory: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
  if (cluster.isPrimary) for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGKILL');
});
