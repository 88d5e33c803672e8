/**
 * The proxy's configuration: the shape of its JSON file, the one table of
 * defaults, and the resolved (frozen) form the proxy runs on.
 *
 * There is deliberately no private-key path anywhere in it: a certificate
 * entry names a chain file, and the key is found at the key server by the key
 * id of the chain's leaf (SHA-256 of its SPKI).
 */
import net from 'node:net';
import os from 'node:os';
import { z } from 'zod';
import { intIn, isObject, strict, text, port } from './schema-kit.js';
import { LOG_LEVELS } from './schema.js';

export type TlsProfileName = 'intermediate' | 'modern';

/** One key server: a unix socket (absolute path) or TCP with mutual TLS; `name` labels its metrics. */
export interface KeyserverEndpoint {
  readonly name: string;
  readonly socket: string | null;
  readonly tcp: {
    readonly host: string;
    readonly port: number;
    readonly ca: string;
    readonly cert: string;
    readonly key: string;
    readonly servername: string | null;
  } | null;
}

export interface ProxyConfig {
  readonly source: string;
  readonly stateDir: string;
  readonly workers: number;
  /**
   * The key servers: one (`keyserver.socket` or `.tcp` in the file) or a pool
   * (`keyserver.servers`), in configured order. `timeoutMs` bounds a whole
   * signature, failovers included; `healthIntervalMs` (pools only, 0 = off)
   * paces the PINGs that take a dead server out and bring it back.
   */
  readonly keyserver: {
    readonly servers: readonly KeyserverEndpoint[];
    readonly timeoutMs: number;
    readonly breakerMs: number;
    readonly healthIntervalMs: number;
  };
  /** `http2`: offer `h2` in ALPN next to `http/1.1` (RFC 9113 §3.2). */
  readonly listen: readonly { readonly host: string; readonly port: number; readonly profile: TlsProfileName; readonly http2: boolean }[];
  /** Plain HTTP (port 80 in production): 308 to HTTPS, ACME challenges to the origin. */
  readonly httpRedirect: { readonly host: string; readonly port: number } | null;
  readonly certificates: readonly { readonly name: string; readonly chain: string }[];
  /**
   * The certificate store (proxy/certs/store.ts): `<dir>/<name>.pem` chains
   * managed by `keyedge cert` or written by a renewal tool, served alongside
   * `certificates` and reloaded when they change. `dir` is absolute.
   * `intermediates`: a PEM file or a directory of them (absolute), CA
   * certificates that complete a chain given as its leaf alone
   * (proxy/certs/issuers.ts); null: only the system roots are known.
   */
  readonly certStore: { readonly dir: string; readonly rescanSeconds: number; readonly intermediates: string | null };
  readonly sni: { readonly default: string | null; readonly onUnknown: 'default' | 'reject' };
  readonly domains: readonly ProxyDomain[];
  /** Peers whose X-Forwarded-* and Forwarded headers are kept (and appended to). */
  readonly forwarding: { readonly trustedProxies: readonly string[] };
  readonly tls: {
    readonly hstsMaxAgeSeconds: number;
    readonly ticketKeyRotationSeconds: number;
    readonly contextCacheSize: number;
    readonly ocspStapling: boolean;
  };
  /** `tokenFile` holds the bearer token for every admin request that changes state. */
  readonly admin: { readonly host: string; readonly port: number; readonly tokenFile: string } | null;
  readonly log: { readonly level: string };
  readonly limits: {
    readonly maxHeaderBytes: number;
    readonly maxBodyBytes: number;
    readonly headerTimeoutMs: number;
    readonly keepAliveTimeoutMs: number;
    readonly originConnectTimeoutMs: number;
    readonly originResponseTimeoutMs: number;
    /** Between two reads of an answer's body from the origin; null: no bound. */
    readonly originReadTimeoutMs: number | null;
    readonly originFailureCooldownMs: number;
    readonly maxConnectionsPerWorker: number;
    /** From accept to the end of the TLS handshake. */
    readonly handshakeTimeoutMs: number;
    /** Open connections per client address (IPv6: per /64) in one worker; null: no cap. */
    readonly maxConnectionsPerClient: number | null;
    readonly bodyBufferBytes: number;
    readonly bodyBufferTotalBytes: number;
    readonly bodyIdleTimeoutMs: number;
    readonly bodyTimeoutMs: number;
    readonly sendTimeoutMs: number;
    readonly originMaxConnections: number;
    readonly originMaxQueue: number;
    readonly originQueueTimeoutMs: number;
    /** HTTP/2 (proxy/http2/): streams open at once per connection, idle connection close, reset streams tolerated. */
    readonly http2MaxConcurrentStreams: number;
    readonly http2IdleTimeoutMs: number;
    readonly http2MaxResetStreams: number;
  };
  readonly shutdownGraceMs: number;
  /** A worker not serving this long after it was started is killed and replaced (it hangs in its start). */
  readonly workerStartTimeoutMs: number;
  /** Managed certificates over ACME (proxy/acme/); null: off. */
  readonly acme: AcmeConfig | null;
  /**
   * The fleet's shared store (proxy/store/): certificates, routes and
   * session-ticket keys in etcd under `prefix`, shared by every node that
   * names the same prefix. null: the local certificate store (certStore) and
   * this file's domains, one node on its own. Paths are absolute.
   */
  readonly etcd: EtcdSettings | null;
}

