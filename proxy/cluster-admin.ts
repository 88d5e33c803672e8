/**
 * The primary's admin API (admin.ts) wired to the rest of it: /metrics sums
 * every worker's (cluster-metrics.ts), /readyz counts the workers that serve
 * and pings the key server, the changes go through the reload coordinator,
 * the ticket rotation and ACME. Nothing here answers with key material.
 */
import type { Worker } from 'node:cluster';
import type http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { isLoopbackHost, startProxyAdmin } from './admin.js';
import type { RunningAcme } from './acme/service.js';
import type { ClusterMetrics } from './cluster-metrics.js';
import type { ReloadCoordinator } from './serving/coordinator.js';
import { connectKeyserver } from './serving/keyserver-check.js';
import type { ServingSource } from './serving/source.js';
import type { EtcdStore } from './store/etcd-store.js';
import { deleteRoute, putRoute } from './store/routes.js';

export interface ClusterAdminParts {
  readonly config: ProxyConfig;
  readonly log: Logger;
  readonly source: ServingSource;
  readonly shared: EtcdStore | undefined;
  readonly metrics: ClusterMetrics;
  /** The workers that serve. */
  readonly ready: ReadonlySet<Worker>;
  readonly coordinator: ReloadCoordinator;
  readonly acme: RunningAcme | undefined;
  readonly rotateTickets: () => Promise<unknown>;
}

/** Listens on `config.admin` (undefined when it is off); rejects when the port cannot be had. */
export async function startClusterAdmin(parts: ClusterAdminParts): Promise<http.Server | undefined> {
  const { config, log, source, shared, metrics, ready, coordinator, acme, rotateTickets } = parts;
  if (config.admin === null) return undefined;
  let keyserverPing: Promise<string | undefined> | undefined;
  /** The last listing GET /certs showed, and what it showed: one object (one render) until that changes. */
  let listed: { readonly key: string; readonly listing: object } | undefined;
  const admin = await startProxyAdmin(config.admin.host, config.admin.port, {
    config: () => source.config,
    metrics: async () => ({ contentType: metrics.contentType, body: await metrics.metrics() }),
    degradedReason: () => {
      const health = shared?.health;
      if (health !== undefined && !health.up) {
        const reason = `etcd unreachable since ${new Date(health.since).toISOString()} (${health.reason}); serving the last good state (revision ${health.revision}), changes refused`;
        return { part: 'store', reason };
      }
      // One entry's bad files are that entry's problem, told here, in /certs and the log: not a reason to take the
      // node, and with a shared store every node, out of a load balancer's rotation, which a 503 would.
      const missing = [...source.refusals.values()].filter((r) => !source.records.has(r.name));
      if (missing.length === 0) return undefined;
      const more = missing.length > 1 ? ` (and ${missing.length - 1} more entries, see GET /certs)` : '';
      return { part: 'certificates', reason: `certificate '${missing[0]!.name}' is not loaded: ${missing[0]!.message}${more}` };
    },
    notReadyReason: async () => {
      if (ready.size < config.workers) return `${ready.size} of ${config.workers} workers have loaded their certificates`;
      // Degraded is for a node that serves: one whose every entry is refused fails every handshake, and a load
      // balancer must take it out of rotation (a new node whose key server holds none of the store's keys).
      const refused = source.records.size === 0 ? [...source.refusals.values()][0] : undefined;
      if (refused !== undefined) return `no certificate serves: certificate '${refused.name}' is not loaded: ${refused.message}`;
      // One ping at a time, shared by every probe meanwhile: a burst of probes opened a key-server connection each,
      // which took the key server's allowance for this host from the workers' bridges, and read as not ready.
      keyserverPing ??= keyserverUnreachableReason(config).finally(() => (keyserverPing = undefined));
      return keyserverPing;
    },
    control: {
      tokenFile: config.admin.tokenFile,
      reload: () => coordinator.reload('admin'),
      putCertificate: async (name, chainText) => {
        await source.putCertificate(name, chainText);
        return coordinator.reload('admin', [name]);
      },
      certificates: () => {
        // Records and refusals change only with a committed pass (its generation); an entry's ACME state on its own (an
        // order, a failure, the fleet's state taken), so its views are part of the key: they are small beside the listing.
        const views = acme === undefined ? '' : JSON.stringify([...source.records.keys()].map((name) => acme.manager.view(name) ?? null));
        const key = `${source.generation} ${views}`;
        if (listed?.key !== key) listed = { key, listing: listCertificates(source, acme) };
        return listed.listing;
      },
      ...(acme === undefined
        ? {}
        : {
            acmeIssue: async (domains: readonly string[], name?: string, replaceDomains = false) =>
              describeIssued(await acme.manager.issue(domains, name, false, replaceDomains)),
            acmeRenew: async (name: string) => describeIssued(await acme.manager.renew(name)),
          }),
      ownedByConfig: (name) => source.config.certificates.some((c) => c.name === name),
      rotateTicketKeys: () => rotateTickets(),
      ...(shared === undefined
        ? {}
        : {
            putRoute: async (name: string, body: unknown) => {
              await putRoute(shared, name, body);
              return coordinator.reload('admin');
            },
            deleteRoute: async (name: string) => {
              if (!(await deleteRoute(shared, name))) return undefined;
              return coordinator.reload('admin');
            },
          }),
    },
  });
  if (!isLoopbackHost(config.admin.host)) {
    log.warn(
      { admin: admin.address() },
      'the admin API listens beyond loopback: /metrics, /readyz, /config and /certs answer anyone who reaches it (changes still need the token)',
    );
  }
  return admin;
}

/** What an ACME issuance answers the admin: never key material, the key id only; an issue adds its entry and the names it covers. */
function describeIssued(issued: { keyId: string; newKey: boolean; entry?: string; domains?: readonly string[]; previousDomains?: readonly string[] }): unknown {
  return {
    keyId: issued.keyId,
    newKey: issued.newKey,
    ...(issued.entry === undefined ? {} : { name: issued.entry, domains: issued.domains }),
    ...(issued.previousDomains === undefined ? {} : { previousDomains: issued.previousDomains }),
  };
}

/** GET /certs: what serves, what was refused, and each ACME-managed entry's renewal state. */
function listCertificates(source: ServingSource, acme: RunningAcme | undefined): object {
  return {
    certificates: [...source.records.values()].map((r) => ({
      name: r.name,
      from: r.from,
      names: r.names,
      serial: r.serial,
      issuer: r.issuer,
      notAfter: r.notAfter,
      keyId: r.keyId,
      loadedAt: r.loadedAt,
      refused: source.refusals.get(r.name) ?? null,
      ...(acme === undefined ? {} : { acme: acme.manager.view(r.name) ?? null }),
    })),
    refused: [...source.refusals.values()].filter((r) => !source.records.has(r.name)),
  };
}

/** Pings the key server; undefined when it answers. */
async function keyserverUnreachableReason(config: ProxyConfig): Promise<string | undefined> {
  try {
    const client = await connectKeyserver(config);
    try {
      await client.ping();
    } finally {
      client.close();
    }
    return undefined;
  } catch (err) {
    return `key server: ${(err as Error).message}`;
  }
}
