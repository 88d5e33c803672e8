/**
 * The on-demand gate's per-client bound (on-demand.ts, gate 4): how many
 * checks (an ask request, a CNAME lookup, then maybe an order) one client may
 * start. A client picks the names in its SNI: one sending a new name per
 * handshake, under as many registered domains as it likes, cost the
 * operator's ask endpoint one request each, at the handshake rate, held back
 * only by `maxPendingChecks` (which then kept every other client's new name
 * `busy`) and the hourly limits (which count orders, not asks).
 *
 * A token bucket per client: `perMinute` checks at once, refilled at
 * `perMinute` a minute. A browser presents one name, or a few (a site's
 * `www`, its API and asset names), and is never held back; a flood is stopped
 * after its first `perMinute` names, then gets one check per 60/`perMinute` s.
 *
 * A client is who the worker's connection caps count as one
 * (tls/connection-limits.ts, clientKey): an IPv4 address, or an IPv6
 * address's /64 (a host picks any address in its /64). The worker sends it
 * with the name (on-demand-names.ts); trusted proxies (`forwarding.
 * trustedProxies`), whose connections carry many clients, send none and are
 * not bounded, as the connection caps do not count them. The bucket lives in
 * the primary, where the gate runs: it holds for the client across all the
 * node's workers; a fleet's nodes each keep their own (a client reaching n
 * nodes gets n times the bound).
 *
 * Memory: at most MAX_CLIENTS buckets (LRU). A bucket untouched for a minute
 * is full again, the same as none, so evicting the least recently used one
 * loses nothing unless more than MAX_CLIENTS clients started checks within a
 * minute.
 */
import { LRUCache } from 'lru-cache';

/** Clients remembered, as the ledger's refusals (on-demand-ledger.ts): a few MB at most, in the primary only. */
const MAX_CLIENTS = 100_000;
const MINUTE_MS = 60_000;

interface Bucket {
  tokens: number;
  at: number;
}

export class ClientChecks {
  readonly #perMinute: number;
  readonly #now: () => number;
  readonly #buckets = new LRUCache<string, Bucket>({ max: MAX_CLIENTS });

  /** `now`: milliseconds, monotonic; injected by tests. */
  constructor(perMinute: number, now: () => number = () => performance.now()) {
    this.#perMinute = perMinute;
    this.#now = now;
  }

  /** Whether `client` may start a check now; takes nothing (take() does, once the check starts). No client: not bounded. */
  allows(client: string | undefined): boolean {
    return client === undefined || this.#refilled(client).tokens >= 1;
  }

  /** A check for `client` starts: one token less. */
  take(client: string | undefined): void {
    if (client === undefined) return;
    const bucket = this.#refilled(client);
    bucket.tokens -= 1;
    this.#buckets.set(client, bucket);
  }

  /** Clients with a bucket (tests, memory). */
  get size(): number {
    return this.#buckets.size;
  }

  #refilled(client: string): Bucket {
    const now = this.#now();
    const bucket = this.#buckets.get(client);
    if (bucket === undefined) return { tokens: this.#perMinute, at: now };
    bucket.tokens = Math.min(this.#perMinute, bucket.tokens + ((now - bucket.at) * this.#perMinute) / MINUTE_MS);
    bucket.at = now;
    return bucket;
  }
}
