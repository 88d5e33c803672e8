/**
 * What the on-demand gate (on-demand.ts) remembers between decisions: the
 * names it refused (for `refusedSeconds`) and the orders of the last hour,
 * per registered domain and in all, against the two hourly limits.
 *
 * One node alone keeps them in memory (bounded LRUs). A fleet keeps them in
 * its store, so the limits hold for the fleet, not per node, and a name one
 * node refused is not asked about again by another:
 *
 *   <prefix>acme/on-demand/refused/<name>   {"reason"}, under a lease of
 *                                           `refusedSeconds` (etcd forgets it)
 *   <prefix>acme/on-demand/orders/<domain>  [ms since the epoch, …] of the last hour,
 *   <prefix>acme/on-demand/orders-all       each written under a lease of an hour
 *                                           (etcd forgets a domain not ordered since)
 *
 * <domain> is the name's registrable domain by the Public Suffix List
 * (on-demand.ts, gate 6); it was the last two labels, a key of the same form
 * and the same one for a name under a one-label suffix (example.com). A node
 * still counting under a suffix (co.uk) writes a key no new node reads:
 * while both run, a registrant under it gets its own limit from each kind of
 * node (the fleet's limit, orders-all, is shared by both), and the old key's
 * lease takes it away an hour after its last order.
 *
 * An order slot is taken in one transaction that compares both counters'
 * revisions with what was read, and tries again when another node moved
 * them between: two nodes never both take the last slot. A limit read full
 * stays full until its oldest counted time leaves the hour (no node can
 * take a time back), so until then the node answers rate_limited without
 * asking etcd: names the ask endpoint allows (a customer's wildcard CNAME)
 * cost two reads each only while there is room. `full` says so before the
 * gate asks its ask endpoint (one node alone: from its memory), so a flood
 * under a full limit costs that endpoint nothing either. Refusals shared
 * are capped (MAX_SHARED_REFUSALS), so a flood of refused names cannot grow
 * every node's mirror without bound; past the cap they stay local.
 */
import { LRUCache } from 'lru-cache';
import type { OnDemandConfig } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { EtcdStore } from '../store/etcd-store.js';
import { ACME_ON_DEMAND } from '../store/layout.js';

const HOUR_MS = 3_600_000;
const REFUSED = `${ACME_ON_DEMAND}refused/`;
const ORDERS = `${ACME_ON_DEMAND}orders/`;
const ORDERS_ALL = `${ACME_ON_DEMAND}orders-all`;
const MAX_SHARED_REFUSALS = 10_000;
/**
 * How often the shared refusals are counted again. Counting lists up to
 * 10,000 refusals (the mirror's per-prefix index, mirror.ts; it was a walk of
 * the whole mirror), and was done for each refusal: a client sending random
 * names the ask endpoint refuses made the primary do it hundreds of times a
 * second. Between counts the refusals this node shares are added to the last count.
 */
const RECOUNT_MS = 1_000;
/** Transactions tried when other nodes keep moving the counters. */
const SLOT_TRIES = 5;

export type SlotAnswer = 'taken' | 'rate_limited' | 'unavailable';

export interface OnDemandLedger {
  /** Whether `name` was refused within `refusedSeconds` (by any node of the fleet). */
  refused(name: string): boolean;
  rememberRefusal(name: string, reason: string): void;
  /**
   * Whether an order under `domain` is known to be rate-limited now, from what this node last read (no I/O): the gate
   * then asks nothing about the name. False when unknown: takeOrderSlot decides.
   */
  full(domain: string): boolean;
  /** Takes an order slot for a name under `domain` when both hourly limits have room. */
  takeOrderSlot(domain: string): Promise<SlotAnswer>;
}

/** One node alone: memory only. */
export class LocalLedger implements OnDemandLedger {
  readonly #config: OnDemandConfig;
  readonly #refused: LRUCache<string, true>;
  readonly #perDomain = new LRUCache<string, number[]>({ max: 100_000 });
  #global: number[] = [];

  constructor(config: OnDemandConfig) {
    this.#config = config;
    this.#refused = new LRUCache({ max: 100_000, ttl: config.refusedSeconds * 1000 });
  }

  refused(name: string): boolean {
    return this.#refused.has(name);
  }

  rememberRefusal(name: string): void {
    this.#refused.set(name, true);
  }

