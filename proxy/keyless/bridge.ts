/**
 * The one interface through which the proxy uses keys it does not hold.
 * Nothing else in the proxy knows how keys are bridged: it asks for the `key`
 * to hand to tls.createSecureContext and reads counters for its metrics.
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

export type KeylessStats = native.BridgeStats;

export interface KeylessBridge {
  /** The `key` option for tls.createSecureContext: a reference to the key server's key, not a key. */
  keyPemFor(certificate: Pick<ServedCertificate, 'keyId' | 'spki'>): string;
  stats(): KeylessStats;
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
    keyPemFor: (certificate) => native.keylessKeyPem(Buffer.from(certificate.keyId, 'hex'), certificate.spki),
    stats: () => native.stats(),
  };
}