export interface EtcdSettings {
  /** gRPC endpoints of the etcd members, http:// or https:// URLs. */
  readonly endpoints: readonly string[];
  /** Key prefix of this fleet, starting and ending with "/". */
  readonly prefix: string;
  /** TLS to etcd: its CA, and the node's client certificate when etcd asks for one (--client-cert-auth). */
  readonly tls: { readonly ca: string; readonly cert: string | null; readonly key: string | null } | null;
  /** etcd's own user/password auth; the password is read from a file, never put in this config. */
  readonly auth: { readonly username: string; readonly passwordFile: string } | null;
  /** Deadline of one etcd request (a read, a write, the health probe). */
  readonly timeoutMs: number;
  /** The largest request etcd accepts (its --max-request-bytes): a write past it is refused before it is sent. */
  readonly maxRequestBytes: number;
}

/** RFC 8555 §8.3 (answered on `httpRedirect`) and RFC 8737 (answered on the HTTPS listeners). */
export type AcmeChallengeType = 'http-01' | 'tls-alpn-01';

export interface AcmeConfig {
  /** The CA's directory URL (RFC 8555 §7.1.1). */
  readonly directory: string;
  /** PEM file of CAs trusted for the directory's HTTPS (a private or test CA); null: Node's bundled roots. */
  readonly caBundle: string | null;
  /** `mailto:` URLs for the account (RFC 8555 §7.3). */
  readonly contact: readonly string[];
  /** External account binding (RFC 8555 §7.3.4): the CA's key id and a file holding its base64url HMAC key. */
  readonly eab: { readonly kid: string; readonly hmacKeyFile: string } | null;
  readonly challenges: readonly AcmeChallengeType[];
  /** The type of every certificate key generated in the token. */
  readonly keyType: 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096';
  /** The key server's config file, for `keyedge key generate|delete` (they open the token); null: the embedded default. */
  readonly keyserverConfig: string | null;
  /** ACME profile asked for in each order; null: the CA's default. */
  readonly profile: string | null;
  /** Deadline of one HTTP request to the CA. */
  readonly timeoutMs: number;
  /** How long one order (authorizations, validation, finalize) may take in all. */
  readonly orderTimeoutSeconds: number;
  readonly renewal: {
    /** Renew this far into the lifetime (2/3: 60 of 90 days) unless the CA's ARI window says otherwise. */
    readonly lifetimeFraction: number;
    /** How often due renewals and key deletions are looked for. */
    readonly checkSeconds: number;
    /** Renewal times are moved earlier by up to this much, by a hash of the name, so many certificates never renew at once. */
    readonly spreadSeconds: number;
    /** Orders running at the same time. */
    readonly maxConcurrent: number;
    /** Backoff after a failure: min × 2^(failures-1), at most max, plus up to `jitter` of it at random (and never before Retry-After). */
    readonly retryMinSeconds: number;
    readonly retryMaxSeconds: number;
    readonly jitter: number;
    /** A new key per renewal; false: reuse the entry's key. */
    readonly newKey: boolean;
    /** The previous key is deleted from the token this long after the new certificate serves. */
    readonly keyGraceSeconds: number;
  };
  /** Certificates for names first seen in a handshake (proxy/acme/on-demand.ts); null: off. */
  readonly onDemand: OnDemandConfig | null;
}

export interface OnDemandConfig {
  /** Asked `GET ask?domain=NAME` before any order: 2xx allows; anything else, a failure or a timeout refuses. null: no ask. */
  readonly ask: string | null;
  readonly askTimeoutMs: number;
  /** With a name: the name's CNAME must be this (the edge's own name). null: no DNS check. */
  readonly cnameTarget: string | null;
  /** DNS server `host:port` for the CNAME check; null: the system's. */
  readonly resolver: string | null;
  /** A refused name is not asked about again for this long. */
  readonly refusedSeconds: number;
  readonly maxOrdersPerHour: number;
  readonly maxOrdersPerDomainPerHour: number;
  /** Names being checked (ask, DNS) at once; more are dropped, so a flood costs bounded work. */
  readonly maxPendingChecks: number;
}

export interface ProxyDomain {
  readonly name: string;
  /** Origin URLs (scheme, host, port; no path), tried in round robin. */
  readonly origins: readonly string[];
  /**
   * The Host sent to an origin: the client's, or the origin URL's host.
   * null: by scheme, the client's for http:// and the origin's for https://.
   */
  readonly originHost: 'client' | 'origin' | null;
  /** For https:// origins: CA file (null: Node's bundled roots) and the name to send as SNI and verify (null: the URL's host). */
  readonly originTls: { readonly ca: string | null; readonly servername: string | null };
  /** Overrides limits.maxBodyBytes for this domain; null: the global limit. */
  readonly maxBodyBytes: number | null;
  readonly hsts: { readonly includeSubDomains: boolean; readonly preload: boolean };
}

