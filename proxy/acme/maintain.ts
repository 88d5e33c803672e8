/**
 * Keeping managed certificates issued and renewed (policy.ts says when), and
 * what the operator and the on-demand gate ask of them.
 *
 * Runs in the cluster primary on a timer (`renewal.checkSeconds`) and on the
 * operator's word (admin API: POST /acme/issue, POST /acme/renew/NAME). At
 * most `renewal.maxConcurrent` orders run at once; an entry already in flight
 * is never ordered twice (orders.ts); an on-demand order waits its turn
 * (#inTurn), an operator's goes at once; the renewals a pass finds due past
 * the bound start as orders end (#walk). A failure leaves the store entry as it
 * is (the current certificate keeps serving until it expires), is logged,
 * counted, remembered with its backoff in the state file, and shown in
 * GET /certs. An operator's order for a new list of names (domain-lists.ts)
 * that fails is the answer's alone: the entry keeps its names and schedule.
 * An on-demand entry whose first order failed, no certificate serving it, is
 * the exception: the loop leaves it, and only its next handshake once its
 * backoff is over, through the on-demand gate and its hourly limits, orders
 * it again (on-demand.ts),
 * unless the operator issues or renews it (admin API), which makes it an
 * ordinary entry. Each pass then forgets such entries a day old and deletes
 * retired keys (housekeeping.ts).
 *
 * In a fleet every node runs this loop on the shared state (shared-state.ts);
 * an order runs under the name's issuance lock (issuance-locks.ts), so when
 * two nodes decide to order the same name, one orders and the other, once
 * the lock is its own, finds the name issued since it asked and orders
 * nothing.
 */
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import type { CertificateRecord } from '../serving/spec.js';
import { covers, domainsToOrder, entryForList } from './domain-lists.js';
import { entryOf } from './entry-names.js';
import { AcmeError } from './errors.js';
import { deleteRetiredKeys, forgetStaleFailures } from './housekeeping.js';
import type { Issued } from './issuer.js';
import { type NewList, type OrderDeps, OrderRunner } from './orders.js';
import { ariRenewalTime, leafTimes, renewalTime } from './policy.js';
import { RecordedNames } from './recorded-names.js';
import { backingOff, type ManagedState, waitsForTheGate } from './state.js';
import type { TokenKeys } from './token-keys.js';

export interface ManagerDeps extends OrderDeps {
  readonly keys: TokenKeys;
  /**
   * Whether the certificate store (or the config's certificates) has an entry named `name`, serving or not (refused: not yet
   * valid, its key unknown, …); default: only what serves (`records`). Not ACME's to take on demand: its chain replaced it.
   */
  readonly stored?: (name: string) => boolean;
  /** RFC 9773 renewal window for a certID; undefined when the CA offers no ARI. */
  readonly renewalWindow: (certId: string) => Promise<{ start: Date; end: Date; retryAfterMs: number | undefined } | undefined>;
}

/** In a fleet, a certificate another node issued this recently is loading here, not missing. */
const JUST_ISSUED_MS = 120_000;

/** ARI windows are looked at again after the CA's Retry-After, or this long without one (RFC 9773 §4.3 suggests hours). */
const ARI_RECHECK_MS = 6 * 3_600_000;

/** The CA's Retry-After for its renewal info is held to this range (RFC 9773 §4.3.2: clamped to a reasonable range). */
const ARI_RECHECK_MIN_MS = 3_600_000;
const ARI_RECHECK_MAX_MS = 86_400_000;

/**
 * After the CA's renewal info did not answer (no answer in time, unreachable, 5xx, 429), it is asked nothing for this long
 * (or its Retry-After, held to ARI_RECHECK_MIN_MS .. ARI_RECHECK_MAX_MS): the entries renew by lifetime meanwhile. Each
 * entry's lookup was awaited in turn, two requests of up to `timeoutMs` each, and a failed one was asked again at every
 * pass: a slow endpoint held the pass (and the renewals after it) for 2 × timeoutMs per managed certificate.
 */
const ARI_PAUSE_MS = ARI_RECHECK_MIN_MS;

