/**
 * The shape of the proxy's JSON config file: a schema per section and the
 * file's schema, with the checks that span sections. Values come from
 * config/proxy-values.ts; the "acme" and "etcd" sections are in their own
 * files. config/resolve-proxy.ts turns a validated file into a ProxyConfig.
 *
 * There is deliberately no private-key path anywhere in it: a certificate
 * entry names a chain file, and the key is found at the key server by the key
 * id of the chain's leaf (SHA-256 of its SPKI).
 *
 * The resolved types (config/proxy-config.ts), the defaults
 * (config/proxy-defaults.ts) and parseAddressBlock are exported from here
 * too, so the proxy imports its configuration from one module.
 */
import { isIPv6 } from 'node:net';
import { z } from 'zod';
import { acmeSectionSchema } from './proxy-acme-schema.js';
import { etcdSectionSchema } from './proxy-etcd-schema.js';
import { addressBlock, domainName, HOST_NAME, originKey, originUrl } from './proxy-values.js';
import { PROXY_DEFAULTS } from './proxy-defaults.js';
import { intIn, isObject, strict, text, port } from './schema-kit.js';
import { LOG_LEVELS } from './schema.js';

export type {
  AcmeChallengeType,
  AcmeConfig,
  EtcdSettings,
  KeyserverEndpoint,
  OnDemandConfig,
  ProxyConfig,
  ProxyDomain,
  TlsProfileName,
} from './proxy-config.js';
export { PROXY_DEFAULTS } from './proxy-defaults.js';
export { parseAddressBlock } from './proxy-values.js';

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
    reloadApplyTimeoutMs: intIn(1_000, 600_000).optional(),
    // Twice the 5 s metrics poll at least: a live worker answers each of them.
    workerSilentTimeoutMs: intIn(10_000, 3_600_000).optional(),
    etcd: etcdSectionSchema.nullable().optional(),
    forwarding: strict(
      { trustedProxies: z.array(addressBlock, { error: 'expected an array of addresses or CIDR blocks' }).optional() },
      'an object { "trustedProxies" }',
    ).optional(),
    acme: acmeSectionSchema.nullable().optional(),
    limits: strict(
      {
        maxHeaderBytes: intIn(1024, 1_048_576).optional(),
        maxBodyBytes: intIn(0, 1_099_511_627_776).optional(),
        headerTimeoutMs: intIn(100, 600_000).optional(),
        // Not 0: Node's keepAliveTimeout 0 is no timeout at all, an idle connection held for ever.
        keepAliveTimeoutMs: intIn(1, 600_000).optional(),
        originConnectTimeoutMs: intIn(100, 600_000).optional(),
        originResponseTimeoutMs: intIn(100, 3_600_000).optional(),
        originReadTimeoutMs: intIn(100, 86_400_000).nullable().optional(),
        tunnelIdleTimeoutMs: intIn(100, 86_400_000).nullable().optional(),
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
    for (const clash of addressClashes(cfg)) ctx.addIssue({ code: 'custom', path: clash.path, message: clash.message });
    // sni.default may also name a certificate-store entry: the proxy checks it when it loads the store.
    const sni = isObject(cfg.sni) ? cfg.sni : {};
    if (sni.onUnknown === 'default' && typeof sni.default !== 'string') {
      ctx.addIssue({ code: 'custom', path: ['sni', 'onUnknown'], message: '"default" needs sni.default to name a certificate' });
    }
  },
  { when: () => true },
);

export type ProxyFile = z.output<typeof proxyFileSchema>;

/**
 * Whether binding `a` and `b` on one port clashes: the same host; `::` (or no host), which takes both families on
 * Linux, with any; `0.0.0.0` with any but an IPv6 address (IPv4 on every address beside one IPv6 address binds).
 */
function hostsClash(a: string, b: string): boolean {
  if (a === b) return true;
  const all = (h: string): boolean => h === '::' || h === '';
  if (all(a) || all(b)) return true;
  return (a === '0.0.0.0' && !isIPv6(b)) || (b === '0.0.0.0' && !isIPv6(a));
}

/**
 * The listeners, the redirect port and the admin API that would bind one address (host and port, the defaults
 * applied; port 0 is any free one): each but the first, naming the first. Two listeners on 8443, or one on the admin's
 * 9465, loaded, and the start failed with EADDRINUSE as if another process held the port. Hosts are compared as
 * written (hostsClash): names are not resolved here.
 */
function addressClashes(cfg: Record<string, unknown>): { path: (string | number)[]; message: string }[] {
  const D = PROXY_DEFAULTS;
  const bound: { path: (string | number)[]; name: string; host: string; port: number }[] = [];
  const add = (path: (string | number)[], value: unknown, host: string, port?: number): void => {
    const v = isObject(value) ? value : {};
    const at = typeof v.port === 'number' ? v.port : port;
    if (at === undefined || at === 0) return;
    const name = path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
    bound.push({ path, name, host: typeof v.host === 'string' ? v.host : host, port: at });
  };
  if (cfg.listen === undefined) for (const l of D.listen) add(['listen', 0], l, l.host);
  else if (Array.isArray(cfg.listen)) for (const [i, l] of cfg.listen.entries()) add(['listen', i], l, D.listener.host);
  if (isObject(cfg.httpRedirect)) add(['httpRedirect'], cfg.httpRedirect, D.httpRedirectHost);
  if (cfg.admin !== null) add(['admin'], cfg.admin, D.admin.host, D.admin.port);
  const clashes: { path: (string | number)[]; message: string }[] = [];
  bound.forEach((b, i) => {
    const first = bound.slice(0, i).find((a) => a.port === b.port && hostsClash(a.host, b.host));
    if (first === undefined) return;
    clashes.push({ path: b.path, message: `the same address as ${first.name} (${first.host} port ${first.port}): one port takes one listener` });
  });
  return clashes;
}