export const PROXY_DEFAULTS = Object.freeze({
  // Shared with the key server's default, so the embedded default finds its socket.
  stateDir: './var',
  // One worker per core: a worker is blocked while its key-server RPC runs, and
  // measurements here show two workers on one core cost more per handshake
  // than the blocked time they hide (bench/README.md).
  workers: Math.max(1, os.availableParallelism()),
  keyserver: Object.freeze({
    // Relative to stateDir: the key server's default socket.
    socket: 'keyserver.sock',
    // A handshake waits on this: a local key server answers in well under a
    // millisecond, so 250 ms means it is gone, and the worker must not stall longer.
    timeoutMs: 250,
    // After a failure, fail fast this long before trying to reconnect: short
    // enough that handshakes recover within a second of the key server's return.
    breakerMs: 200,
    // Pools only: each worker PINGs each key server this often. A PING costs
    // the key server next to nothing, and a second bounds how long an idle
    // worker keeps a dead server in its choice (a sign finds it sooner) and
    // how soon a returning one rejoins; a dead one is probed at doubling
    // intervals up to 8 × this.
    healthIntervalMs: 1_000,
  }),
  listen: Object.freeze([Object.freeze({ host: '127.0.0.1', port: 8443, profile: 'intermediate' as const })]),
  // Per listener, by profile: every browser speaks HTTP/2 over both profiles'
  // TLS versions and ciphers (RFC 9113 §9.2 forbids TLS < 1.2, which neither
  // profile offers), and on one connection per origin instead of six: fewer
  // full handshakes, fewer key-server signatures. nginx, HAProxy and Caddy
  // offer h2 by default. Its limits (streams, resets, idle, stall) are below.
  listenHttp2: Object.freeze({ intermediate: true, modern: true }),
  // Off unless configured: port 80 needs privileges and is a deployment choice.
  httpRedirect: null,
  certStore: Object.freeze({
    // Relative to stateDir (./var/certs): state the proxy manages, next to the key server's.
    dir: 'certs',
    // fs.watch misses changes on network file systems and when the directory
    // itself is replaced; a rescan of a few stat() calls every 30 s bounds how
    // long a renewal can go unnoticed at no measurable cost.
    rescanSeconds: 30,
    // None: a chain must carry its intermediates, as certbot's fullchain.pem does.
    intermediates: null,
  }),
  sni: Object.freeze({
    default: null,
    // Serving a default certificate for an unknown name shows a mismatch to a
    // browser anyway; refusing says so at the TLS layer (unrecognized_name).
    onUnknown: 'reject' as const,
  }),
  tls: Object.freeze({
    // Two years, as HSTS preload lists require (hstspreload.org).
    hstsMaxAgeSeconds: 63_072_000,
    // Mozilla's guidelines rotate ticket keys at least daily; half a day keeps
    // a stolen key's window small while most returning clients still resume.
    ticketKeyRotationSeconds: 43_200,
    // Bounded: memory per context is measured in bench/; 1000 covers a large
    // edge's hot set while a long tail of names is built on first use.
    contextCacheSize: 1000,
    ocspStapling: true,
  }),
  // Loopback, next to the key server's 9464. The token file is relative to
  // stateDir; without it, admin requests that change state are refused.
  admin: Object.freeze({ host: '127.0.0.1', port: 9465, tokenFile: 'admin.token' }),
  log: Object.freeze({ level: 'info' as const }),
  // In-flight requests finish on restart, well within systemd's 90 s stop timeout.
  shutdownGraceMs: 10_000,
  // A worker serves within seconds of its start even with 100,000 certificates (README, Performance); ten times that.
  workerStartTimeoutMs: 60_000,
  // One node on its own needs no shared store: the certificate store directory is the embedded default.
  etcd: null,
  etcdSettings: Object.freeze({
    // One fleet per etcd cluster unless told otherwise; a prefix per fleet lets several share one cluster.
    prefix: '/keyedge/default/',
    // etcd answers a quorum read in milliseconds; 2 s means the member or its quorum is gone,
    // and a node then serves its last good state (degraded) rather than wait.
    timeoutMs: 2_000,
    // etcd's own default --max-request-bytes (1.5 MiB): a value past it is refused before it is sent, named,
    // rather than by etcd as a failure that looked like etcd away. Set it to what the cluster runs with.
    maxRequestBytes: 1_572_864,
  }),
  forwarding: Object.freeze({
    // No peer is trusted unless listed: otherwise any client could forge the
    // address an origin sees in X-Forwarded-For.
    trustedProxies: Object.freeze([] as string[]),
  }),
  // Off: issuing needs a CA, a contact and port 80 or 443 reachable from it.
  acme: null,
  acmeDefaults: Object.freeze({
    caBundle: null,
    contact: Object.freeze([] as string[]),
    eab: null,
    // HTTP-01 needs only the port-80 listener, which the redirect already is; TLS-ALPN-01 is opt-in (port 443, no wildcards).
    challenges: Object.freeze(['http-01' as const]),
    // P-256: the cheapest handshake signature, accepted by every CA and client.
    keyType: 'ec-p256' as const,
    keyserverConfig: null,
    profile: null,
    // A CA answers in well under a second; 30 s covers a loaded one without hanging a renewal forever.
    timeoutMs: 30_000,
    // Validation by a public CA takes seconds; ten minutes bounds an order stuck in pending.
    orderTimeoutSeconds: 600,
    renewal: Object.freeze({
      // Let's Encrypt's own advice: renew at two thirds of the lifetime (day 60 of 90).
      lifetimeFraction: 2 / 3,
      // Renewal times are days apart; an hourly look costs nothing and catches a missed one soon.
      checkSeconds: 3600,
      // A day: a thousand certificates loaded at once renew over a day, not in one burst.
      spreadSeconds: 86_400,
      maxConcurrent: 4,
      // certbot-like: a minute first, doubling to a day (a third of a 90-day lifetime leaves ~30 tries).
      retryMinSeconds: 60,
      retryMaxSeconds: 86_400,
      jitter: 0.5,
      newKey: true,
      // Connections opened with the old certificate never need its key again after their handshake; a day covers
      // an operator's rollback of the store entry.
      keyGraceSeconds: 86_400,
    }),
    // Off: issuing for any name a handshake brings needs the operator's allow-list (ask) or DNS check.
    onDemand: null,
  }),
  onDemandDefaults: Object.freeze({
    ask: null,
    // The ask endpoint is the operator's own service: two seconds is slow for it; on failure the name is refused.
    askTimeoutMs: 2_000,
    cnameTarget: null,
    resolver: null,
    // An hour: a flood of refused names is checked once per name per hour.
    refusedSeconds: 3_600,
    // Let's Encrypt allows 300 new orders per 3 hours per account; 100 an hour in all, 10 per registered domain
    // (its 50 per week per domain), leaves room for renewals and stops a wildcard CNAME flood early.
    maxOrdersPerHour: 100,
    maxOrdersPerDomainPerHour: 10,
    maxPendingChecks: 16,
  }),
  limits: Object.freeze({
    // nginx's large_client_header_buffers default (4 × 8 KiB) is the practical
    // ceiling browsers and CDNs stay under; 16 KiB is Node's own default.
    maxHeaderBytes: 16_384,
    // Request bodies: 10 MiB covers forms and API calls; uploads beyond that
    // are a per-deployment decision.
    maxBodyBytes: 10 * 1024 * 1024,
    // A client that has not sent its headers within 10 s is a slowloris, not a user.
    headerTimeoutMs: 10_000,
    // Idle keep-alive connections: a little above typical browser reuse windows.
    keepAliveTimeoutMs: 5_000,
    // An origin that does not take the connection within 10 s is down (502).
    originConnectTimeoutMs: 10_000,
    // Waiting a minute for an answer's headers matches common load balancers (504 after).
    originResponseTimeoutMs: 60_000,
    // nginx's proxy_read_timeout (HAProxy's timeout server): an origin that
    // sends nothing more of an answer for a minute has stalled, and would hold
    // the client, an origin connection and its gate place for ever. Not
    // counted while the client is the one not reading (sendTimeoutMs is).
    // Event streams with rarer heartbeats: raise it, or null.
    originReadTimeoutMs: 60_000,
    // nginx's fail_timeout default: a dead origin costs one failed attempt per
    // 10 s instead of one per request, and a restarted one is back within 10 s.
    originFailureCooldownMs: 10_000,
    // An open TLS connection holds tens of KiB in a worker (OpenSSL buffers,
    // socket and parser state); 10,000 keeps a flood of idle connections to a
    // few hundred MiB per worker, far above what one core serves actively.
    maxConnectionsPerWorker: 10_000,
    // A whole handshake (hello, keyless sign, client's second flight) takes
    // milliseconds, a few seconds on a bad mobile link; Node's 120 s let 3,000
    // stalled 5-byte handshakes hold 110 MB for two minutes. 10 s, like
    // headerTimeoutMs (nginx gives the handshake client_header_timeout, 60 s).
    handshakeTimeoutMs: 10_000,
    // A browser opens at most 6 HTTP/1.1 connections per host, so 256 per
    // worker (times the workers in all) lets dozens of busy browsers share one
    // NAT address, while one address can take under 3 % of
    // maxConnectionsPerWorker. nginx (limit_conn) and HAProxy cap nothing by
    // default; behind a TCP load balancer that hides client addresses, set null.
    maxConnectionsPerClient: 256,
    // A request body up to this size is read whole before an origin connection
    // is taken (nginx buffers every body, spilling to disk): a slow upload then
    // holds 64 KiB of memory, not one of the origin's connections. Forms and
    // API calls fit; larger bodies stream (proxy/http/body.ts).
    bodyBufferBytes: 65_536,
    // What all bodies being buffered may hold in one worker (1,024 full
    // buffers): past it, further bodies stream instead, so a flood of
    // uploads cannot grow a worker's memory without bound.
    bodyBufferTotalBytes: 64 * 1024 * 1024,
    // nginx's client_body_timeout: a client that sends nothing of its body
    // for a minute is gone or hostile (408).
    bodyIdleTimeoutMs: 60_000,
    // Node's own server.requestTimeout default, which applied until this key
    // existed: the default 10 MiB limit still uploads at ~300 kbit/s.
    bodyTimeoutMs: 300_000,
    // nginx's send_timeout: a client that takes nothing of its answer for a
    // minute has stopped reading; its connection and the origin's are closed.
    sendTimeoutMs: 60_000,
    // Per origin and worker, as the undici Pool had before this key: most
    // origin servers serve hundreds of connections, and two workers make 128.
    originMaxConnections: 64,
    // Four rounds of the connections: a deeper queue only delays the same 503.
    originMaxQueue: 256,
    // HAProxy's `timeout queue` falls back to its connect timeout; ours is 10 s too.
    originQueueTimeoutMs: 10_000,
    // Node's default is unlimited; RFC 9113 §6.5.2 recommends at least 100,
    // nginx uses 128 and Cloudflare 100-256: browsers open ~100 for a page.
    http2MaxConcurrentStreams: 128,
    // An HTTP/2 connection with no stream open for this long gets a graceful
    // GOAWAY: nginx's keepalive_timeout (75 s) applies to HTTP/2 the same way.
    // Longer than HTTP/1.1's because one connection carries the whole page.
    http2IdleTimeoutMs: 75_000,
    // Streams reset before their answer was whole (by the client, as in Rapid
    // Reset, CVE-2023-44487, or by the server on the client's protocol error,
    // as in MadeYouReset, CVE-2025-8671) tolerated per connection: a bucket of
    // this many that refills at a tenth of it per second. A browser cancels a
    // few streams per navigation; an attack resets thousands per second and is
    // sent GOAWAY ENHANCE_YOUR_CALM within this many. nghttp2's own bucket
    // (1000, 33/s) only counts the client's resets on Node 20.
    http2MaxResetStreams: 200,
  }),
});

