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
import { etcdClient } from './store/etcd-client.js';
import { EtcdStore, type StoreChange } from './store/etcd-store.js';

/** Start-up: the fleet's store (if any), then the first pass over the certificates, validated here before any worker starts. */
export async function startServing(
  config: ProxyConfig,
  log: Logger,
  onChange: (changes: ReadonlySet<StoreChange>) => void,
): Promise<{ shared: EtcdStore | undefined; source: ServingSource; configFile: string | undefined; refusedAtStart: boolean }> {
  const shared =
    config.etcd === null
      ? undefined
      : new EtcdStore(etcdClient(config.etcd, config.source), {
          prefix: config.etcd.prefix,
          timeoutMs: config.etcd.timeoutMs,
          maxRequestBytes: config.etcd.maxRequestBytes,
          cacheFile: path.join(config.stateDir, CACHE_FILE),
          log,
          onChange,
        });
  await shared?.start();
  // Certificates are validated here, once, before any worker starts: workers
  // receive the result and never parse or judge a certificate themselves.
  const configFile = existsSync(config.source) ? config.source : undefined;
  const source = new ServingSource(config, {
    ...(shared === undefined ? {} : { shared }),
    reloadConfig: configFile !== undefined,
    onUnverified: (reason) => log.warn({ reason }, 'key server unreachable at start: certificates load unverified, handshakes wait for it'),
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
  // What a refused entry serves instead: the version the last run served (serving/prepare.ts), and why.
  for (const warning of first.warnings) if (first.refused.some((r) => r.name === warning.name)) log.warn({ certificate: warning.name }, warning.message);
  return { shared, source, configFile, refusedAtStart: first.refused.length > 0 };
}
