/**
 * The settings only a restart can change (README, "Reloads"): a reload that
 * changes them applies the rest and says so, and each keeps its running value
 * until the restart, for the pass that read the change too (source.ts). The
 * certificates are checked against the key server and read from the store
 * directory the workers use, never against the ones the file names for after
 * the restart. Pure.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';

/** Settings that only a restart can change: a reload that changes them applies the rest and says so. */
export const RESTART_ONLY = [
  'workers',
  'listen',
  'httpRedirect',
  'admin',
  'keyserver',
  'stateDir',
  'certStore',
  'tls',
  'limits',
  'forwarding',
  'log',
  'shutdownGraceMs',
  'etcd',
  // Started once by the primary (acme/service.ts): the issuer, its key server config and the on-demand gate keep the
  // section they were started with. A reload that changed it said nothing, leaving the operator believing it applied.
  'acme',
  // Read once by the primary's supervisor and serving distribution (cluster-supervisor.ts, cluster.ts): likewise.
  'workerStartTimeoutMs',
  'workerSilentTimeoutMs',
  'reloadApplyTimeoutMs',
] as const;

type RestartOnly = (typeof RESTART_ONLY)[number];

/** The restart-only settings of `config`. */
export function runningSettings(config: ProxyConfig): Pick<ProxyConfig, RestartOnly> {
  return Object.fromEntries(RESTART_ONLY.map((key) => [key, config[key]])) as Pick<ProxyConfig, RestartOnly>;
}

/** The restart-only settings `fromFile` changes from the `running` ones: what a reload reports as needing a restart. */
export function restartNeeded(fromFile: ProxyConfig, running: ProxyConfig): RestartOnly[] {
  return RESTART_ONLY.filter((key) => JSON.stringify(fromFile[key]) !== JSON.stringify(running[key]));
}