/** An exact DNS name or a single leading wildcard label (RFC 6125 §6.4.3), lower-case. */
const DOMAIN_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const domainName = z
  .string({ error: 'expected a lower-case DNS name or *.wildcard' })
  .regex(DOMAIN_NAME, { error: 'expected a lower-case DNS name, optionally with one leading "*." label' });

const ORIGIN_URL_EXPECTED = 'expected an http:// or https:// origin URL: scheme, host and optional port, no credentials, path or query';
const originUrl = z.string({ error: ORIGIN_URL_EXPECTED }).refine(
  (u) => {
    try {
      const url = new URL(u);
      // A Pool is per origin (RFC 6454 §4): a path here would be silently ignored.
      return (
        (url.protocol === 'http:' || url.protocol === 'https:') &&
        url.username === '' &&
        url.password === '' &&
        url.pathname === '/' &&
        url.search === '' &&
        url.hash === ''
      );
    } catch {
      return false;
    }
  },
  { error: ORIGIN_URL_EXPECTED },
);

/** Two spellings of one origin (`http://a` and `http://a:80`) are one origin. */
function originKey(u: string): string {
  try {
    return new URL(u).origin;
  } catch {
    return u;
  }
}

const ETCD_ENDPOINT_EXPECTED = 'expected an etcd endpoint URL: http://host:port or https://host:port';
const etcdEndpoint = z.string({ error: ETCD_ENDPOINT_EXPECTED }).refine(
  (u) => {
    try {
      const url = new URL(u);
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.pathname === '/' && url.username === '' && url.search === '';
    } catch {
      return false;
    }
  },
  { error: ETCD_ENDPOINT_EXPECTED },
);
const ETCD_PREFIX_EXPECTED = 'expected a key prefix such as "/keyedge/fleet-a/": starts and ends with "/", letters, digits, _ . - between';

