/**
 * The product's KeySource (tls/key-source.ts): keys the proxy does not hold.
 * Nothing else in the proxy knows how keys are bridged: the worker asks its
 * key source for the `key` to hand to tls.createSecureContext and reads
 * counters for its metrics.
 *
 * Behind it (proxy/native): an OpenSSL 3 provider inside this process that
 * decodes our keyless PEM block into a key whose private operations are RPCs
 * to a key server. The RPC is synchronous on the worker's main thread, over
 * one persistent connection per key server per process; the native pool
 * (native/src/pool.c) picks the server with the lowest sign latency, fails
 * over to the next within the call's deadline, and keeps a breaker per
 * server. Call `startKeylessBridge` once per process, before the first secure
 * context is built.
 *
 * Health checks (pools of two or more, healthIntervalMs > 0): each key server
 * gets a PING over its own connection every healthIntervalMs, off the main
 * thread's signing path (async sockets). A failed PING takes it out of the
 * choice; a server out (a failed PING, or a sign that could not connect or
 * timed out) is probed at doubling intervals, up to 8 × healthIntervalMs, and
 * rejoins on the first PONG. Cost: one extra connection per key server per
 * worker and one small frame each interval.
 *
 * Mutual-TLS key servers (tcp-files.ts): each worker reads the CA, client
 * certificate and key at its start and checks the files every few seconds;
 * a renewal that validates is used from the next connect on, one that does
 * not is warned about once and the previous files stay in use.
 *
 * Its log (signing-log.ts): a rate-limited warning while handshakes fail for
 * want of a signature, naming the key servers, and a line when signing works
 * again; read from the native counters once a second, off the handshake path.
 */
import type { KeyserverEndpoint, ProxyConfig } from '../../config/proxy-schema.js';
import { KeyserverClient } from '../../keyserver/client/client.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ServedCertificate } from '../certs/certificate.js';
import { keyserverClientOptions } from '../certs/keyserver-lookup.js';
import * as native from '../native/index.js';
import type { KeySource } from '../tls/key-source.js';
import { keyserverAddress, SigningLog } from './signing-log.js';
import { readTcpMaterial, TcpFilesWatch, tcpFilesIdentity } from './tcp-files.js';

export type KeylessStats = native.BridgeStats;
export type KeyserverPoolStats = native.KeyserverPoolStats;

export interface KeylessBridge extends KeySource {
  /** The `key` option for tls.createSecureContext: a reference to the key server's key, not a key. */
  keyFor(certificate: Pick<ServedCertificate, 'keyId' | 'spki'>): string;
}

/** A dead key server is probed at doubling intervals up to this many health intervals. */
const MAX_BACKOFF_INTERVALS = 8;

function nativeServer(endpoint: KeyserverEndpoint): native.KeylessServer {
  const tcp = endpoint.tcp;
  if (tcp === null) return { name: endpoint.name, socketPath: endpoint.socket ?? undefined };
  return { name: endpoint.name, tls: { host: tcp.host, port: tcp.port, ...readTcpMaterial(endpoint.name, tcp), servername: tcp.servername ?? undefined } };
}

export function startKeylessBridge(keyserver: ProxyConfig['keyserver'], log?: Logger): KeylessBridge {
  const healthChecked = keyserver.servers.length > 1 && keyserver.healthIntervalMs > 0;
  // Before the files are read: a renewal written while they are is read again at the first check (tcp-files.ts).
  const seen = keyserver.servers.map((endpoint) => (endpoint.tcp === null ? '' : tcpFilesIdentity(endpoint.tcp)));
  const generation = native.init({
    servers: keyserver.servers.map(nativeServer),
    timeoutMs: keyserver.timeoutMs,
    breakerMs: keyserver.breakerMs,
    healthChecked,
  });
  // A renewed client certificate, key or CA is used from the next connect on, without a worker restart.
  const watches = keyserver.servers.flatMap(({ name, tcp }, index) =>
    tcp === null ? [] : [new TcpFilesWatch(name, tcp, seen[index]!, (material) => native.setTls(generation, index, material), log)],
  );
  const checks = healthChecked ? keyserver.servers.map((endpoint, index) => new HealthCheck(keyserver, endpoint, index, generation, log)) : [];
  // Failed handshakes for want of a signature are said in the log (signing-log.ts), not only counted.
  const signing = log === undefined ? undefined : new SigningLog(native.stats, keyserver.servers.map(keyserverAddress), log);
  return {
    keyFor: (certificate) => native.keylessKeyPem(Buffer.from(certificate.keyId, 'hex'), certificate.spki),
    stats: () => native.stats(),
    // The signing connections belong to the process (kept for its life); the health checks are this bridge's.
    close: () => {
      for (const check of checks) check.stop();
      for (const watch of watches) watch.stop();
      signing?.stop();
    },
  };
}

/** PINGs one key server on its own connection and tells the native pool what it found. */
class HealthCheck {
  #client: KeyserverClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failures = 0;
  #stopped = false;
  readonly #intervalMs: number;
  readonly #timeoutMs: number;

  constructor(
    keyserver: ProxyConfig['keyserver'],
    private readonly endpoint: KeyserverEndpoint,
    private readonly index: number,
    private readonly generation: number,
    private readonly log: Logger | undefined,
  ) {
    this.#intervalMs = keyserver.healthIntervalMs;
    // Generous: the answer is read by an event loop that also runs handshakes, and a
    // false "down" only costs choice, while a dead server is found by signs anyway.
    this.#timeoutMs = Math.max(keyserver.timeoutMs * 4, 1_000);
    this.#schedule(this.#intervalMs);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#client?.close();
    this.#client = undefined;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#probe(), delayMs);
    // Health checks never keep a process alive on their own.
    this.#timer.unref();
  }

  async #probe(): Promise<void> {
    let error: Error | undefined;
    // A kept connection may have ended since the last probe (the server restarted): that says
    // nothing of the server now, so a failure on it is retried once on a new connection.
    for (const reused of this.#client === undefined ? [false] : [true, false]) {
      try {
        this.#client ??= await KeyserverClient.connect(keyserverClientOptions(this.endpoint, this.#timeoutMs));
        await this.#client.ping();
        error = undefined;
        break;
      } catch (err) {
        error = err as Error;
        this.#client?.close();
        this.#client = undefined;
        if (this.#stopped || !reused) break;
      }
    }
    if (this.#stopped) {
      this.#client?.close();
      return;
    }
    const stateBefore = native.stats().servers?.[this.index]?.state;
    native.setHealth(this.generation, this.index, error === undefined);
    if (error === undefined) {
      if (stateBefore !== 'up') this.log?.info({ keyserver: this.endpoint.name }, 'key server answers again: back in the pool');
      this.#failures = 0;
      this.#schedule(this.#intervalMs);
      return;
    }
    if (this.#failures === 0)
      this.log?.warn({ keyserver: this.endpoint.name, err: error.message }, 'key server health check failed: out of the pool until it answers');
    this.#failures++;
    this.#schedule(this.#intervalMs * 2 ** Math.min(this.#failures - 1, Math.log2(MAX_BACKOFF_INTERVALS)));
  }
}
