/**
 * The proxy's configuration in its resolved form: the frozen object every
 * part of the proxy runs on, after config/resolve-proxy.ts has filled in each
 * omitted value from PROXY_DEFAULTS and made every path absolute. Types only,
 * kept apart from the file's shape (config/proxy-schema.ts): what the proxy
 * runs on is not what an operator writes (no omitted keys, no relative paths).
 */

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
    /** An open WebSocket tunnel that carried no byte either way for this long is closed (proxy/http/tunnel.ts); null: never. */
    readonly tunnelIdleTimeoutMs: number | null;
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
  /** How long the primary waits for every worker to apply a reload (or an issued certificate) before calling it partial. */
  readonly reloadApplyTimeoutMs: number;
  /** A serving worker that sends the primary nothing this long (its event loop is blocked) is killed and replaced. */
  readonly workerSilentTimeoutMs: number;
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
  /**
   * Checks (ask, DNS, order) one client (an IPv4 address, an IPv6 /64; trusted proxies not counted) may start: this many
   * at once, refilled at this many a minute, per node; its other new names are ignored. null: no per-client bound.
   */
  readonly maxChecksPerClientPerMinute: number | null;
  /**
   * Names a publicly-trusted CA refuses by policy (a TLD not in the root zone, a special-use name, more than 10 labels)
   * are ignored before the ask endpoint (proxy/acme/on-demand-ca-names.ts); false for a private CA issuing internal names.
   */
  readonly publicNamesOnly: boolean;
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