const HOST_NAME = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const ADDRESS_BLOCK_EXPECTED = 'expected an IPv4 or IPv6 address, or a CIDR block such as "10.0.0.0/8" or "fd00::/8"';
/** An address or `address/prefix`, IPv4 or IPv6 (RFC 4632, RFC 4291 §2.3). */
export function parseAddressBlock(text: string): { readonly address: string; readonly prefix: number; readonly family: 'ipv4' | 'ipv6' } | undefined {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const version = net.isIP(address);
  if (version === 0) return undefined;
  const bits = version === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(bits) : text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > bits) return undefined;
  return { address, prefix: Number(prefixText), family: version === 4 ? 'ipv4' : 'ipv6' };
}
const addressBlock = z.string({ error: ADDRESS_BLOCK_EXPECTED }).refine((t) => parseAddressBlock(t) !== undefined, { error: ADDRESS_BLOCK_EXPECTED });

const keyserverTcpSchema = strict(
  {
    host: text('a host name or address'),
    port: intIn(1, 65_535),
    ca: text('a PEM CA path (issuer of the key server certificate)'),
    cert: text("a PEM path: the proxy's client certificate"),
    key: text("a PEM path: the proxy's client certificate key (its own identity, not a customer key)"),
    servername: text('the name in the key server certificate').optional(),
  },
  'an object { "host", "port", "ca", "cert", "key" }',
);

