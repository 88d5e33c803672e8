/**
 * The origins of the running configuration: one undici keep-alive Pool per
 * origin (URL plus the TLS trust used to reach it), the balancer's health
 * state, and what a request needs to reach an origin (Host, SNI, CA).
 *
 * TLS to https:// origins is always verified (rejectUnauthorized): against
 * the domain's `originTls.ca`, or Node's bundled roots (plus
 * NODE_EXTRA_CA_CERTS) without one. The name sent as SNI and checked against
 * the certificate is `originTls.servername`, else the URL's host name (an IP
 * literal sends no SNI, RFC 6066 §3, and is checked against IP SANs).
 *
 * Admission: each origin's Pool has `maxConnections` connections, and a gate
 * (origin-gate.ts) in front of it bounds the requests waiting for one, since
 * undici queues without bound. Request bodies are read by `bodies` (body.ts)
 * before a request takes its place at the gate.
 *
 * CA files are read in the primary alone (`readOriginCas`, at each pass of the
 * reload path), which sends what it read and checked with the routing table
 * (`OriginCas`): a worker that starts later (a crash's replacement) or
 * applies a reload a moment later serves what was checked, whatever became
 * of the file since.
 *
 * Lifecycle: `retain(domains, cas)` at start and after each reload takes
 * each domain's CA (a bad one throws before anything changes), then keeps the
 * pools and health of origins still configured and closes the others once
 * their in-flight requests finish. A request still on its way to a dropped
 * origin gets a pool of its own, gone when it ends (`dispatch`), behind the
 * origin's gate, kept while it is in use (`gate`).
 * Single-threaded: one instance per worker.
 */
import { createHash, X509Certificate } from 'node:crypto';
import net from 'node:net';
import type tls from 'node:tls';
import { buildConnector, type Dispatcher, Pool } from 'undici';
import type { ProxyConfig, ProxyDomain } from '../../config/proxy-schema.js';
import { readSettingFile } from '../../config/setting-file.js';
import { ConfigError } from '../../keyserver/shared/errors.js';
import { Balancer } from './balancer.js';
import { RequestBodies, type RequestBodyLimits } from './body.js';
import { OriginGate } from './origin-gate.js';
import { finishWhenPaused } from './origin-eof.js';
import { acceptInterimAnswers } from './origin-interim.js';
import { readTrailerSections } from './origin-trailers.js';
import { acceptHigherMinorVersions } from './origin-version.js';

export interface OriginTimeouts {
  /** TCP (and TLS) connect to an origin: past it, 502. */
  readonly connectMs: number;
  /** From the request sent to the answer's headers: past it, 504. */
  readonly responseMs: number;
}

export interface OriginPoolOptions extends OriginTimeouts {
  /** How long an origin that failed is skipped (balancer.ts). */
  readonly failureCooldownMs?: number;
  /** The clock of the cool-downs, in ms; injected by tests. */
  readonly now?: () => number;
  /** Per origin in this worker: connections, requests that may wait for one, and how long (origin-gate.ts). */
  readonly admission?: OriginAdmission;
  /** How request bodies are read (body.ts). */
  readonly bodies?: RequestBodyLimits;
  /** An answer the client takes nothing of for this long is cut (send-stall.ts). */
  readonly sendTimeoutMs?: number;
  /** An answer whose origin sends nothing more of its body for this long is cut; null or absent: never. */
  readonly readMs?: number | null;
}

export interface OriginAdmission {
  readonly maxConnections: number;
  readonly maxQueue: number;
  readonly queueTimeoutMs: number;
}

const DEFAULT_ADMISSION: OriginAdmission = { maxConnections: 64, maxQueue: 256, queueTimeoutMs: 10_000 };

/** A worker's pool options from its config's `limits`. */
export function originPoolOptions(limits: ProxyConfig['limits']): OriginPoolOptions {
  return {
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
    readMs: limits.originReadTimeoutMs,
  };
}

/**
 * The content of each origin CA file the routing table names (its resolved path
 * → its PEM), as the primary read and checked it (`readOriginCas`).
 */
export type OriginCas = Readonly<Record<string, string>>;

/** One origin as a request reaches it. */
export interface OriginTarget {
  /** The pool's identity: URL, SNI name and CA digest (health is kept per key). */
  readonly key: string;
  readonly url: URL;
  /** The Host header to send, given the client's. */
  readonly host: (clientHost: string | undefined) => string | undefined;
  /** For https:// origins: what tls.connect needs; undefined for http://. */
  readonly tls: { readonly ca: string | undefined; readonly servername: string | undefined } | undefined;
}

