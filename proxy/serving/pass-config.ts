/**
 * The config one pass of the reload path reads with (source.ts `next()`):
 * the file read again (when the source reloads it, after the first pass), its
 * domains with a fleet's stored routes added (store/routes.ts), and every
 * restart-only setting kept at its running value (restart-only.ts). Each
 * origin CA file is read and checked before anything is validated (a config
 * refused here changes nothing), and its content goes to the workers.
 */
import path from 'node:path';
import { loadProxyConfig } from '../../config/load.js';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { type OriginCas, readOriginCas } from '../http/origins.js';
import type { EtcdStore } from '../store/etcd-store.js';
import { type StoredRoutes, storedRoutes } from '../store/routes.js';
import { runningSettings } from './restart-only.js';
import { loadSettled } from './settling-read.js';

export interface PassConfig {
  /** What the pass validates and routes with. */
  readonly config: ProxyConfig;
  /** The file as read (or the running config, not read again): what a restart would take. */
  readonly fromFile: ProxyConfig;
  /** The file's own domains, without the stored routes. */
  readonly fileDomains: ProxyConfig['domains'];
  /** A fleet's stored routes, taken and refused; undefined without a fleet. */
  readonly routes: StoredRoutes | undefined;
  /** The origin CA files of `config.domains` as read and checked now: sent to the workers, which never read them. */
  readonly originCas: OriginCas;
}

/**
 * `running`: the config serving now; `reload`: read `running.source` again; `fileDomains`: the file's own domains as
 * last read; `shared`: the fleet's store, whose routes join the file's domains.
 */
export async function passConfig(
  running: ProxyConfig,
  options: { readonly reload: boolean; readonly fileDomains: ProxyConfig['domains']; readonly shared: EtcdStore | undefined },
): Promise<PassConfig> {
  // A refusal of a file changed a moment ago is looked at again once it is quiet (settling-read.ts loadSettled).
  const reloaded = options.reload ? await loadSettled(running.source, loadProxyConfig) : undefined;
  const fileDomains = reloaded?.domains ?? options.fileDomains;
  const routes = options.shared === undefined ? undefined : storedRoutes(options.shared, path.dirname(running.source), new Set(fileDomains.map((d) => d.name)));
  const fromFile = reloaded ?? running;
  // A restart-only setting the file changed keeps its running value until the restart, for this pass too: the
  // certificates were checked against the key server and read from the store directory the file named, while the
  // workers went on signing through the running one and serving its store (every handshake for a renewal whose key
  // only the new key server had failed; a new store directory dropped every running entry and lost uploads).
  const config: ProxyConfig = Object.freeze({
    ...fromFile,
    ...runningSettings(running),
    domains: routes === undefined ? fileDomains : [...fileDomains, ...routes.domains],
  });
  const originCas = readOriginCas(config.domains);
  return { config, fromFile, fileDomains, routes, originCas };
}
