/**
 * The handshake bench's comparison server: the real `keyedge proxy` cluster with a KeySource (proxy/tls/key-source.ts)
 * handing out PEM key files instead of the keyless bridge, so keyless − in memory is exactly the keyless hop
 * (bench/README.md, "Set-ups"). Usage: node dist/bench/handshake/inmemory.js --config FILE (`InMemoryConfig` JSON);
 * writes an `in-memory ready` JSON line once every worker serves, whatever the log level; SIGTERM/SIGINT stop it as `keyedge proxy`.
 */
import cluster from 'node:cluster';
import { createPublicKey } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadProxyConfig } from '../../config/load.js';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { createLogger } from '../../keyserver/shared/log.js';
import { runPrimary } from '../../proxy/cluster.js';
import { isReadyMessage } from '../../proxy/cluster-messages.js';
import { runWorker } from '../../proxy/cluster-worker.js';
import type { KeySource } from '../../proxy/tls/key-source.js';

export interface InMemoryConfig {
  readonly host: string;
  readonly port: number;
  readonly workers: number;
  readonly profile: TlsProfileName;
  /** `key` is a PEM private key file: the point of this server. */
  readonly certificates: readonly { readonly name: string; readonly chain: string; readonly key: string }[];
  readonly domains: readonly { readonly name: string; readonly origin: string }[];
  readonly admin: { readonly host: string; readonly port: number };
  readonly logLevel: string;
  /** The product's defaults when absent (config/proxy-defaults.ts). */
  readonly hstsMaxAgeSeconds?: number;
  readonly ocspStapling?: boolean;
  readonly shutdownGraceMs?: number;
}

/** PEM key files by key id (the SHA-256 of the public key, as certificates name their key). */
function pemKeySource(files: readonly string[]): KeySource {
  const pems = files.map((file) => readFileSync(file, 'utf8'));
  const byKeyId = new Map(pems.map((pem) => [keyIdOf(createPublicKey(pem).export({ type: 'spki', format: 'der' })), pem]));
  const noSigns = { signs: 0, failures: { connect: 0, timeout: 0, remote: 0, protocol: 0, breaker: 0 }, lastError: '' };
  return {
    keyFor: (certificate) => {
      const pem = byKeyId.get(certificate.keyId);
      if (pem === undefined) throw new Error(`no key file for certificate '${certificate.name}'`);
      return pem;
    },
    stats: () => noSigns,
    close: () => undefined,
  };
}

const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
if (values.config === undefined) throw new Error('usage: handshake-inmemory.js --config FILE');
const c = JSON.parse(readFileSync(values.config, 'utf8')) as InMemoryConfig;
// Its own state dir (certificate store, a key server socket nobody listens on) beside the config file.
const stateDir = join(dirname(resolve(values.config)), 'inmemory-state');
mkdirSync(stateDir, { recursive: true });
const config = loadProxyConfig(undefined, {
  stateDir,
  workers: c.workers,
  listen: [{ host: c.host, port: c.port, profile: c.profile }],
  certificates: c.certificates.map(({ name, chain }) => ({ name, chain })),
  sni: { default: null, onUnknown: 'reject' },
  domains: c.domains,
  admin: c.admin,
  log: { level: c.logLevel },
  // JSON has no undefined: what the file leaves out stays out, so the product's default applies.
  tls: JSON.parse(JSON.stringify({ hstsMaxAgeSeconds: c.hstsMaxAgeSeconds, ocspStapling: c.ocspStapling })),
  ...(c.shutdownGraceMs === undefined ? {} : { shutdownGraceMs: c.shutdownGraceMs }),
});
const log = createLogger(cluster.isPrimary ? 'inmemory' : `inmemory-worker-${cluster.worker?.id ?? 0}`, c.logLevel);
if (cluster.isPrimary) {
  let ready = 0;
  cluster.on('message', (_worker, message: unknown) => {
    const pids = Object.values(cluster.workers ?? {}).map((w) => w?.process.pid);
    // Written whatever the log level (the bench waits for it; at `warn` a logged line never came and the bench hung).
    if (isReadyMessage(message) && ++ready === c.workers) process.stdout.write(`${JSON.stringify({ port: c.port, workers: pids, msg: 'in-memory ready' })}\n`);
  });
  await runPrimary(config, log);
} else await runWorker(config, log, { keySource: pemKeySource(c.certificates.map((k) => k.key)) });