const DEFAULT_TIMEOUTS: OriginTimeouts = { connectMs: 10_000, responseMs: 60_000 };

export class OriginPools {
  readonly timeouts: OriginTimeouts;
  readonly admission: OriginAdmission;
  readonly bodies: RequestBodies;
  readonly sendTimeoutMs: number;
  /** undici's bodyTimeout (and an upgrade's relayed answer's, upgrade-relay.ts): 0 is none. */
  readonly readMs: number;
  readonly #pools = new Map<string, Pool>();
  readonly #gates = new Map<string, OriginGate>();
  readonly #balancer: Balancer;
  /** The targets of each domain object of the current configuration, in config order. */
  #targets = new WeakMap<ProxyDomain, readonly OriginTarget[]>();
  /** The CA files' content sent with the configuration `retain` last made current. */
  #cas: OriginCas | undefined = undefined;
  /** The origins (keys) of the configuration `retain` last made current; undefined before the first. */
  #configured: ReadonlySet<string> | undefined = undefined;
  /** Connections of requests sent again (`dispatch`'s `fresh`) open now, per origin: they count with its pool's. */
  readonly #fresh = new Map<string, number>();
  /** Requests sent again after the keep-alive race (`dispatch`'s `fresh`), for keyedge_proxy_origin_resends_total. */
  resends = 0;

  constructor(options: OriginPoolOptions = DEFAULT_TIMEOUTS) {
    this.timeouts = { connectMs: options.connectMs, responseMs: options.responseMs };
    this.admission = options.admission ?? DEFAULT_ADMISSION;
    this.bodies = new RequestBodies(options.bodies);
    this.sendTimeoutMs = options.sendTimeoutMs ?? 60_000;
    this.readMs = options.readMs ?? 0;
    this.#balancer = new Balancer(options.failureCooldownMs ?? 10_000, options.now);
  }

