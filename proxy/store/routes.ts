/**
 * Routes (domain → origins) kept in the fleet's store, one key per domain,
 * in exactly the config file's `domains[]` form and checked by the same
 * schema: a route written by the admin API on one node is served by every
 * node after the same validated reload a config change goes through.
 *
 * The config file's own domains come first: a stored route with the name of
 * a file domain is not served (reported), so one name never means two
 * routes. Relative paths (originTls.ca) resolve against the config file's
 * directory, as in the file.
 */
import { resolveDomain } from '../../config/load.js';
import { domainSchema, type ProxyDomain } from '../../config/proxy-schema.js';
import { formatIssues } from '../../config/load.js';
import { ConfigError } from '../../keyserver/shared/errors.js';
import type { EtcdStore } from './etcd-store.js';
import { ROUTES } from './layout.js';

export interface StoredRoutes {
  readonly domains: readonly ProxyDomain[];
  /** Stored routes not served, and why; `revision`: the route's, so that a refusal is said once per version. */
  readonly refused: readonly { readonly name: string; readonly message: string; readonly revision: number }[];
}

/** Every stored route, resolved; `taken`: names the config file routes already. */
export function storedRoutes(store: EtcdStore, baseDir: string, taken: ReadonlySet<string>): StoredRoutes {
  const domains: ProxyDomain[] = [];
  const refused: { name: string; message: string; revision: number }[] = [];
  for (const key of store.keys(ROUTES).sort()) {
    const item = store.item(ROUTES + key)!;
    let raw: unknown;
    try {
      raw = JSON.parse(item.value);
    } catch {
      refused.push({ name: key, message: `route '${key}' in ${store.dir}${ROUTES} is not valid JSON`, revision: item.modRevision });
      continue;
    }
    const problem = routeProblem(key, raw);
    if (problem !== undefined) {
      refused.push({ name: key, message: `route '${key}' in ${store.dir}${ROUTES}: ${problem}`, revision: item.modRevision });
      continue;
    }
    if (taken.has(key)) {
      refused.push({
        name: key,
        message: `route '${key}' in ${store.dir}${ROUTES} has the name of a domain of the config file, which wins`,
        revision: item.modRevision,
      });
      continue;
    }
    domains.push(resolveDomain(domainSchema.parse(raw), baseDir));
  }
  return { domains, refused };
}

/** Validates and stores a route for domain `name` (the admin API's PUT /routes/:name). Rejects with ConfigError or StoreUnavailableError. */
export async function putRoute(store: EtcdStore, name: string, raw: unknown): Promise<void> {
  const problem = routeProblem(name, raw);
  if (problem !== undefined) throw new ConfigError(`${store.dir}${ROUTES}${name}`, '', problem);
  await store.put(ROUTES + name, JSON.stringify(raw));
}

export async function deleteRoute(store: EtcdStore, name: string): Promise<boolean> {
  if (store.item(ROUTES + name) === undefined) return false;
  await store.delete(ROUTES + name);
  return true;
}

function routeProblem(name: string, raw: unknown): string | undefined {
  const parsed = domainSchema.safeParse(raw);
  if (!parsed.success) {
    const first = formatIssues(parsed.error.issues, raw)[0];
    return `${first?.path ? `${first.path}: ` : ''}${first?.message ?? 'invalid'}`;
  }
  if (parsed.data.name !== name) return `"name" is '${parsed.data.name}', not '${name}'`;
  return undefined;
}
