/**
 * The one table of the proxy's defaults: every value the proxy uses when its
 * config file leaves a key out, each with the reason it is what it is.
 * config/resolve-proxy.ts applies them; nothing else states a default, so a
 * default changes here and nowhere else.
 */
import os from 'node:os';

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
  // What a listener does not say (listen[].host, listen[].profile): loopback, as the admin API, until told otherwise;
  // the profile every supported client speaks.
  listener: Object.freeze({ host: '127.0.0.1', profile: 'intermediate' as const }),
  listen: Object.freeze([Object.freeze({ host: '127.0.0.1', port: 8443, profile: 'intermediate' as const })]),
  // Per listener, by profile: every browser speaks HTTP/2 over both profiles'
  // TLS versions and ciphers (RFC 9113 §9.2 forbids TLS < 1.2, which neither
  // profile offers), and on one connection per origin instead of six: fewer
  // full handshakes, fewer key-server signatures. nginx, HAProxy and Caddy
  // offer h2 by default. Its limits (streams, resets, idle, stall) are below.
  listenHttp2: Object.freeze({ intermediate: true, modern: true }),
  // Off unless configured: port 80 needs privileges and is a deployment choice.
  httpRedirect: null,
  // Its host when httpRedirect gives only a port.
  httpRedirectHost: '127.0.0.1',
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
  // A reload is a message and a table swap in each worker (milliseconds; a whole state as a file, seconds at 100,000
  // certificates): a worker silent this long is stopped or stuck, and the watchdog replaces it.
  reloadApplyTimeoutMs: 30_000,
  // Six of the 5 s metrics polls unanswered: a blocked event loop, not a busy moment.
  workerSilentTimeoutMs: 30_000,
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
    // A browser brings one new name, or a few (www, api, assets); a client flooding new names gets ten asks, then one
    // every 6 s (proxy/acme/on-demand-clients.ts).
    maxChecksPerClientPerMinute: 10,
    // On-demand issuance is mostly from a public CA (Let's Encrypt), which refuses internal and special-use names.
    publicNamesOnly: true,
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
    // nginx closes a proxied WebSocket after proxy_read_timeout (60 s) with
    // nothing read from the origin; HAProxy's `timeout tunnel` is the model:
    // a tunnel that carried no byte either way for a minute is closed, since
    // it holds a client connection, an origin connection and its place at the
    // origin for as long as it lasts. WebSocket apps ping (Socket.IO every
    // 25 s); apps that stay silent longer: raise it, or null.
    tunnelIdleTimeoutMs: 60_000,
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