  /**
   * The origins of `domain` in the order to try them (balancer.ts). A domain
   * not yet seen by `retain` is prepared now (its CA from the ones `retain`
   * was given, else read from its file): a failure then fails this request only.
   */
  targets(domain: ProxyDomain): readonly OriginTarget[] {
    let targets = this.#targets.get(domain);
    if (targets === undefined) {
      targets = prepareTargets(domain, this.#cas);
      this.#targets.set(domain, targets);
    }
    if (targets.length === 1) return targets;
    const byKey = new Map(targets.map((t) => [t.key, t]));
    return this.#balancer
      .order(
        domain.name,
        targets.map((t) => t.key),
      )
      .map((key) => byKey.get(key)!);
  }

  /** The pool of `target`'s origin, made on first use and kept until a reload drops the origin (`retain`). */
  pool(target: OriginTarget): Pool {
    let pool = this.#pools.get(target.key);
    if (pool === undefined) {
      pool = this.#newPool(target);
      this.#pools.set(target.key, pool);
    }
    return pool;
  }

  /**
   * Sends `request` to `target`'s origin through its pool. A request on its
   * way when a reload dropped that origin (its body still being read, a
   * place at the gate awaited, a retry) gets a pool of its own, closed once
   * the request ends: put in the table, it would hold its connections until
   * the next reload. The check runs only when the table has no pool. A
   * request sent again because a connection closed under it (`fresh`,
   * origin-exchange.ts) gets one too: the pool may hand it to another idle
   * connection, which an origin that closed one may be closing as well. That
   * connection counts with the pool's against `maxConnections`: the gate
   * bounds requests, not connections, and the pool keeps its idle ones, so a
   * request admitted as the raced one left its place reopens the pool's
   * closed connection, and the resend, admitted in turn, would have been one
   * connection past the bound (one more for each resend at once). With the
   * pool's connections and the other resends' at the bound, the resend goes
   * through the pool as any request: on an idle connection, which may be
   * closing too (then it fails as any request), or on the next one free.
   */
  dispatch(target: OriginTarget, request: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler, fresh = false): void {
    if (fresh) this.resends++;
    const pool = this.#pools.get(target.key);
    if (pool !== undefined && !(fresh && this.#roomForFresh(target.key, pool))) return void pool.dispatch(request, handler);
    if (pool === undefined && !fresh && !this.#dropped(target)) return void this.pool(target).dispatch(request, handler);
    const own = this.#newPool(target);
    own.dispatch(request, handler);
    if (fresh) this.#fresh.set(target.key, (this.#fresh.get(target.key) ?? 0) + 1);
    // undici's close() lets the request finish, then closes the connection.
    void own
      .close()
      .catch(() => undefined)
      .then(() => fresh && this.#freshClosed(target.key));
  }

  /** Whether the pool's connections and the resends' open ones leave room for one more connection to the origin. */
  #roomForFresh(key: string, pool: Pool): boolean {
    return pool.stats.connected + (this.#fresh.get(key) ?? 0) < this.admission.maxConnections;
  }

  #freshClosed(key: string): void {
    const open = (this.#fresh.get(key) ?? 1) - 1;
    if (open > 0) this.#fresh.set(key, open);
    else this.#fresh.delete(key);
  }

  /**
   * The admission gate of `target`'s origin; kept with its pool. A dropped
   * origin's is kept too while requests on their way to it pass it
   * (`dispatch`), so that they share its cap: a gate of each request's own
   * would let every request routed before the reload (bodies still being
   * read, any number of them) open its own connection at once.
   */
  gate(target: OriginTarget): OriginGate {
    let gate = this.#gates.get(target.key);
    if (gate === undefined) {
      const { maxConnections, maxQueue, queueTimeoutMs } = this.admission;
      gate = new OriginGate(maxConnections, maxQueue, queueTimeoutMs);
      this.#gates.set(target.key, gate);
    }
    return gate;
  }

  /** Whether a reload has dropped `target`'s origin since the request for it took it (before the first `retain`: none). */
  #dropped(target: OriginTarget): boolean {
    return this.#configured !== undefined && !this.#configured.has(target.key);
  }

  #newPool(target: OriginTarget): Pool {
    return new Pool(target.url.origin, {
      connections: this.admission.maxConnections,
      keepAliveTimeout: 30_000,
      pipelining: 1,
      headersTimeout: this.timeouts.responseMs,
      // Between two reads of the body (nginx's proxy_read_timeout); undici does not count it while the body is
      // paused for a client that is not reading (its parser's timeout skips a paused parser, and resuming restarts it).
      bodyTimeout: this.readMs,
      connect: connector(target, this.timeouts.connectMs),
    });
  }

  failed(target: OriginTarget): void {
    this.#balancer.failed(target.key);
  }

  succeeded(target: OriginTarget): void {
    this.#balancer.succeeded(target.key);
  }

  healthy(target: OriginTarget): boolean {
    return this.#balancer.healthy(target.key);
  }

  /**
   * Makes `domains` the configured set: prepares each one's targets with its
   * CA from `cas` (the primary's, sent with the routing table; a CA file not
   * in it, as for a worker run without a primary, is read here: a ConfigError
   * naming the domain and file when it cannot be used, with nothing changed),
   * keeps the pools and health of origins still in use, and closes the others
   * after their in-flight requests.
   */
  retain(domains: Iterable<ProxyDomain>, cas?: OriginCas): void {
    const prepared = new WeakMap<ProxyDomain, readonly OriginTarget[]>();
    const keys = new Set<string>();
    const groups = new Set<string>();
    for (const domain of domains) {
      const targets = prepareTargets(domain, cas);
      prepared.set(domain, targets);
      groups.add(domain.name);
      for (const t of targets) keys.add(t.key);
    }
    this.#targets = prepared;
    this.#cas = cas;
    this.#configured = keys;
    this.#balancer.retain(keys, groups);
    // A dropped origin's gate goes with it once idle; one its requests still pass stays, for those on their way to it
    // (`gate`), until a later reload finds it idle: one small object per dropped origin at most.
    for (const [key, gate] of this.#gates) if (!keys.has(key) && idle(gate)) this.#gates.delete(key);
    for (const [key, pool] of this.#pools) {
      if (keys.has(key)) continue;
      this.#pools.delete(key);
      // undici's close() lets queued and running requests finish first.
      void pool.close().catch(() => undefined);
    }
  }

  /** Number of open pools (one per origin in use). */
  get size(): number {
    return this.#pools.size;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#pools.values()].map((pool) => pool.close()));
    this.#pools.clear();
  }
}

/** No request running through `gate` or waiting at it. */
function idle(gate: OriginGate): boolean {
  const { active, waiting } = gate.load;
  return active === 0 && waiting === 0;
}

/** Far past a CA bundle: the system's whole trust store is some 200 KB. */
const MAX_CA_BYTES = 4 * 1024 * 1024;

function readCa(domain: ProxyDomain, file: string): string {
  let pem: string;
  try {
    // Read in the primary on each reload: a FIFO or /dev/zero there held its event loop.
    pem = readSettingFile(file, MAX_CA_BYTES).toString('utf8');
  } catch (err) {
    throw new ConfigError(file, `domains[${domain.name}].originTls.ca`, `cannot read the CA file (${(err as Error).message})`, { cause: err });
  }
  try {
    new X509Certificate(pem);
  } catch (err) {
    throw new ConfigError(file, `domains[${domain.name}].originTls.ca`, 'expected PEM certificates (the CA that issued the origin certificates)', {
      cause: err,
    });
  }
  return pem;
}

/**
 * Reads and checks every domain's origin CA file (readable and PEM), each
 * once, throwing a ConfigError naming the domain and file when one cannot be
 * used: the reload path runs it before a routing change reaches any worker,
 * and sends what it read with the routing table, so that no worker reads the
 * file again (one deleted or rewritten since would fail a worker's start, for
 * ever, or its apply of a reload the primary already took).
 */
export function readOriginCas(domains: Iterable<ProxyDomain>): OriginCas {
  const cas: Record<string, string> = {};
  for (const domain of domains) {
    const file = caFile(domain);
    if (file !== undefined && !Object.hasOwn(cas, file)) cas[file] = readCa(domain, file);
  }
  return cas;
}

/** The CA file `domain`'s https:// origins are verified against; undefined: none (Node's roots, or no https:// origin). */
function caFile(domain: ProxyDomain): string | undefined {
  return domain.originTls.ca === null || !domain.origins.some((o) => o.startsWith('https:')) ? undefined : domain.originTls.ca;
}

function prepareTargets(domain: ProxyDomain, cas: OriginCas | undefined): readonly OriginTarget[] {
  const file = caFile(domain);
  const ca = file === undefined ? undefined : cas !== undefined && Object.hasOwn(cas, file) ? cas[file] : readCa(domain, file);
  const caDigest = ca === undefined ? 'default' : createHash('sha256').update(ca).digest('hex');
  return domain.origins.map((origin) => {
    const url = new URL(origin);
    const https = url.protocol === 'https:';
    const bare = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const servername = domain.originTls.servername ?? (net.isIP(bare) === 0 ? bare : undefined);
    // The rule for http:// origins is "Host preserved"; an https://
    // origin gets its own name, which its certificate is checked against.
    const mode = domain.originHost ?? (https ? 'origin' : 'client');
    return {
      key: https ? `${url.origin} sni=${servername ?? ''} ca=${caDigest}` : url.origin,
      url,
      host: mode === 'origin' ? () => url.host : (clientHost) => clientHost,
      tls: https ? { ca, servername } : undefined,
    };
  });
}

/**
 * undici's connector with the target's TLS trust. The SNI name is fixed per
 * target: undici would otherwise derive it from each request's Host header,
 * and reconnect whenever that changes. Each connection reads an unasked-for
 * 100 (Continue) as interim, and no interim answer restarts its head timeout
 * (origin-interim.ts); its parser finishes when the origin ends the connection
 * while the answer waits for the client (origin-eof.ts), an answer whose
 * trailers say `Connection: close` closes it and one whose trailers hold
 * framing fields is not refused for them (origin-trailers.ts), and a status
 * line of a higher HTTP/1 minor version is read as HTTP/1.1
 * (origin-version.ts).
 */
function connector(target: OriginTarget, timeoutMs: number): buildConnector.connector {
  const base = buildConnector({
    timeout: timeoutMs,
    ...(target.tls === undefined
      ? {}
      : { ca: target.tls.ca, rejectUnauthorized: true, ...(target.tls.servername === undefined ? {} : { servername: target.tls.servername }) }),
  } as buildConnector.BuildOptions & tls.ConnectionOptions);
  return (options, callback) =>
    base({ ...options, servername: target.tls?.servername ?? undefined }, (...args) => {
      callback(...args);
      // undici attached its parser in the callback; the first answer is read on a later turn.
      if (args[0] === null) {
        acceptInterimAnswers(args[1]);
        finishWhenPaused(args[1]);
        readTrailerSections(args[1]);
        // Last: its check of the version runs before the others see the head.
        acceptHigherMinorVersions(args[1]);
      }
    });
}

/** The `servername` to give undici per request: constant per target, so undici never reconnects over it. */
export function requestServername(target: OriginTarget): string {
  return target.tls?.servername ?? target.url.hostname;
}
