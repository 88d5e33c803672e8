/**
 * What a worker needs of keys, and all it knows of them: for each certificate
 * the `key` a secure context takes, counters for its metrics, and a close.
 *
 * The product's only implementation is the keyless bridge (keyless/bridge.ts):
 * its `key` is a PEM block that references the key server's key, so the
 * private key never enters this process. startProxyWorker takes another one
 * only as a programmatic option (WorkerOptions.keySource), for embedding and
 * benchmarks; no config key or flag selects it.
 */
import type { ServedCertificate } from '../certs/certificate.js';
import type { KeylessStats } from '../keyless/bridge.js';

export interface KeySource {
  /** The `key` option of tls.createSecureContext for this certificate; throws when there is none. */
  keyFor(certificate: Pick<ServedCertificate, 'name' | 'keyId' | 'spki'>): string | Buffer;
  /** Sign counters for the keyless metrics (zeros from a source with no key server). */
  stats(): KeylessStats;
  /** Releases what the source holds; the worker calls it last on close. */
  close(): void;
}
