/**
 * The proxy's validated config file in its resolved form: every omitted value
 * from PROXY_DEFAULTS, every path absolute (the key server socket, the
 * certificate store and the admin token under the state directory, the rest
 * relative to the config file's directory), origins kept as URL origins. A
 * route kept in the fleet's store is resolved the same way (resolveDomain).
 */
import path from 'node:path';
import type { z } from 'zod';
import type { ConfigOrigin } from './load-json.js';
import type { AcmeConfig, KeyserverEndpoint, ProxyConfig, ProxyDomain, TlsProfileName } from './proxy-config.js';
import { PROXY_DEFAULTS } from './proxy-defaults.js';
import type { domainSchema, ProxyFile } from './proxy-schema.js';
import { definedOnly } from './schema-kit.js';

export function resolveProxy(c: ProxyFile, { source, baseDir }: ConfigOrigin): ProxyConfig {
  const D = PROXY_DEFAULTS;
  const fromConfigDir = (p: string) => path.resolve(baseDir, p);
  const stateDir = fromConfigDir(c.stateDir ?? D.stateDir);
  const ks = c.keyserver;
  // A path relative to the state directory, like the key server's own socket; TLS files relative to the config.
  const endpoint = (name: string, socket: string | null, tcp: NonNullable<NonNullable<ProxyFile['keyserver']>['tcp']> | null): KeyserverEndpoint => ({
    name,
    socket: socket === null ? null : path.resolve(stateDir, socket),
    tcp:
      tcp === null
        ? null
        : {
            host: tcp.host,
            port: tcp.port,
            ca: fromConfigDir(tcp.ca),
            cert: fromConfigDir(tcp.cert),
            key: fromConfigDir(tcp.key),
            servername: tcp.servername ?? null,
          },
  });
  const servers =
    ks?.servers !== undefined
      ? ks.servers.map((e, i) => endpoint(e.name ?? String(i), e.socket ?? null, e.tcp ?? null))
      : [endpoint('0', ks?.socket === null || (ks?.tcp ?? null) !== null ? null : (ks?.socket ?? D.keyserver.socket), ks?.tcp ?? null)];
  return {
    source,
    stateDir,
    workers: c.workers ?? D.workers,
    keyserver: {
      servers,
      timeoutMs: ks?.timeoutMs ?? D.keyserver.timeoutMs,
      breakerMs: ks?.breakerMs ?? D.keyserver.breakerMs,
      healthIntervalMs: ks?.healthIntervalMs ?? D.keyserver.healthIntervalMs,
    },
    listen: (c.listen ?? D.listen).map((l: { host?: string; port: number; profile?: TlsProfileName; http2?: boolean }) => {
      const profile = l.profile ?? D.listener.profile;
      return { host: l.host ?? D.listener.host, port: l.port, profile, http2: l.http2 ?? D.listenHttp2[profile] };
    }),
    httpRedirect:
      c.httpRedirect === undefined || c.httpRedirect === null ? D.httpRedirect : { host: c.httpRedirect.host ?? D.httpRedirectHost, port: c.httpRedirect.port },
    certificates: (c.certificates ?? []).map((cert) => ({ name: cert.name, chain: fromConfigDir(cert.chain) })),
    certStore: {
      // Like the key server socket: relative to the state directory, which is itself relative to the config.
      dir: path.resolve(stateDir, c.certStore?.dir ?? D.certStore.dir),
      rescanSeconds: c.certStore?.rescanSeconds ?? D.certStore.rescanSeconds,
      intermediates: typeof c.certStore?.intermediates === 'string' ? fromConfigDir(c.certStore.intermediates) : D.certStore.intermediates,
    },
    sni: { default: c.sni?.default ?? D.sni.default, onUnknown: c.sni?.onUnknown ?? D.sni.onUnknown },
    domains: (c.domains ?? []).map((d) => resolveDomain(d, baseDir)),
    forwarding: { trustedProxies: [...(c.forwarding?.trustedProxies ?? D.forwarding.trustedProxies)] },
    tls: { ...D.tls, ...definedOnly(c.tls ?? {}) },
    admin:
      c.admin === null
        ? null
        : {
            host: c.admin?.host ?? D.admin.host,
            port: c.admin?.port ?? D.admin.port,
            tokenFile: path.resolve(stateDir, c.admin?.tokenFile ?? D.admin.tokenFile),
          },
    log: { level: c.log?.level ?? D.log.level },
    shutdownGraceMs: c.shutdownGraceMs ?? D.shutdownGraceMs,
    workerStartTimeoutMs: c.workerStartTimeoutMs ?? D.workerStartTimeoutMs,
    reloadApplyTimeoutMs: c.reloadApplyTimeoutMs ?? D.reloadApplyTimeoutMs,
    workerSilentTimeoutMs: c.workerSilentTimeoutMs ?? D.workerSilentTimeoutMs,
    limits: { ...D.limits, ...definedOnly(c.limits ?? {}) },
    etcd:
      c.etcd === undefined || c.etcd === null
        ? D.etcd
        : {
            endpoints: c.etcd.endpoints.map((u) => new URL(u).origin),
            prefix: c.etcd.prefix ?? D.etcdSettings.prefix,
            tls:
              c.etcd.tls === undefined || c.etcd.tls === null
                ? null
                : {
                    ca: fromConfigDir(c.etcd.tls.ca),
                    cert: c.etcd.tls.cert === undefined ? null : fromConfigDir(c.etcd.tls.cert),
                    key: c.etcd.tls.key === undefined ? null : fromConfigDir(c.etcd.tls.key),
                  },
            auth:
              c.etcd.auth === undefined || c.etcd.auth === null
                ? null
                : { username: c.etcd.auth.username, passwordFile: fromConfigDir(c.etcd.auth.passwordFile) },
            timeoutMs: c.etcd.timeoutMs ?? D.etcdSettings.timeoutMs,
            maxRequestBytes: c.etcd.maxRequestBytes ?? D.etcdSettings.maxRequestBytes,
          },
    acme: c.acme === undefined || c.acme === null ? D.acme : resolveAcme(c.acme, fromConfigDir),
  };
}

