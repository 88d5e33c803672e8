/**
 * The primary's start-up: the fleet's shared store (when `etcd` is set), then
 * the first pass over the certificates, validated here once, before any
 * worker starts: workers receive the result and never parse or judge a
 * certificate themselves. A refused start closes the store's connections, so
 * the process can exit.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { ServingSource } from './serving/source.js';
import { refuseStartOnConfigCertificates } from './serving/start.js';
import { CACHE_FILE } from './store/cache.js';
import type { EtcdStore, StoreChange } from './store/etcd-store.js';

/** Start-up: the fleet's store (if any), then the first pass over the certificates, validated here before any worker starts. */
export async function startServing(
  config: ProxyConfig,
  log: Logger,
  onChange: (changes: ReadonlySet<StoreChange>) => void,
): Promise<{ shared: EtcdStore | undefined; source: ServingSource; configFile: string | undefined; refusedAtStart: boolean }> {
  const shared = config.etcd === null ? undefined : await fleetStore(config, config.etcd, log, onChange);
  await shared?.start();
  // Certificates are validated here, once, before any worker starts: workers
  // receive the result and never parse or judge a certificate themselves.
  const configFile = existsSync(config.source) ? config.source : undefined;
  const source = new ServingSource(config, {
    ...(shared === undefined ? {} : { shared }),
    reloadConfig: configFile !== undefined,
    onUnverified: (reason, warning) => log.warn({ reason }, warning),
    warn: (message) => log.warn(message),
    keepState: true,
  });
  let first: Awaited<ReturnType<ServingSource['next']>>;
  try {
    first = await source.next();
    refuseStartOnConfigCertificates(config, first);
  } catch (err) {
    // The etcd client's connections would keep a refused start from exiting.
    await shared?.close();
    throw err;
  }
  source.commit(first);
  for (const refusal of first.refused) {
    log.error(
      { certificate: refusal.name, source: refusal.source, reason: refusal.reason, code: 'KEYEDGE_ERR_CERTIFICATE' },
      `certificate refused: ${refusal.message}; ${source.records.has(refusal.name) ? 'the version the last run served serves' : 'it is not served'}`,
    );
  }
  // What a refused entry serves instead: the version the last run served (serving/serve-last.ts), and why.
  for (const warning of first.warnings) if (first.refused.some((r) => r.name === warning.name)) log.warn({ certificate: warning.name }, warning.message);
  return { shared, source, configFile, refusedAtStart: first.refused.length > 0 };
}

/**
 * The fleet's store, its modules loaded only here: the etcd client (etcd3, gRPC, protobufjs) costs some 0.3 s of CPU
 * to load, which a proxy without `etcd`, its primary and every worker it starts or replaces, no longer pays.
 */
async function fleetStore(
  config: ProxyConfig,
  etcd: NonNullable<ProxyConfig['etcd']>,
  log: Logger,
  onChange: (changes: ReadonlySet<StoreChange>) => void,
): Promise<EtcdStore> {
  const [{ etcdClient }, { EtcdStore }] = await Promise.all([import('./store/etcd-client.js'), import('./store/etcd-store.js')]);
  return new EtcdStore(etcdClient(etcd, config.source), {
    prefix: etcd.prefix,
    timeoutMs: etcd.timeoutMs,
    maxRequestBytes: etcd.maxRequestBytes,
    cacheFile: path.join(config.stateDir, CACHE_FILE),
    log,
    onChange,
  });
}