/** The native pool's limit (proxy/native/src/rpc.h KEYLESS_MAX_SERVERS). */
export const MAX_KEYSERVERS = 16;
const KEYSERVER_NAME_EXPECTED = 'expected 1-32 of a-z 0-9 _ - (it labels the metrics of this key server)';

const keyserverEntrySchema = strict(
  {
    name: z
      .string({ error: KEYSERVER_NAME_EXPECTED })
      .regex(/^[a-z0-9_-]{1,32}$/, { error: KEYSERVER_NAME_EXPECTED })
      .optional(),
    socket: text('a unix socket path').optional(),
    tcp: keyserverTcpSchema.optional(),
  },
  'an object { "name", "socket" } or { "name", "tcp" }',
).refine((e) => (e.socket === undefined) !== (e.tcp === undefined), { error: 'expected exactly one of "socket" or "tcp"' });

const keyserverSchema = strict(
  {
    socket: text('a unix socket path').nullable().optional(),
    tcp: keyserverTcpSchema.nullable().optional(),
    servers: z
      .array(keyserverEntrySchema, { error: 'expected an array of key servers' })
      .min(1, { error: 'expected at least one key server' })
      .max(MAX_KEYSERVERS, { error: `expected at most ${MAX_KEYSERVERS} key servers` })
      .superRefine(unique((e, i) => e.name ?? String(i), 'key server name'))
      .optional(),
    timeoutMs: intIn(10, 10_000).optional(),
    breakerMs: intIn(0, 60_000).optional(),
    healthIntervalMs: intIn(0, 60_000)
      .refine((ms) => ms === 0 || ms >= 50, { error: 'expected 0 (off) or from 50 to 60000' })
      .optional(),
  },
  'an object',
);

const listenerSchema = strict(
  {
    host: text('a host name or address').optional(),
    port,
    profile: z.enum(['intermediate', 'modern'], { error: 'expected "intermediate" or "modern"' }).optional(),
    http2: z.boolean({ error: 'expected true or false' }).optional(),
  },
  'an object { "host", "port", "profile", "http2" }',
);

const certificateSchema = strict(
  {
    name: z.string({ error: 'expected a certificate name' }).regex(/^[\w.-]{1,64}$/, { error: 'expected 1-64 letters, digits, _ . -' }),
    chain: text('a PEM chain path'),
  },
  'an object { "name", "chain" }',
);

export const domainSchema = strict(
  {
    name: domainName,
    origin: originUrl.optional(),
    origins: z
      .array(originUrl, { error: 'expected a non-empty array of origin URLs' })
      .min(1, { error: 'expected a non-empty array of origin URLs' })
      .max(64, { error: 'expected at most 64 origins' })
      .superRefine(unique(originKey, 'origin'))
      .optional(),
    originHost: z.enum(['client', 'origin'], { error: 'expected "client" or "origin"' }).optional(),
    originTls: strict(
      {
        ca: text('a PEM CA path (issuer of the origin certificates)').optional(),
        servername: z.string({ error: 'expected a lower-case DNS name' }).regex(HOST_NAME, { error: 'expected a lower-case DNS name' }).optional(),
      },
      'an object { "ca", "servername" }',
    ).optional(),
    maxBodyBytes: intIn(0, 1_099_511_627_776).optional(),
    hsts: strict({ includeSubDomains: z.boolean().optional(), preload: z.boolean().optional() }, 'an object').optional(),
  },
  'an object { "name", "origin" or "origins" }',
).superRefine((d, ctx) => {
  if ((d.origin === undefined) === (d.origins === undefined)) {
    ctx.addIssue({ code: 'custom', path: [], message: 'expected exactly one of "origin" (one URL) or "origins" (an array of URLs)' });
  }
  const all = d.origins ?? (d.origin === undefined ? [] : [d.origin]);
  if (d.originTls !== undefined && !all.some((u) => u.startsWith('https:'))) {
    ctx.addIssue({ code: 'custom', path: ['originTls'], message: 'applies to https:// origins only, and this domain has none' });
  }
});

function unique<T>(key: (item: T, index: number) => string, what: string) {
  return (list: T[], ctx: z.core.$RefinementCtx<T[]>): void => {
    const first = new Map<string, number>();
    list.forEach((item, i) => {
      const j = first.get(key(item, i));
      if (j === undefined) first.set(key(item, i), i);
      else ctx.addIssue({ code: 'custom', path: [i], message: `duplicate ${what} (same as [${j}])` });
    });
  };
}

