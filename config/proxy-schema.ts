/**
 * The proxy's configuration: the shape of its JSON file, the one table of
 * defaults, and the resolved (frozen) form the proxy runs on.
 *
 * There is deliberately no private-key path anywhere in it: a certificate
 * entry names a chain file, and the key is found at the key server by the key
 * id of the chain's leaf (SHA-256 of its SPKI).
 */
import os from 'node:os';
import { z } from 'zod';
import { intIn, isObject, strict, text, port } from './schema-kit.js';
import { LOG_LEVELS } from './schema.js';

export type TlsProfileName = 'intermediate' | 'modern';

export interface ProxyConfig {
  readonly source: string;
  readonly stateDir: string;
  readonly workers: number;
  readonly keyserver: {
    readonly socket: string | null;
    readonly tcp: { readonly host: string; readonly port: number; readonly ca: string; readonly cert: string; readonly key: string; readonly servername: string | null } | null;
    readonly timeoutMs: number;
    readonly breakerMs: number;
  };
  readonly listen: readonly { readonly host: string; readonly port: number; readonly profile: TlsProfileName }[];
  /** Plain HTTP (port 80 in production): 308 to HTTPS, ACME challenges to the origin. */
  readonly httpRedirect: { readonly host: string; readonly port: number } | null;
  readonly certificates: readonly { readonly name: string; readonly chain: string }[];
  /**
   * The certificate store (proxy/certs/store.ts): `<dir>/<name>.pem` chains
   * managed by `keyedge cert` or written by a renewal tool, served alongside
   * `certificates` and reloaded when they change. `dir` is absolute.
   */
  readonly certStore: { readonly dir: string; readonly rescanSeconds: number };
  readonly sni: { readonly default: string | null; readonly onUnknown: 'default' | 'reject' };
  readonly domains: readonly {
    readonly name: string;
    readonly origin: string;
    readonly hsts: { readonly includeSubDomains: boolean; readonly preload: boolean };
  }[];
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
  };
  readonly shutdownGraceMs: number;
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
  }),
  listen: Object.freeze([Object.freeze({ host: '127.0.0.1', port: 8443, profile: 'intermediate' as const })]),
  // Off unless configured: port 80 needs privileges and is a deployment choice.
  httpRedirect: null,
  certStore: Object.freeze({
    // Relative to stateDir (./var/certs): state the proxy manages, next to the key server's.
    dir: 'certs',
    // fs.watch misses changes on network file systems and when the directory
    // itself is replaced; a rescan of a few stat() calls every 30 s bounds how
    // long a renewal can go unnoticed at no measurable cost.
    rescanSeconds: 30,
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
  }),
});

/** An exact DNS name or a single leading wildcard label (RFC 6125 §6.4.3), lower-case. */
const DOMAIN_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const domainName = z
  .string({ error: 'expected a lower-case DNS name or *.wildcard' })
  .regex(DOMAIN_NAME, { error: 'expected a lower-case DNS name, optionally with one leading "*." label' });

const originUrl = z.string({ error: 'expected an http:// or https:// origin URL' }).refine(
  (u) => {
    try {
      const url = new URL(u);
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.username === '' && url.password === '';
    } catch {
      return false;
    }
  },
  { error: 'expected an http:// or https:// origin URL without credentials' },
);

const keyserverSchema = strict(
  {
    socket: text('a unix socket path').nullable().optional(),
    tcp: strict(
      {
        host: text('a host name or address'),
        port: intIn(1, 65_535),
        ca: text('a PEM CA path (issuer of the key server certificate)'),
        cert: text("a PEM path: the proxy's client certificate"),
        key: text("a PEM path: the proxy's client certificate key (its own identity, not a customer key)"),
        servername: text('the name in the key server certificate').optional(),
      },
      'an object { "host", "port", "ca", "cert", "key" }',
    )
      .nullable()
      .optional(),
    timeoutMs: intIn(10, 10_000).optional(),
    breakerMs: intIn(0, 60_000).optional(),
  },
  'an object',
);

const listenerSchema = strict(
  {
    host: text('a host name or address').optional(),
    port,
    profile: z.enum(['intermediate', 'modern'], { error: 'expected "intermediate" or "modern"' }).optional(),
  },
  'an object { "host", "port", "profile" }',
);

const certificateSchema = strict(
  { name: z.string({ error: 'expected a certificate name' }).regex(/^[\w.-]{1,64}$/, { error: 'expected 1-64 letters, digits, _ . -' }), chain: text('a PEM chain path') },
  'an object { "name", "chain" }',
);

const domainSchema = strict(
  {
    name: domainName,
    origin: originUrl,
    hsts: strict({ includeSubDomains: z.boolean().optional(), preload: z.boolean().optional() }, 'an object').optional(),
  },
  'an object { "name", "origin" }',
);

function unique<T>(key: (item: T) => string, what: string) {
  return (list: T[], ctx: z.core.$RefinementCtx<T[]>): void => {
    const first = new Map<string, number>();
    list.forEach((item, i) => {
      const j = first.get(key(item));
      if (j === undefined) first.set(key(item), i);
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
    httpRedirect: strict({ host: text('a host name or address').optional(), port }, 'an object { "host", "port" }, or null').nullable().optional(),
    certificates: z.array(certificateSchema, { error: 'expected an array of certificates' }).superRefine(unique((c) => c.name, 'certificate name')).optional(),
    certStore: strict(
      {
        dir: text('a directory path').optional(),
        rescanSeconds: intIn(1, 86_400).optional(),
      },
      'an object { "dir", "rescanSeconds" }',
    ).optional(),
    sni: strict(
      {
        default: text('a certificate name').nullable().optional(),
        onUnknown: z.enum(['default', 'reject'], { error: 'expected "default" or "reject"' }).optional(),
      },
      'an object',
    ).optional(),
    domains: z.array(domainSchema, { error: 'expected an array of domains' }).superRefine(unique((d) => d.name, 'domain name')).optional(),
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
    limits: strict(
      {
        maxHeaderBytes: intIn(1024, 1_048_576).optional(),
        maxBodyBytes: intIn(0, 1_099_511_627_776).optional(),
        headerTimeoutMs: intIn(100, 600_000).optional(),
        keepAliveTimeoutMs: intIn(0, 600_000).optional(),
        originConnectTimeoutMs: intIn(100, 600_000).optional(),
        originResponseTimeoutMs: intIn(100, 3_600_000).optional(),
      },
      'an object',
    ).optional(),
  },
  'a JSON object',
).superRefine(
  (cfg: unknown, ctx) => {
    if (!isObject(cfg)) return;
    const ks = isObject(cfg.keyserver) ? cfg.keyserver : {};
    if (ks.socket === null && (ks.tcp === null || ks.tcp === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['keyserver'], message: 'expected a key server: "socket" or "tcp"' });
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