  full(domain: string): boolean {
    const now = Date.now();
    return (
      (this.#perDomain.get(domain) ?? []).filter((t) => now - t < HOUR_MS).length >= this.#config.maxOrdersPerDomainPerHour ||
      this.#global.filter((t) => now - t < HOUR_MS).length >= this.#config.maxOrdersPerHour
    );
  }

  async takeOrderSlot(domain: string): Promise<SlotAnswer> {
    if (this.full(domain)) return 'rate_limited';
    const now = Date.now();
    const recentForDomain = (this.#perDomain.get(domain) ?? []).filter((t) => now - t < HOUR_MS);
    this.#global = this.#global.filter((t) => now - t < HOUR_MS);
    this.#perDomain.set(domain, [...recentForDomain, now]);
    this.#global.push(now);
    return 'taken';
  }
}

/** The fleet: in etcd, with this node's memory in front for its own refusals. */
export class FleetLedger implements OnDemandLedger {
  readonly #store: EtcdStore;
  readonly #config: OnDemandConfig;
  readonly #log: Logger;
  readonly #local: LocalLedger;
  /** The lease refusals are put under, shared for a tenth of its life (so a refusal lasts 90–100 % of refusedSeconds). */
  #lease: { readonly id: Promise<string>; readonly until: number } | undefined;
  /** Refusals in the store at the last count (performance.now() `at`), plus those shared since. */
  #shared = { count: 0, at: Number.NEGATIVE_INFINITY };
  /** Until when (ms since the epoch) the fleet's limit, and each registered domain's, was read full. */
  #allFullUntil = 0;
  readonly #domainFullUntil = new LRUCache<string, number>({ max: 10_000 });

  constructor(store: EtcdStore, config: OnDemandConfig, log: Logger) {
    this.#store = store;
    this.#config = config;
    this.#log = log;
    this.#local = new LocalLedger(config);
  }

  refused(name: string): boolean {
    return this.#local.refused(name) || this.#store.item(REFUSED + name) !== undefined;
  }

  rememberRefusal(name: string, reason: string): void {
    this.#local.rememberRefusal(name);
    if (!this.#store.health.up || !this.#mayShare()) return;
    const now = Date.now();
    if (this.#lease === undefined || this.#lease.until < now) {
      const ttl = this.#config.refusedSeconds;
      this.#lease = { id: this.#store.client.lease(ttl, { autoKeepAlive: false }).grant(), until: now + ttl * 100 };
    }
    const lease = this.#lease;
    void lease.id
      .then((id) =>
        this.#store.client
          .put(this.#store.prefix + REFUSED + name)
          .value(JSON.stringify({ reason }))
          .lease(id)
          .exec(),
      )
      .catch((err: Error) => {
        if (this.#lease === lease) this.#lease = undefined;
        this.#log.warn({ reason: err.message }, 'on-demand refusal not shared with the fleet; this node remembers it');
      });
  }

  /** Whether one more refusal may go to the store (under MAX_SHARED_REFUSALS); counts it if so. */
  #mayShare(): boolean {
    const now = performance.now();
    if (now - this.#shared.at >= RECOUNT_MS) this.#shared = { count: this.#store.keys(REFUSED).length, at: now };
    if (this.#shared.count >= MAX_SHARED_REFUSALS) return false;
    this.#shared.count++;
    return true;
  }

  full(domain: string): boolean {
    const now = Date.now();
    return this.#allFullUntil > now || (this.#domainFullUntil.get(domain) ?? 0) > now;
  }

  async takeOrderSlot(domain: string): Promise<SlotAnswer> {
    const client = this.#store.client;
    const domainKey = this.#store.prefix + ORDERS + domain;
    const allKey = this.#store.prefix + ORDERS_ALL;
    let lease: string | undefined;
    if (this.full(domain)) return 'rate_limited';
    try {
      for (let i = 0; i < SLOT_TRIES; i++) {
        const now = Date.now();
        const [forDomain, all] = await Promise.all([client.get(domainKey).exec(), client.get(allKey).exec()]);
        const recentForDomain = withinHour(times(forDomain.kvs[0]?.value), now);
        const recent = withinHour(times(all.kvs[0]?.value), now);
        const { maxOrdersPerDomainPerHour, maxOrdersPerHour } = this.#config;
        if (recentForDomain.length >= maxOrdersPerDomainPerHour) this.#domainFullUntil.set(domain, fullUntil(recentForDomain, maxOrdersPerDomainPerHour));
        if (recent.length >= maxOrdersPerHour) this.#allFullUntil = fullUntil(recent, maxOrdersPerHour);
        if (recentForDomain.length >= maxOrdersPerDomainPerHour || recent.length >= maxOrdersPerHour) return 'rate_limited';
        // Each counter's newest time is now: an hour on, it counts nothing, and its lease takes it away. Without one a
        // key stayed for every registered domain ever ordered, in etcd and in every node's mirror.
        lease ??= await client.lease(HOUR_MS / 1000, { autoKeepAlive: false }).grant();
        // A key that does not exist compares with mod revision 0.
        const result = await client
          .if(domainKey, 'Mod', '==', forDomain.kvs[0]?.mod_revision ?? '0')
          .and(allKey, 'Mod', '==', all.kvs[0]?.mod_revision ?? '0')
          .then(
            client
              .put(domainKey)
              .value(JSON.stringify([...recentForDomain, now]))
              .lease(lease),
            client
              .put(allKey)
              .value(JSON.stringify([...recent, now]))
              .lease(lease),
          )
          .commit();
        if (result.succeeded) return 'taken';
      }
      return 'rate_limited';
    } catch (err) {
      this.#log.warn({ domain, reason: (err as Error).message }, "on-demand order not counted: the fleet's store (etcd) is unreachable; not ordered");
      return 'unavailable';
    }
  }
}

/**
 * The times of the last hour. One past the next hour is not counted: written by a node whose clock is far ahead, or
 * garbage, it counted for as long as it lay in the future (1e15: for ever), and every write kept it, so on-demand
 * issuance stayed refused for the domain or the fleet. A clock some minutes ahead still counts.
 */
function withinHour(list: readonly number[], now: number): number[] {
  return list.filter((t) => Math.abs(now - t) < HOUR_MS);
}

/** When `recent` (at least `max` times) next has room: once its max-th newest time leaves the hour. */
function fullUntil(recent: readonly number[], max: number): number {
  return [...recent].sort((a, b) => a - b)[recent.length - max]! + HOUR_MS;
}

function times(value: Buffer | undefined): number[] {
  try {
    const parsed = JSON.parse(value?.toString('utf8') ?? '[]') as unknown;
    return Array.isArray(parsed) ? parsed.filter((t): t is number => typeof t === 'number') : [];
  } catch {
    return [];
  }
}