/**
 * One domain of the file's `domains` (or a route kept in the shared store) in
 * its resolved form; relative paths resolve against `baseDir`.
 */
export function resolveDomain(d: z.output<typeof domainSchema>, baseDir: string): ProxyDomain {
  return {
    name: d.name,
    // The schema guarantees exactly one of the two; URLs are kept as origins (no trailing slash).
    origins: (d.origins ?? [d.origin ?? '']).map((u) => new URL(u).origin),
    originHost: d.originHost ?? null,
    originTls: { ca: d.originTls?.ca === undefined ? null : path.resolve(baseDir, d.originTls.ca), servername: d.originTls?.servername ?? null },
    maxBodyBytes: d.maxBodyBytes ?? null,
    hsts: { includeSubDomains: d.hsts?.includeSubDomains ?? false, preload: d.hsts?.preload ?? false },
  };
}

function resolveAcme(a: NonNullable<ProxyFile['acme']>, fromConfigDir: (p: string) => string): AcmeConfig {
  const D = PROXY_DEFAULTS.acmeDefaults;
  return {
    directory: a.directory,
    caBundle: typeof a.caBundle === 'string' ? fromConfigDir(a.caBundle) : D.caBundle,
    contact: [...(a.contact ?? D.contact)],
    eab: a.eab === undefined || a.eab === null ? D.eab : { kid: a.eab.kid, hmacKeyFile: fromConfigDir(a.eab.hmacKeyFile) },
    challenges: [...(a.challenges ?? D.challenges)],
    keyType: a.keyType ?? D.keyType,
    keyserverConfig: typeof a.keyserverConfig === 'string' ? fromConfigDir(a.keyserverConfig) : D.keyserverConfig,
    profile: a.profile ?? D.profile,
    timeoutMs: a.timeoutMs ?? D.timeoutMs,
    orderTimeoutSeconds: a.orderTimeoutSeconds ?? D.orderTimeoutSeconds,
    renewal: { ...D.renewal, ...definedOnly(a.renewal ?? {}) },
    onDemand:
      a.onDemand === undefined || a.onDemand === null
        ? D.onDemand
        : {
            ...PROXY_DEFAULTS.onDemandDefaults,
            ...definedOnly(a.onDemand),
            ask: a.onDemand.ask ?? null,
            cnameTarget: a.onDemand.cnameTarget ?? null,
            resolver: a.onDemand.resolver ?? null,
          },
  };
}