/** What an issue did: the certificate, the entry, the names it covers, and the entry's names before when it changed them (domain-lists.ts). */
export interface IssueOutcome extends Issued {
  readonly entry: string;
  readonly domains: readonly string[];
  readonly previousDomains?: readonly string[];
}

export class CertificateManager {
  readonly #deps: ManagerDeps;
  readonly #orders: OrderRunner;
  /** Which entries record a name, for isManaged (recorded-names.ts). */
  readonly #recorded: RecordedNames;
  /** On-demand orders waiting for a place among `renewal.maxConcurrent` (#inTurn), woken one per order that ends. */
  readonly #waiting: (() => void)[] = [];
  /**
   * The entries with an on-demand order waiting its turn (#inTurn), and how many: in progress as a running order is. A failed
   * on-demand entry whose backoff was over, queued so, was neither managed nor backing off, and each of its handshakes (every
   * worker's report, every 10 s) ran the whole gate again: an ask request and an order of its registered domain's hour each.
   */
  readonly #queued = new Map<string, number>();
  /**
   * The entries the current pass has not looked at yet: it stops where every place is taken and goes on from there each
   * time an order ends (#placeFreed). It stopped there until the next pass, `checkSeconds` (an hour) later: at the
   * defaults some 96 renewals a day whatever the CA's speed, so past a few thousand managed certificates the due ones
   * piled up until they expired.
   */
  #left: string[] = [];
  /** Whether a walk over #left is under way (#walk): one at a time. */
  #walking = false;
  /** stop() was called: an order ending starts no renewal left of the pass (the walk went on ordering the backlog). */
  #stopped = false;
  /** No renewal-info lookup before this (ms since the epoch): the CA's endpoint did not answer (ARI_PAUSE_MS). */
  #ariPausedUntil = 0;
  /** Per entry, the serial whose renewal info the CA refused (a 4xx, a window that is none), and when to ask again. */
  readonly #ariRefused = new Map<string, { readonly serial: string; readonly retryAt: number }>();
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;

  constructor(deps: ManagerDeps) {
    this.#deps = deps;
    this.#orders = new OrderRunner(deps, () => this.#placeFreed());
    this.#recorded = new RecordedNames(() => deps.state.state.certificates);
  }

  /** The state's recorded names may have changed elsewhere (the fleet's state taken): isManaged looks again. */
  namesChanged(): void {
    this.#recorded.changed();
  }

