/**
 * The product's KeySource (tls/key-source.ts): keys the proxy does not hold.
 * Nothing else in the proxy knows how keys are bridged: the worker asks its
 * key source for the `key` to hand to tls.createSecureContext and reads
 * counters for its metrics.
 *
 * Behind it (proxy/native): an OpenSSL 3 provider inside this process that
 * decodes our keyless PEM block into a key whose private operations are RPCs
 * to the key server. The RPC is synchronous on the worker's main thread, with
 * a per-call deadline and a circuit breaker, over one persistent connection
 * per process. Call `startKeylessBridge` once per process, before the first
 * secure context is built.
 */
import { readFileSync } from 'node:fs';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { ServedCertificate } from '../certs/certificate.js';
import * as native from '../native/index.js';
import type { KeySource } from '../tls/key-source.js';

export type KeylessStats = native.BridgeStats;

export interface KeylessBridge extends KeySource {
  /** The `key` option for tls.createSecureContext: a reference to the key server's key, not a key. */
  keyFor(certificate: Pick<ServedCertificate, 'keyId' | 'spki'>): string;
}

export function startKeylessBridge(endpoint: ProxyConfig['keyserver']): KeylessBridge {
  const tcp = endpoint.tcp;
  native.init({
    socketPath: endpoint.socket ?? undefined,
    timeoutMs: endpoint.timeoutMs,
    breakerMs: endpoint.breakerMs,
    tls:
      tcp === null
        ? undefined
        : {
            host: tcp.host,
            port: tcp.port,
            caPem: readFileSync(tcp.ca, 'utf8'),
            certPem: readFileSync(tcp.cert, 'utf8'),
            keyPem: readFileSync(tcp.key, 'utf8'),
            servername: tcp.servername ?? undefined,
          },
  });
  return {
    keyFor: (certificate) => native.keylessKeyPem(Buffer.from(certificate.keyId, 'hex'), certificate.spki),
    stats: () => native.stats(),
    // The provider's connection belongs to the process (one per process, kept for its life): nothing to release per worker.
    close: () => undefined,
  };
}
