/**
 * The primary's background work once it serves: the hourly certificate expiry
 * check and the watch of the certificate store and the config file, whose
 * changes go to the reload coordinator. Runs until the function it returns
 * stops it. Before the watch opens, the store's leftovers of writes killed
 * midway are removed (certs/store-leftovers.ts).
 */
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import { CertificateStore } from './certs/store.js';
import type { ReloadCoordinator } from './serving/coordinator.js';
import type { ServingSource } from './serving/source.js';
import { watchForChanges } from './serving/watch.js';

/** Expiry warnings are checked this often (and after every reload). */
const EXPIRY_CHECK_MS = 3_600_000;

/** The expiry check, the store and config-file watch: running until the returned function stops them. */
export function watchBackground(
  config: ProxyConfig,
  log: Logger,
  {
    source,
    coordinator,
    warnExpiry,
    configFile,
  }: { source: ServingSource; coordinator: ReloadCoordinator; warnExpiry: () => void; configFile: string | undefined },
): () => void {
  const expiryTimer = setInterval(warnExpiry, EXPIRY_CHECK_MS);
  expiryTimer.unref();
  const leftovers = new CertificateStore(config.certStore.dir).removeLeftovers();
  if (leftovers.length > 0) log.info({ dir: config.certStore.dir, files: leftovers }, 'removed files left by certificate store writes killed midway');
  const stopWatching = watchForChanges({
    storeDir: config.certStore.dir,
    configFile,
    rescanSeconds: config.certStore.rescanSeconds,
    onChange: (trigger, names) => coordinator.reload(trigger, names),
    followed: () => source.followed,
    log,
  });
  return () => {
    clearInterval(expiryTimer);
    stopWatching();
  };
}