  start(): void {
    const tick = (): void => void this.tick().catch((err: unknown) => this.#deps.log.error({ err }, 'ACME maintenance pass failed'));
    this.#timer = setInterval(tick, this.#deps.config.renewal.checkSeconds * 1000);
    this.#timer.unref();
    setImmediate(tick);
  }

  /** No pass starts after this, and the one under way orders nothing more (the primary is shutting down). */
  stop(): void {
    clearInterval(this.#timer);
    this.#stopped = true;
    this.#left = [];
  }

  /**
   * Whether `name` is managed already (on-demand asks before ordering): its own entry, or another entry's list, or the names
   * of an order running (an expansion not yet recorded) cover it; a failed on-demand entry is the gate's again. Asked of its
   * own entry only, a handshake for `b` while entry `a` was ordered or renewed for `a, b` made a second certificate for `b`.
   * Constant time in the number of entries (recorded-names.ts): asked for every uncovered name a handshake brings.
   */
  isManaged(name: string): boolean {
    const { certificates } = this.#deps.state.state;
    const live = (entry: string, managed: ManagedState): boolean => this.#inProgress(entry) || !waitsForTheGate(managed);
    const entry = this.entryOf([name]);
    const own = certificates[entry];
    if (own !== undefined && live(entry, own)) return true;
    if (this.#orders.ordering(name)) return true;
    for (const other of this.#recorded.candidates(name)) {
      const managed = certificates[other];
      if (managed !== undefined && covers(managed.domains, name) && live(other, managed)) return true;
    }
    return false;
  }

  /**
   * Whether `name`'s own entry is a failed on-demand entry still in its backoff (state.ts backingOff), no order running for
   * it: the gate orders nothing for it until then. The gate ordered such a name again at its next handshake (each worker
   * reports it every 10 s), however its order failed, the CA's Retry-After included: a name the CA would not validate took
   * every order of its registered domain's hour (`maxOrdersPerDomainPerHour`), each slot as the hour freed it, and the
   * domain's other new names were rate-limited for as long as its clients came.
   */
  backingOff(name: string): boolean {
    const entry = this.entryOf([name]);
    const own = this.#deps.state.state.certificates[entry];
    return own !== undefined && !this.#inProgress(entry) && backingOff(own, Date.now());
  }

  /** Whether an order for entry `name` runs, or an on-demand one waits its turn (#inTurn). */
  #inProgress(name: string): boolean {
    return this.#orders.running(name) || this.#queued.has(name);
  }

  /**
   * Each live entry's names (entryForList): those it records, with those of its running order (an expansion not yet
   * recorded). A failed on-demand entry nothing serves holds none: it is the gate's, and forgotten in a day.
   */
  #holders(): Map<string, readonly string[]> {
    const holders = new Map<string, readonly string[]>();
    for (const [entry, managed] of Object.entries(this.#deps.state.state.certificates)) {
      const running = this.#orders.domainsOf(entry);
      if (running === undefined && !this.#queued.has(entry) && waitsForTheGate(managed)) continue;
      holders.set(entry, running === undefined ? managed.domains : [...new Set([...managed.domains, ...running])]);
    }
    return holders;
  }

  /**
   * Whether `name`'s entry is a certificate of the store (uploaded, the config's, or a renewal tool's), serving or refused:
   * an on-demand order's chain would replace it. Asked of what serves alone, an operator's entry refused for now (not yet
   * valid, its key not yet in the token) was replaced by the on-demand certificate of a handshake for its name.
   */
  inStore(name: string): boolean {
    const entry = this.entryOf([name]);
    return this.#deps.records().has(entry) || this.#deps.stored?.(entry) === true;
  }

  get failing(): number {
    return Object.values(this.#deps.state.state.certificates).filter((c) => c.failures > 0).length;
  }

  /** The store entry `domains` are (or would be) managed under: entry-names.ts. */
  entryOf(domains: readonly string[]): string {
    return entryOf(domains, this.#deps.state.state.certificates);
  }

  /**
   * Issues a new managed certificate now, or, when the entry is managed already, renews it, or orders it for the operator's
   * new list of names (domain-lists.ts: added names, or `replaceDomains`; a dropped name without it is refused); resolves once
   * a certificate covering `domains` serves. Without `entry`, the operator's issue is for the entry that records one of its
   * names (domain-lists.ts). An on-demand order never changes an entry's names.
   */
  issue(domains: readonly string[], entry?: string, onDemand = false, replaceDomains = false): Promise<IssueOutcome> {
    let name: string;
    let wanted: string[] | undefined;
    try {
      name = entry ?? (onDemand ? this.entryOf(domains) : entryForList(this.entryOf(domains), domains, this.#holders()));
      const managed = this.#deps.state.state.certificates[name];
      // The gate asked before awaiting its ask endpoint: an order or an expansion may cover the name since (here, or another
      // node's, taken with the fleet's state since: the index is rebuilt for this question, asked only of a name to order).
      if (onDemand) this.#recorded.changed();
      if (onDemand && domains.some((d) => this.isManaged(d) || this.inStore(d))) {
        throw new KeyedgeError('KEYEDGE_ERR_ACME', `'${domains.join(', ')}' became managed while the on-demand checks ran; not ordered on demand`);
      }
      // Its order failed while the checks ran (or the gate was asked before its failure was known): its backoff holds.
      if (onDemand && domains.some((d) => this.backingOff(d))) {
        throw new KeyedgeError('KEYEDGE_ERR_ACME', `'${domains.join(', ')}' failed its last order and its backoff is not over; not ordered on demand`);
      }
      if (managed !== undefined && !onDemand) wanted = domainsToOrder(name, managed.domains, domains, replaceDomains);
    } catch (err) {
      return Promise.reject(err);
    }
    const managed = this.#deps.state.state.certificates[name];
    const previous = managed === undefined ? undefined : [...managed.domains];
    if (managed === undefined) {
      // A name listed twice is one name (as domainsToOrder makes it for a managed entry): recorded, ordered and shown once.
      const unique = [...new Set(domains)];
      this.#deps.state.state.certificates[name] = { domains: unique, keyId: '', failures: 0, ...(onDemand ? { onDemand: true as const } : {}) };
      this.#recorded.changed();
      // The state file's save throws synchronously (disk full): thrown from here it escaped an on-demand handshake's
      // promise chain as an unhandled rejection, which ended the primary. The order's own saves report it.
      Promise.resolve()
        .then(() => this.#deps.state.save())
        .catch((err: unknown) => this.#deps.log.warn({ certificate: name, reason: (err as Error).message }, 'ACME state not saved'));
    } else if (!onDemand && managed.onDemand === true) {
      // The operator asks for it (admin API): it is no longer the gate's alone, and a failure is retried by the loop as for any
      // name asked for; left marked, a failed on-demand entry the operator ordered was never retried until a handshake came.
      delete managed.onDemand;
    }
    const list = wanted === undefined ? undefined : { domains: wanted, replace: replaceDomains };
    const order = onDemand ? this.#inTurn(name, () => this.#run(name, list)) : this.#run(name, list);
    return order.then((issued) => ({
      ...issued,
      entry: name,
      domains: wanted ?? this.#deps.state.state.certificates[name]?.domains ?? [...domains],
      ...(wanted === undefined || previous === undefined ? {} : { previousDomains: previous }),
    }));
  }

  /** Renews a managed entry now, whatever its schedule or backoff. */
  renew(name: string): Promise<Issued> {
    const managed = this.#deps.state.state.certificates[name];
    if (managed === undefined) {
      return Promise.reject(new KeyedgeError('KEYEDGE_ERR_CERT_NOT_FOUND', `certificate '${name}' is not managed by ACME; issue it with keyedge cert issue`));
    }
    // The operator asks for it, as in issue(): a failure is retried by the loop from now on.
    delete managed.onDemand;
    return this.#run(name);
  }

  /**
   * Resolves once an on-demand order for entry `name` may start: fewer than `renewal.maxConcurrent` orders run (the
   * renewal loop's bound). Each such order went at once: a burst of names the ask policy allows (customers onboarding,
   * or a client cycling them) ran as many orders as the hourly limits let through, each with its `keyedge key generate`
   * child (a node process) and key-server connection, and on a small host their starts took the CPU from the workers'
   * handshakes. Waiting, the entry is recorded and counted in progress (#queued, a failed one too), so its name is
   * managed: its handshakes order nothing more. Rejects when the entry was ordered (issued, or failed: its backoff
   * holds) or forgotten meanwhile (the operator's issue or renew, the loop, another node): nothing to order then.
   */
  async #inTurn(name: string, start: () => Promise<Issued>): Promise<Issued> {
    const asked = this.#deps.state.state.certificates[name];
    const [issuedAt, failures] = [asked?.lastIssuedAt, asked?.failures];
    this.#queued.set(name, (this.#queued.get(name) ?? 0) + 1);
    try {
      while (this.#orders.size >= this.#deps.config.renewal.maxConcurrent && !this.#orders.running(name)) {
        await new Promise<void>((resolve) => this.#waiting.push(resolve));
      }
    } finally {
      const queued = (this.#queued.get(name) ?? 1) - 1;
      if (queued === 0) this.#queued.delete(name);
      else this.#queued.set(name, queued);
    }
    const managed = this.#deps.state.state.certificates[name];
    // Started in the same turn as the count was read, so the next waiter woken counts it.
    const order =
      managed === undefined || managed.lastIssuedAt !== issuedAt || managed.failures !== failures
        ? Promise.reject(
            new KeyedgeError('KEYEDGE_ERR_ACME', `'${name}' was ordered or forgotten while its on-demand order waited its turn; not ordered again`),
          )
        : start();
    // Several orders may have ended at once, each waking one waiter: one more place free is the next one's turn too.
    if (this.#orders.size < this.#deps.config.renewal.maxConcurrent) this.#placeFreed();
    return order;
  }

  /**
   * A place among `renewal.maxConcurrent` may be free (an order ended, or a woken on-demand order took none): an on-demand
   * order waiting its turn first (its handshakes have no certificate), else the pass goes on where it stopped. Each entry
   * is looked at once a pass, so an order that ends at once (refused before the CA is asked) starts no loop.
   */
  #placeFreed(): void {
    const wake = this.#waiting.shift();
    if (wake !== undefined) wake();
    else if (this.#left.length > 0) void this.#walk().catch((err: unknown) => this.#deps.log.error({ err }, 'ACME maintenance pass failed'));
  }

  /** An order (orders.ts); once it ends, its names may be the entry's (recorded-names.ts looks again). */
  #run(name: string, list?: NewList): Promise<Issued> {
    const order = this.#orders.run(name, list);
    order.finally(() => this.#recorded.changed()).catch(() => undefined);
    return order;
  }

  /** What GET /certs shows for a managed entry. */
  view(name: string): unknown {
    const managed = this.#deps.state.state.certificates[name];
    if (managed === undefined) return undefined;
    const record = this.#deps.records().get(name);
    const due = record === undefined ? undefined : this.#due(name, managed, record);
    return {
      domains: managed.domains,
      renewing: this.#orders.running(name),
      renewAt: due === undefined ? null : new Date(due).toISOString(),
      failures: managed.failures,
      retryNotBefore: managed.notBefore ?? null,
      lastError: managed.lastError ?? null,
      lastIssuedAt: managed.lastIssuedAt ?? null,
    };
  }

  /**
   * One maintenance pass: renew what is due, then forget stale on-demand failures and delete keys past their grace period.
   * The renewals due past `renewal.maxConcurrent` start as the orders before them end (#left, #walk), not at the next pass.
   */
  async tick(): Promise<void> {
    if (this.#ticking || this.#stopped) return;
    this.#ticking = true;
    try {
      const now = Date.now();
      const { certificates } = this.#deps.state.state;
      // A walk of the last pass still under way (waiting for places, or for slow renewal-info answers) goes on: started over
      // each pass, the entries past where it got in a pass's time were never looked at.
      if (this.#left.length === 0) this.#left = Object.keys(certificates);
      for (const name of this.#ariRefused.keys()) if (certificates[name] === undefined) this.#ariRefused.delete(name);
      await this.#walk();
      await forgetStaleFailures(this.#deps, { running: (name) => this.#inProgress(name) }, now);
      await deleteRetiredKeys(this.#deps, now);
    } finally {
      this.#ticking = false;
    }
  }

  /** Orders the due entries of #left, in order, while a place is free; the rest wait for the next order to end (#placeFreed). */
  async #walk(): Promise<void> {
    // One walk at a time: one under way sees the place freed once its renewal-info lookup is answered. The flag is cleared in
    // the same turn as the loop last looked at the places, so no order can end unseen in between.
    if (this.#walking) return;
    this.#walking = true;
    try {
      while (!this.#stopped && this.#left.length > 0 && this.#orders.size < this.#deps.config.renewal.maxConcurrent)
        await this.#consider(this.#left.shift() as string);
    } finally {
      this.#walking = false;
    }
  }

  /** Orders entry `name` when it is due (policy.ts), not running, its backoff over, and not the on-demand gate's. */
  async #consider(name: string): Promise<void> {
    const now = Date.now();
    const managed = this.#deps.state.state.certificates[name];
    if (managed === undefined) return;
    if (this.#orders.running(name) || (managed.notBefore !== undefined && Date.parse(managed.notBefore) > now)) return;
    const record = this.#deps.records().get(name);
    // Retrying it here was an order and a token key per backoff step, outside the on-demand hourly limits, for every name ever sent.
    // Only while no certificate serves it: one whose order was counted failed after its chain was stored (issuer.ts) serves,
    // its handshakes tell the gate nothing, and skipped here it was never renewed and expired.
    if (record === undefined && waitsForTheGate(managed)) return;
    if (record !== undefined) await this.#checkAri(name, managed, record);
    // Its lookup awaited: another order (the operator's, an on-demand one) may have taken the entry or the last place meanwhile.
    if (this.#orders.running(name)) return;
    if (this.#orders.size >= this.#deps.config.renewal.maxConcurrent) {
      this.#left.unshift(name);
      return;
    }
    // No certificate serves yet: due now, unless another node of the fleet just issued it and this node has not loaded it yet.
    const due = record === undefined ? (this.#justIssuedElsewhere(managed, now) ? Number.POSITIVE_INFINITY : now) : this.#due(name, managed, record);
    // Now as the lookup left it: a window the CA says is for at once is due at the time it was answered.
    if (due <= Date.now()) this.#run(name).catch(() => undefined);
  }

  #justIssuedElsewhere(managed: ManagedState, now: number): boolean {
    return this.#deps.locks !== undefined && managed.lastIssuedAt !== undefined && now - Date.parse(managed.lastIssuedAt) < JUST_ISSUED_MS;
  }

  #due(name: string, managed: ManagedState, record: CertificateRecord): number {
    const leaf = leafTimes(record.chainPem);
    const byLifetime = renewalTime(name, leaf, this.#deps.config.renewal);
    // A time chosen before the window was held to the lifetime (a state written then, or by an older node of the fleet).
    if (managed.ari !== undefined && managed.ari.serial === leaf.serial) return Math.min(Date.parse(managed.ari.at), byLifetime);
    return byLifetime;
  }

  async #checkAri(name: string, managed: ManagedState, record: CertificateRecord): Promise<void> {
    const leaf = leafTimes(record.chainPem);
    if (leaf.certId === undefined) return;
    const { ari } = managed;
    if (ari?.serial === leaf.serial && Date.now() < (ari.recheckAt === undefined ? Date.parse(ari.checkedAt) + ARI_RECHECK_MS : Date.parse(ari.recheckAt))) {
      return;
    }
    const refused = this.#ariRefused.get(name);
    if (Date.now() < this.#ariPausedUntil || (refused?.serial === leaf.serial && Date.now() < refused.retryAt)) return;
    try {
      const window = await this.#deps.renewalWindow(leaf.certId);
      this.#ariRefused.delete(name);
      if (window === undefined) return;
      const now = Date.now();
      // Never later than by the lifetime: a window past notAfter (a buggy or hostile CA) ordered nothing until it expired.
      const at = ariRenewalTime(window, leaf, renewalTime(name, leaf, this.#deps.config.renewal), now);
      const recheckMs = Math.min(Math.max(window.retryAfterMs ?? ARI_RECHECK_MS, ARI_RECHECK_MIN_MS), ARI_RECHECK_MAX_MS);
      managed.ari = {
        serial: leaf.serial,
        at: new Date(at).toISOString(),
        checkedAt: new Date(now).toISOString(),
        recheckAt: new Date(now + recheckMs).toISOString(),
      };
      void this.#deps.state.save();
    } catch (err) {
      // Without a window the lifetime rule still holds: ARI only ever moves the date. An answer about this certificate (a 4xx,
      // a window that is none) is its own, asked again ARI_RECHECK_MS later; any other failure is the endpoint's: it rests.
      const status = err instanceof AcmeError ? err.status : undefined;
      const own = status !== undefined && status < 500 && status !== 429;
      const now = Date.now();
      if (own) this.#ariRefused.set(name, { serial: leaf.serial, retryAt: now + ARI_RECHECK_MS });
      else {
        const retryAfterMs = err instanceof AcmeError ? err.retryAfterMs : undefined;
        this.#ariPausedUntil = now + Math.min(Math.max(retryAfterMs ?? ARI_PAUSE_MS, ARI_RECHECK_MIN_MS), ARI_RECHECK_MAX_MS);
      }
      this.#deps.log.warn(
        { certificate: name, err: (err as Error).message, retryInMs: own ? ARI_RECHECK_MS : this.#ariPausedUntil - now },
        own ? 'ACME renewal info refused for this certificate; renewing by lifetime' : 'ACME renewal info unavailable; renewing by lifetime',
      );
    }
  }
}