export const proxyFileSchema = strict(
  {
    stateDir: text('a directory path').optional(),
    workers: intIn(1, 256).optional(),
    keyserver: keyserverSchema.optional(),
    listen: z.array(listenerSchema, { error: 'expected an array of listeners' }).min(1, { error: 'expected at least one listener' }).optional(),
    httpRedirect: strict({ host: text('a host name or address').optional(), port }, 'an object { "host", "port" }, or null')
      .nullable()
      .optional(),
    certificates: z
      .array(certificateSchema, { error: 'expected an array of certificates' })
      .superRefine(unique((c) => c.name, 'certificate name'))
      .optional(),
    certStore: strict(
      {
        dir: text('a directory path').optional(),
        rescanSeconds: intIn(1, 86_400).optional(),
        intermediates: text('a PEM file or directory path').nullable().optional(),
      },
      'an object { "dir", "rescanSeconds", "intermediates" }',
    ).optional(),
    sni: strict(
      {
        default: text('a certificate name').nullable().optional(),
        onUnknown: z.enum(['default', 'reject'], { error: 'expected "default" or "reject"' }).optional(),
      },
      'an object',
    ).optional(),
    domains: z
      .array(domainSchema, { error: 'expected an array of domains' })
      .superRefine(unique((d) => d.name, 'domain name'))
      .optional(),
    tls: strict(
      {
        hstsMaxAgeSeconds: intIn(0, 315_360_000).optional(),
        ticketKeyRotationSeconds: intIn(60, 604_800).optional(),
        contextCacheSize: intIn(1, 1_000_000).optional(),
        ocspStapling: z.boolean({ error: 'expected true or false' }).optional(),
      },
      'an object',
    ).optional(),
    admin: strict(
      { host: text('a host name or address').optional(), port: port.optional(), tokenFile: text('a file path holding the admin bearer token').optional() },
      'an object, or null',
    )
      .nullable()
      .optional(),
    log: strict({ level: z.enum(LOG_LEVELS, { error: `expected one of: ${LOG_LEVELS.join(', ')}` }).optional() }, 'an object').optional(),
    shutdownGraceMs: intIn(0, 600_000).optional(),
    workerStartTimeoutMs: intIn(1_000, 3_600_000).optional(),
    etcd: strict(
      {
        endpoints: z
          .array(etcdEndpoint, { error: 'expected a non-empty array of etcd endpoint URLs' })
          .min(1, { error: 'expected at least one etcd endpoint' })
          .max(32, { error: 'expected at most 32 etcd endpoints' }),
        prefix: z
          .string({ error: ETCD_PREFIX_EXPECTED })
          .regex(/^\/([\w.-]+\/)+$/, { error: ETCD_PREFIX_EXPECTED })
          .max(128, { error: ETCD_PREFIX_EXPECTED })
          .optional(),
        tls: strict(
          {
            ca: text("a PEM CA path (issuer of etcd's server certificates)"),
            cert: text("a PEM path: this node's etcd client certificate").optional(),
            key: text("a PEM path: this node's etcd client certificate key").optional(),
          },
          'an object { "ca", "cert", "key" }',
        )
          .refine((t) => (t.cert === undefined) === (t.key === undefined), { error: 'expected both "cert" and "key", or neither' })
          .nullable()
          .optional(),
        auth: strict(
          { username: text('an etcd user name'), passwordFile: text("a file path holding the etcd user's password") },
          'an object { "username", "passwordFile" }',
        )
          .nullable()
          .optional(),
        timeoutMs: intIn(100, 60_000).optional(),
        // At least a few chains' worth; past 64 MiB etcd itself warns that its raft log stalls on such requests.
        maxRequestBytes: intIn(65_536, 67_108_864).optional(),
      },
      'an object { "endpoints", "prefix", "tls", "auth", "timeoutMs", "maxRequestBytes" }, or null',
    )
      .nullable()
      .optional(),
    forwarding: strict(
      { trustedProxies: z.array(addressBlock, { error: 'expected an array of addresses or CIDR blocks' }).optional() },
      'an object { "trustedProxies" }',
    ).optional(),
    acme: strict(
      {
        directory: z.url({ protocol: /^https?$/, error: 'expected the ACME directory URL (https://…)' }),
        caBundle: text('a PEM file of CAs trusted for the directory').nullable().optional(),
        contact: z.array(z.string().regex(/^mailto:[^@\s]+@[^@\s]+$/, { error: 'expected "mailto:someone@example.com"' })).optional(),
        eab: strict({ kid: text('the key id the CA gave'), hmacKeyFile: text('a file holding the base64url HMAC key') }, 'an object { "kid", "hmacKeyFile" }')
          .nullable()
          .optional(),
        challenges: z
          .array(z.enum(['http-01', 'tls-alpn-01'], { error: 'expected "http-01" or "tls-alpn-01"' }))
          .min(1, { error: 'expected at least one challenge type' })
          .optional(),
        keyType: z
          .enum(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'], { error: 'expected ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096' })
          .optional(),
        keyserverConfig: text("the key server's config file").nullable().optional(),
        profile: text('an ACME profile name').nullable().optional(),
        timeoutMs: intIn(100, 600_000).optional(),
        orderTimeoutSeconds: intIn(5, 86_400).optional(),
        renewal: strict(
          {
            lifetimeFraction: z.number({ error: 'expected a number from 0.1 to 0.95' }).min(0.1).max(0.95).optional(),
            checkSeconds: intIn(1, 86_400).optional(),
            spreadSeconds: intIn(0, 2_592_000).optional(),
            maxConcurrent: intIn(1, 64).optional(),
            retryMinSeconds: intIn(1, 86_400).optional(),
            retryMaxSeconds: intIn(1, 2_592_000).optional(),
            jitter: z.number({ error: 'expected a number from 0 to 1' }).min(0).max(1).optional(),
            newKey: z.boolean({ error: 'expected true or false' }).optional(),
            keyGraceSeconds: intIn(0, 2_592_000).optional(),
          },
          'an object',
        ).optional(),
        onDemand: strict(
          {
            ask: z
              .url({ protocol: /^https?$/, error: 'expected an http(s) URL' })
              .nullable()
              .optional(),
            askTimeoutMs: intIn(100, 60_000).optional(),
            cnameTarget: z.string().regex(HOST_NAME, { error: 'expected a lower-case DNS name' }).nullable().optional(),
            resolver: text('a DNS server "host:port"').nullable().optional(),
            refusedSeconds: intIn(1, 604_800).optional(),
            maxOrdersPerHour: intIn(1, 100_000).optional(),
            maxOrdersPerDomainPerHour: intIn(1, 100_000).optional(),
            maxPendingChecks: intIn(1, 1_000).optional(),
          },
          'an object, or null',
        )
          .nullable()
          .optional(),
      },
      'an object { "directory", … }, or null',
    )
      .nullable()
      .optional(),
    limits: strict(
      {
        maxHeaderBytes: intIn(1024, 1_048_576).optional(),
        maxBodyBytes: intIn(0, 1_099_511_627_776).optional(),
        headerTimeoutMs: intIn(100, 600_000).optional(),
        keepAliveTimeoutMs: intIn(0, 600_000).optional(),
        originConnectTimeoutMs: intIn(100, 600_000).optional(),
        originResponseTimeoutMs: intIn(100, 3_600_000).optional(),
        originReadTimeoutMs: intIn(100, 86_400_000).nullable().optional(),
        originFailureCooldownMs: intIn(0, 3_600_000).optional(),
        maxConnectionsPerWorker: intIn(1, 1_000_000).optional(),
        handshakeTimeoutMs: intIn(100, 600_000).optional(),
        maxConnectionsPerClient: intIn(1, 1_000_000).nullable().optional(),
        bodyBufferBytes: intIn(0, 16_777_216).optional(),
        bodyBufferTotalBytes: intIn(0, 17_179_869_184).optional(),
        bodyIdleTimeoutMs: intIn(100, 3_600_000).optional(),
        bodyTimeoutMs: intIn(100, 86_400_000).optional(),
        sendTimeoutMs: intIn(100, 3_600_000).optional(),
        originMaxConnections: intIn(1, 100_000).optional(),
        originMaxQueue: intIn(0, 1_000_000).optional(),
        originQueueTimeoutMs: intIn(0, 600_000).optional(),
        http2MaxConcurrentStreams: intIn(1, 1000).optional(),
        http2IdleTimeoutMs: intIn(1000, 3_600_000).optional(),
        http2MaxResetStreams: intIn(10, 100_000).optional(),
      },
      'an object',
    ).optional(),
  },
  'a JSON object',
).superRefine(
  (cfg: unknown, ctx) => {
    if (!isObject(cfg)) return;
    const ks = isObject(cfg.keyserver) ? cfg.keyserver : {};
    if (ks.servers !== undefined && ((ks.socket !== undefined && ks.socket !== null) || (ks.tcp !== undefined && ks.tcp !== null))) {
      ctx.addIssue({ code: 'custom', path: ['keyserver'], message: 'expected one key server ("socket" or "tcp") or a pool ("servers"), not both' });
    }
    if (ks.servers === undefined && ks.socket === null && (ks.tcp === null || ks.tcp === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['keyserver'], message: 'expected a key server: "socket" or "tcp"' });
    }
    const etcd = isObject(cfg.etcd) ? cfg.etcd : undefined;
    if (
      etcd !== undefined &&
      Array.isArray(etcd.endpoints) &&
      !isObject(etcd.tls) &&
      etcd.endpoints.some((e) => typeof e === 'string' && e.startsWith('https:'))
    ) {
      ctx.addIssue({ code: 'custom', path: ['etcd', 'tls'], message: 'https:// endpoints need "tls": { "ca" } to verify etcd' });
    }
    if (typeof ks.socket === 'string' && isObject(ks.tcp)) {
      ctx.addIssue({ code: 'custom', path: ['keyserver'], message: 'expected one key server transport: "socket" or "tcp", not both' });
    }
    // sni.default may also name a certificate-store entry: the proxy checks it when it loads the store.
    const sni = isObject(cfg.sni) ? cfg.sni : {};
    if (sni.onUnknown === 'default' && typeof sni.default !== 'string') {
      ctx.addIssue({ code: 'custom', path: ['sni', 'onUnknown'], message: '"default" needs sni.default to name a certificate' });
    }
  },
  { when: () => true },
);

export type ProxyFile = z.output<typeof proxyFileSchema>;
