/**
 * A keyless lab, an origin of the test's kind, and `keyedge proxy` serving one
 * name from its store and routing it to that origin: the fixture the abuse
 * tests (abuse.ts, an answering origin) and the downgrade and fuzz tests
 * (recording-proxy.ts, a byte-recording origin) share.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './proxy-lab.js';

export interface OriginProxy<O> {
  readonly lab: KeylessLab;
  readonly origin: O;
  readonly proxy: ClusterProxy;
  /** The lab CA, PEM. */
  readonly ca: string;
  close(): Promise<void>;
}

export interface OriginProxyOptions {
  /** Workers (default 2). */
  readonly workers?: number;
  /** Added to the workers' environment. */
  readonly env?: Record<string, string>;
  /** The config's `limits` (default: the product's). */
  readonly limits?: Record<string, number>;
  /** The config's `keyserver.timeoutMs` (default: the product's 250 ms). */
  readonly keyserverTimeoutMs?: number;
}

/** Starts the lab and the origin, then the proxy serving `host`; a proxy that does not start leaves no key server or origin behind. */
export async function startOriginProxy<O extends { readonly url: string; close(): Promise<void> }>(
  name: string,
  host: string,
  startOrigin: () => Promise<O>,
  { workers, env = {}, limits, keyserverTimeoutMs }: OriginProxyOptions = {},
): Promise<OriginProxy<O>> {
  const lab = await startKeylessLab();
  const origin = await startOrigin();
  const cert = await lab.certificate(name, lab.keys.ec, [host]);
  const failed = async (err: unknown): Promise<never> => {
    await origin.close();
    await lab.close();
    throw err;
  };
  const proxy = await startClusterProxy(
    lab,
    name,
    (p) => {
      writeFileSync(join(p.storeDir, `${name}.pem`), readFileSync(cert.file));
      return storeProxyConfig(lab, p, {
        ...(workers === undefined ? {} : { workers }),
        ...(limits === undefined ? {} : { limits }),
        ...(keyserverTimeoutMs === undefined ? {} : { keyserver: { socket: lab.socket, timeoutMs: keyserverTimeoutMs } }),
        domains: [{ name: host, origin: origin.url }],
      });
    },
    env,
    // A loaded CI machine starts workers and their TLS contexts slowly.
    75_000,
  ).catch(failed);
  return {
    lab,
    origin,
    proxy,
    ca: readFileSync(lab.caFile, 'utf8'),
    async close() {
      await proxy.stop();
      await origin.close();
      await lab.close();
    },
  };
}
