/**
 * What a worker's log says of keyless signing: a warning while handshakes
 * fail because no key server signed (a key server stopped, unreachable,
 * refusing), and one line once signing works again. Without it an outage
 * was seen in the metrics alone: over a thousand failed handshakes and not
 * a line.
 *
 * Read from the bridge's own counters (native stats: signs, and failed signs
 * by reason), once a second, off the handshake path: a failed sign costs the
 * handshake nothing more than the native counter's increment it already had.
 * Each failed sign is one failed handshake (the only signature of a TLS 1.3
 * handshake, the ServerKeyExchange's in TLS 1.2).
 *
 * Rate: the first failure is said within a tick (a second); after that at most
 * one warning per WARN_INTERVAL_MS, carrying how many handshakes failed since
 * the last line, by reason class (connect, timeout, remote, protocol,
 * breaker), and the key servers concerned by address (`unix:<path>`,
 * `tls:<host>:<port>`, as the bridge names them). A recovery line comes with
 * the first tick that saw signs and no failure, after a warning. No key
 * material, PIN or handshake secret is in either line: the warning's
 * `lastError` is the bridge's own (address, cause, and the key id's first 16
 * hex digits, a digest of the public key, as `certificate now serving` logs).
 */
import type { KeyserverEndpoint } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { BridgeStats } from '../native/index.js';

/** How often the counters are read. */
export const TICK_MS = 1_000;
/** At most one warning per worker this often while failures go on. */
export const WARN_INTERVAL_MS = 30_000;

const REASONS = ['connect', 'timeout', 'remote', 'protocol', 'breaker'] as const;
type Reason = (typeof REASONS)[number];
type Counts = Record<Reason, number>;

/** A key server's address as the bridge names it (native/src/transport_*.c `where`). */
export function keyserverAddress(endpoint: KeyserverEndpoint): string {
  return endpoint.tcp === null ? `unix:${endpoint.socket ?? ''}` : `tls:${endpoint.tcp.host}:${endpoint.tcp.port}`;
}

const failedOf = (stats: BridgeStats): Counts => ({ ...stats.failures });
const total = (counts: Counts): number => REASONS.reduce((sum, r) => sum + counts[r], 0);
const serverFailures = (stats: BridgeStats, i: number): number => {
  const f = stats.servers?.[i]?.failures;
  return f === undefined ? 0 : f.connect + f.timeout + f.remote + f.protocol;
};

export class SigningLog {
  readonly #timer: NodeJS.Timeout;
  #signs: number;
  #failed: Counts;
  #perServer: { signs: number; failures: number }[];
  /** Failures since the last line, and the key servers they concern. */
  #pending: Counts = { connect: 0, timeout: 0, remote: 0, protocol: 0, breaker: 0 };
  #pendingServers = new Set<number>();
  #lastWarnAt = Number.NEGATIVE_INFINITY;
  /** A warning was the last line: a recovery line is owed once signing works. */
  #warned = false;

  constructor(
    private readonly stats: () => BridgeStats,
    private readonly addresses: readonly string[],
    private readonly log: Logger,
    private readonly now: () => number = () => performance.now(),
    tickMs = TICK_MS,
  ) {
    const first = stats();
    this.#signs = first.signs;
    this.#failed = failedOf(first);
    this.#perServer = addresses.map((_, i) => ({ signs: first.servers?.[i]?.signs ?? 0, failures: serverFailures(first, i) }));
    this.#timer = setInterval(() => this.tick(), tickMs);
    // Never keeps a process alive on its own.
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Reads the counters and says what changed (public for the timer and for tests that drive time). */
  tick(): void {
    const stats = this.stats();
    const failed = failedOf(stats);
    let newFailures = 0;
    for (const reason of REASONS) {
      const delta = Math.max(0, failed[reason] - this.#failed[reason]);
      this.#pending[reason] += delta;
      newFailures += delta;
    }
    const signed = stats.signs > this.#signs;
    const signing: number[] = [];
    for (const [i, before] of this.#perServer.entries()) {
      const now = { signs: stats.servers?.[i]?.signs ?? 0, failures: serverFailures(stats, i) };
      if (now.failures > before.failures) this.#pendingServers.add(i);
      if (now.signs > before.signs) signing.push(i);
      this.#perServer[i] = now;
    }
    this.#signs = stats.signs;
    this.#failed = failed;

    const pending = total(this.#pending);
    // A key server's failures that another one's signs made good (failover) failed no handshake: not named later.
    if (pending === 0) this.#pendingServers.clear();
    const at = this.now();
    if (pending > 0 && at - this.#lastWarnAt >= WARN_INTERVAL_MS) {
      this.#warn(stats, pending, at);
    } else if (this.#warned && newFailures === 0 && signed) {
      this.log.info(
        { keyservers: this.#names(signing.length > 0 ? signing : this.addresses.map((_, i) => i)), failed: pending },
        'key server signing works again',
      );
      this.#warned = false;
      this.#clearPending();
    }
  }

  #warn(stats: BridgeStats, pending: number, at: number): void {
    // A breaker failure tried no key server: those concerned are the ones not up (all of them, else).
    const servers = [...this.#pendingServers];
    if (servers.length === 0) for (const [i, server] of (stats.servers ?? []).entries()) if (server.state !== 'up') servers.push(i);
    const reasons = Object.fromEntries(REASONS.filter((r) => this.#pending[r] > 0).map((r) => [r, this.#pending[r]]));
    this.log.warn(
      {
        keyservers: this.#names(servers.length > 0 ? servers : this.addresses.map((_, i) => i)),
        failed: pending,
        reasons,
        lastError: stats.lastError,
        nextLineInSeconds: WARN_INTERVAL_MS / 1000,
      },
      'key server signing failing: handshakes fail',
    );
    this.#lastWarnAt = at;
    this.#warned = true;
    this.#clearPending();
  }

  #names(indexes: readonly number[]): string[] {
    return [...indexes].sort((a, b) => a - b).map((i) => this.addresses[i]!);
  }

  #clearPending(): void {
    for (const reason of REASONS) this.#pending[reason] = 0;
    this.#pendingServers.clear();
  }
}
