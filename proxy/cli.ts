/**
 * `keyedge proxy`: the TLS edge. The same command runs the cluster primary and,
 * re-executed by node:cluster, each worker.
 */
import cluster from 'node:cluster';
import { loadProxyConfig } from '../config/load.js';
import { type Command, parseCommandArgs } from '../keyserver/shared/command.js';
import { createLogger } from '../keyserver/shared/log.js';
import { runningConfigOfWorker } from './cluster-worker-config.js';

const USAGE = `Usage: keyedge proxy [--config FILE]

Terminates TLS for the configured certificates without holding their private
keys (every signature comes from the key server) and forwards each request to
its domain's origin. Runs a primary and \`workers\` worker processes.

Signals (to the primary): SIGTERM/SIGINT stop gracefully (open requests finish
within shutdownGraceMs); SIGHUP reloads the config file and the certificate
store (routing and certificates; a refused change keeps what serves). Changes
to the store and the config file are also picked up by themselves. A worker
that dies is replaced.

Options:
  --config FILE   JSON config (see config/proxy.json)
  --help          this text
`;

export const proxyCommand: Command = {
  name: 'proxy',
  async run(argv) {
    const { values } = parseCommandArgs(argv, { config: { type: 'string' } }, USAGE);
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    // A worker runs on its primary's running configuration (cluster-worker-config.ts), not the file as it is now.
    const config = (cluster.isPrimary ? undefined : runningConfigOfWorker()) ?? loadProxyConfig(values.config);
    const log = createLogger(cluster.isPrimary ? 'proxy' : `proxy-worker-${cluster.worker?.id ?? 0}`, config.log.level);
    // Loaded here, not at the top: the native keyless bridge comes with it, and
    // other keyedge commands (key management on a key-server host) never need it.
    if (cluster.isPrimary) await (await import('./cluster.js')).runPrimary(config, log);
    else await (await import('./cluster-worker.js')).runWorker(config, log);
    return 0;
  },
};
