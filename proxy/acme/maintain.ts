/**
 * Keeping managed certificates issued and renewed (policy.ts says when), and
 * deleting the keys they no longer use once the grace period is over.
 *
 * Runs in the cluster primary on a timer (`renewal.checkSeconds`) and on the
 * operator's word (admin API: POST /acme/issue, POST /acme/renew/NAME). At
 * most `renewal.maxConcurrent` orders run at once; an entry already in flight
 * is never ordered twice. A failure leaves the store entry as it is (the
 * current certificate keeps serving until it expires), is logged, counted,
 * remembered with its backoff in the state file, and shown in GET /certs.
 * An on-demand entry whose first order failed, no certificate serving it, is the exception: the loop
 * leaves it, and only its next handshake, through the on-demand gate and
 * its hourly limits, orders it again (on-demand.ts), unless the operator
 * issues or renews it (admin API), which makes it an ordinary entry.
 * Such an entry is kept only to show why (GET /certs): once its last failure
 * is FAILED_ON_DEMAND_KEPT_MS old and its backoff over, a pass forgets it,
 * unless a certificate serves it or an order for it runs or starts meanwhile
 * (in a fleet: under its issuance lock, not waited for). Without that, every name a client
 * could make the gate order stayed in the state (memory, the state file or
 * etcd) for ever; now at most a day of on-demand orders (24 × the hourly
 * limit) is kept. A handshake for it later goes through the gate as a new name.
 *
 * In a fleet every node runs this loop on the shared state (shared-state.ts);
 * an order runs under the name's issuance lock (issuance-locks.ts), so when
 * two nodes decide to order the same name, one orders and the other, once
 * the lock is its own, finds the name issued since it asked and orders
 * nothing.
 */
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import type { AcmeConfig } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { ACME_PROBLEMS, type AcmeMetrics } from '../metrics.js';
import type { CertificateRecord } from '../serving/spec.js';
import { domainsToOrder, sameDomains } from './domain-lists.js';
import { entryOf } from './entry-names.js';
import { AcmeError } from './errors.js';
import { type IssuanceLocks, localLocks } from './issuance-locks.js';
import type { AcmeIssuer, Issued } from './issuer.js';
import type { HeldLock } from '../store/lock.js';
import { ariTime, backoffMs, leafTimes, renewalTime } from './policy.js';
import type { IssuerStateStore, ManagedState } from './state.js';
import type { TokenKeys } from './token-keys.js';

export interface ManagerDeps {
  readonly config: AcmeConfig;
  readonly state: IssuerStateStore;
  readonly issuer: AcmeIssuer;
  readonly keys: TokenKeys;
  readonly records: () => ReadonlyMap<string, CertificateRecord>;
  readonly metrics: AcmeMetrics;
  readonly log: Logger;
  /** RFC 9773 renewal window for a certID; undefined when the CA offers no ARI. */
  readonly renewalWindow: (certId: string) => Promise<{ start: Date; end: Date; retryAfterMs: number | undefined } | undefined>;
  /** The fleet's issuance locks; default: one node alone. */
  readonly locks?: IssuanceLocks;
}

/** An order's lock is waited for this much longer than the order may take. */
const LOCK_WAIT_SLACK_MS = 10_000;
/** In a fleet, a certificate another node issued this recently is loading here, not missing. */
const JUST_ISSUED_MS = 120_000;

/** ARI windows are looked at again after the CA's Retry-After, or this long (RFC 9773 §4.3 suggests hours). */
const ARI_RECHECK_MS = 6 * 3_600_000;

/**
 * A failed on-demand entry nothing serves is forgotten once its last failure is this old (and its backoff over): a day,
 * long enough for an operator to see in GET /certs why a name was not issued, and it bounds the entries kept to a
 * day's on-demand orders (24 × `onDemand.maxOrdersPerHour`). Forgetting it changes no decision: the gate orders
 * its name again only through its own checks and hourly limits, entry or not.
 */
export const FAILED_ON_DEMAND_KEPT_MS = 24 * 3_600_000;

/** An operator's list of names for a managed entry, and whether it may leave recorded names out (domain-lists.ts). */
interface NewList {
  readonly domains: readonly string[];
  readonly replace: boolean;
}

/** What an issue did: the certificate, the entry, the names it covers, and the entry's names before when it changed them (domain-lists.ts). */
export interface IssueOutcome extends Issued {
  readonly entry: string;
  readonly domains: readonly string[];
  readonly previousDomains?: readonly string[];
}

/** An on-demand entry whose first order failed: only its next handshake, through the on-demand gate and its limits, orders it again. */
function waitsForTheGate(managed: ManagedState): boolean {
  return managed.onDemand === true && managed.lastIssuedAt === undefined && managed.failures > 0;
}

export class CertificateManager {
  readonly #deps: ManagerDeps;
  /** Each running order and the names it orders: an issue for another list waits for it, not answered by it. */
  readonly #inFlight = new Map<string, { readonly domains: readonly string[]; readonly attempt: Promise<Issued> }>();
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;

  constructor(deps: ManagerDeps) {
    this.#deps = deps;
  }

  start(): void {
    const tick = (): void => void this.tick().catch((err: unknown) => this.#deps.log.error({ err }, 'ACME maintenance pass failed'));
    this.#timer = setInterval(tick, this.#deps.config.renewal.checkSeconds * 1000);
    this.#timer.unref();
    setImmediate(tick);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Whether `name` has a managed entry of its own (on-demand asks before ordering); a failed on-demand one is the gate's again. */
  isManaged(name: string): boolean {
    const entry = this.entryOf([name]);
    const managed = this.#deps.state.state.certificates[entry];
    return managed !== undefined && (this.#inFlight.has(entry) || !waitsForTheGate(managed));
  }

  get failing(): number {
    return Object.values(this.#deps.state.state.certificates).filter((c) => c.failures > 0).length;
  }

  /** The store entry `domains` are (or would be) managed under: entry-names.ts. */
  entryOf(domains: readonly string[]): string {
    return entryOf(domains, this.#deps.state.state.certificates);
  }

  /**
   * The entry an operator's issue of `domains` without an entry name is for: the first domain's, or else the entry that
   * records these very names in another order (domain-lists.ts: the same names are a renewal). Without it, `b, a` made a
   * second entry and a second certificate beside `a`'s for `a, b`, both renewed from then on.
   */
  #entryOfList(domains: readonly string[]): string {
    const name = this.entryOf(domains);
    const { certificates } = this.#deps.state.state;
    if (certificates[name] !== undefined) return name;
    return (
      Object.keys(certificates).find((other) => certificates[other]?.onDemand !== true && sameDomains(certificates[other]?.domains ?? [], domains)) ?? name
    );
  }

  /**
   * Issues a new managed certificate now, or, when the entry is managed already, renews it, or orders it for the operator's
   * new list of names (domain-lists.ts: added names, or `replaceDomains`; a dropped name without it is refused); resolves once
   * a certificate covering `domains` serves. An on-demand order never changes an entry's names.
   */
  issue(domains: readonly string[], entry?: string, onDemand = false, replaceDomains = false): Promise<IssueOutcome> {
    const name = entry ?? (onDemand ? this.entryOf(domains) : this.#entryOfList(domains));
    const managed = this.#deps.state.state.certificates[name];
    let wanted: string[] | undefined;
    if (managed !== undefined && !onDemand) {
      try {
        wanted = domainsToOrder(name, managed.domains, domains, replaceDomains);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    const previous = managed === undefined ? undefined : [...managed.domains];
    if (managed === undefined) {
      // A name listed twice is one name (as domainsToOrder makes it for a managed entry): recorded, ordered and shown once.
      const unique = [...new Set(domains)];
      this.#deps.state.state.certificates[name] = { domains: unique, keyId: '', failures: 0, ...(onDemand ? { onDemand: true as const } : {}) };
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
    return this.#run(name, wanted === undefined ? undefined : { domains: wanted, replace: replaceDomains }).then((issued) => ({
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

  /** What GET /certs shows for a managed entry. */
  view(name: string): unknown {
    const managed = this.#deps.state.state.certificates[name];
    if (managed === undefined) return undefined;
    const record = this.#deps.records().get(name);
    const due = record === undefined ? undefined : this.#due(name, managed, record);
    return {
      domains: managed.domains,
      renewing: this.#inFlight.has(name),
      renewAt: due === undefined ? null : new Date(due).toISOString(),
      failures: managed.failures,
      retryNotBefore: managed.notBefore ?? null,
      lastError: managed.lastError ?? null,
      lastIssuedAt: managed.lastIssuedAt ?? null,
    };
  }

  /** One maintenance pass: renew what is due, delete keys past their grace period. */
  async tick(): Promise<void> {
    if (this.#ticking) return;
    this.#ticking = true;
    try {
      const now = Date.now();
      const { certificates } = this.#deps.state.state;
      for (const [name, managed] of Object.entries(certificates)) {
        if (this.#inFlight.size >= this.#deps.config.renewal.maxConcurrent) break;
        if (this.#inFlight.has(name) || (managed.notBefore !== undefined && Date.parse(managed.notBefore) > now)) continue;
        const record = this.#deps.records().get(name);
        // Retrying it here was an order and a token key per backoff step, outside the on-demand hourly limits, for every name ever sent.
        // Only while no certificate serves it: one whose order was counted failed after its chain was stored (issuer.ts) serves,
        // its handshakes tell the gate nothing, and skipped here it was never renewed and expired.
        if (record === undefined && waitsForTheGate(managed)) continue;
        if (record !== undefined) await this.#checkAri(name, managed, record);
        // No certificate serves yet: due now, unless another node of the fleet just issued it and this node has not loaded it yet.
        const due = record === undefined ? (this.#justIssuedElsewhere(managed, now) ? Number.POSITIVE_INFINITY : now) : this.#due(name, managed, record);
        if (due <= now) this.#run(name).catch(() => undefined);
      }
      await this.#forgetStaleFailures(now);
      await this.#deleteRetiredKeys(now);
    } finally {
      this.#ticking = false;
    }
  }

  #justIssuedElsewhere(managed: ManagedState, now: number): boolean {
    return this.#deps.locks !== undefined && managed.lastIssuedAt !== undefined && now - Date.parse(managed.lastIssuedAt) < JUST_ISSUED_MS;
  }

  #due(name: string, managed: ManagedState, record: CertificateRecord): number {
    const leaf = leafTimes(record.chainPem);
    if (managed.ari !== undefined && managed.ari.serial === leaf.serial) return Date.parse(managed.ari.at);
    return renewalTime(name, leaf, this.#deps.config.renewal);
  }

  async #checkAri(name: string, managed: ManagedState, record: CertificateRecord): Promise<void> {
    const leaf = leafTimes(record.chainPem);
    if (leaf.certId === undefined) return;
    if (managed.ari?.serial === leaf.serial && Date.now() - Date.parse(managed.ari.checkedAt) < ARI_RECHECK_MS) return;
    try {
      const window = await this.#deps.renewalWindow(leaf.certId);
      if (window === undefined) return;
      managed.ari = { serial: leaf.serial, at: new Date(ariTime(window)).toISOString(), checkedAt: new Date().toISOString() };
      void this.#deps.state.save();
    } catch (err) {
      // Without a window the lifetime rule still holds: ARI only ever moves the date.
      this.#deps.log.warn({ certificate: name, err: (err as Error).message }, 'ACME renewal info unavailable; renewing by lifetime');
    }
  }

  /** Orders `name` for its recorded names, or for an operator's new list; joins the running order when it is for the same names. */
  #run(name: string, list?: NewList): Promise<Issued> {
    const running = this.#inFlight.get(name);
    if (running !== undefined) {
      if (list === undefined || sameDomains(running.domains, list.domains)) return running.attempt;
      // An order for other names runs (a renewal of the recorded ones): its certificate does not cover these, so this one follows it.
      return running.attempt.catch(() => undefined).then(() => this.#run(name, list));
    }
    const attempt = this.#attempt(name, list).finally(() => this.#inFlight.delete(name));
    this.#inFlight.set(name, { domains: list?.domains ?? this.#deps.state.state.certificates[name]?.domains ?? [], attempt });
    return attempt;
  }

  /** Orders `name` under its issuance lock, unless another node issued it for these names while this one waited for the lock. */
  async #attempt(name: string, list: NewList | undefined): Promise<Issued> {
    const { state, config, log } = this.#deps;
    const asked = state.state.certificates[name]?.lastIssuedAt;
    const held = await (this.#deps.locks ?? localLocks).hold(`acme/issue/${name}`, config.orderTimeoutSeconds * 1000 + LOCK_WAIT_SLACK_MS, async (lock) => {
      const managed = state.state.certificates[name];
      // Judged again on the list recorded now: another issue (here, or another node's) may have changed it since it was asked
      // for, and its names must not be dropped without `replaceDomains` either.
      const domains = list === undefined || managed === undefined ? undefined : domainsToOrder(name, managed.domains, list.domains, list.replace);
      if (lock !== undefined && managed !== undefined && managed.lastIssuedAt !== asked && managed.failures === 0 && domains === undefined) {
        log.info({ certificate: name, keyId: managed.keyId }, 'ACME certificate issued by another node of the fleet while this one waited; not ordered again');
        return { keyId: managed.keyId, chainPem: this.#deps.records().get(name)?.chainPem ?? '', newKey: false };
      }
      return this.#order(name, lock, domains);
    });
    if (held === undefined) {
      throw new KeyedgeError('KEYEDGE_ERR_ACME', `another node of the fleet has been ordering '${name}' for longer than an order may take; not ordered here`);
    }
    return held.value;
  }

  async #order(name: string, lock: HeldLock | undefined, wanted: readonly string[] | undefined): Promise<Issued> {
    const { state, issuer, config, metrics, log } = this.#deps;
    const managed = state.state.certificates[name];
    if (managed === undefined) throw new KeyedgeError('KEYEDGE_ERR_CERT_NOT_FOUND', `certificate '${name}' is not managed by ACME`);
    const domains = wanted === undefined ? managed.domains : [...wanted];
    const record = this.#deps.records().get(name);
    const previousKey = record?.keyId;
    const certId = record === undefined ? undefined : leafTimes(record.chainPem).certId;
    log.info({ certificate: name, domains, renewal: record !== undefined }, 'ACME issuance started');
    try {
      const issued = await issuer.issue({
        name,
        domains,
        // `replaces` is only meaningful to a CA that offers ARI; one that does not ignores what it does not know (RFC 8555 §7.4).
        ...(certId !== undefined && managed.ari !== undefined ? { replaces: certId } : {}),
        ...(!config.renewal.newKey && previousKey !== undefined ? { keyId: previousKey } : {}),
        ...(lock === undefined ? {} : { lock }),
      });
      // The names its certificate covers now: renewals keep them, and in a fleet every node reads them (shared-state.ts).
      Object.assign(managed, {
        domains,
        keyId: issued.keyId,
        failures: 0,
        notBefore: undefined,
        lastError: undefined,
        ari: undefined,
        lastIssuedAt: new Date().toISOString(),
      });
      if (previousKey !== undefined && previousKey !== issued.keyId) {
        const deleteAfter = new Date(Date.now() + config.renewal.keyGraceSeconds * 1000).toISOString();
        // Retired already when its order's result was stored but not applied everywhere (issuer.ts): its grace starts now.
        const retired = state.state.retiredKeys.find((r) => r.keyId === previousKey);
        if (retired !== undefined) retired.deleteAfter = deleteAfter;
        else state.state.retiredKeys.push({ keyId: previousKey, deleteAfter });
      }
      // Before the lock goes: the next holder reads it and orders nothing.
      await state.save();
      metrics.renewals.inc({ result: 'ok', problem: 'none' });
      log.info({ certificate: name, keyId: issued.keyId }, 'ACME certificate issued and serving');
      return issued;
    } catch (err) {
      const acme = err instanceof AcmeError ? err : undefined;
      managed.failures++;
      const wait = backoffMs(managed.failures, config.renewal, acme?.retryAfterMs);
      managed.notBefore = new Date(Date.now() + wait).toISOString();
      const code = err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_ACME';
      managed.lastError = { code, problem: acme?.problem, message: (err as Error).message, at: new Date().toISOString() };
      await state.save();
      const problem = (ACME_PROBLEMS as readonly string[]).includes(acme?.problem ?? '') ? (acme?.problem as string) : 'other';
      metrics.renewals.inc({ result: 'failed', problem });
      log.error(
        { certificate: name, code, problem: acme?.problem, failures: managed.failures, retryInMs: Math.round(wait), reason: (err as Error).message },
        'ACME issuance failed; the current certificate keeps serving',
      );
      throw err;
    }
  }

  /** Whether `name` is a failed on-demand entry to forget: nothing serves it, no order runs, its last failure old, its backoff over. */
  #stale(name: string, managed: ManagedState, now: number): boolean {
    if (!waitsForTheGate(managed) || managed.keyId !== '' || this.#inFlight.has(name) || this.#deps.records().has(name)) return false;
    const failedAt = Date.parse(managed.lastError?.at ?? managed.notBefore ?? '');
    const notBefore = managed.notBefore === undefined ? 0 : Date.parse(managed.notBefore);
    return now - failedAt > FAILED_ON_DEMAND_KEPT_MS && !(notBefore > now);
  }

  /** Forgets the failed on-demand entries past FAILED_ON_DEMAND_KEPT_MS (#stale); in a fleet each under its issuance lock, skipped while another node holds it. */
  async #forgetStaleFailures(now: number): Promise<void> {
    const { state, log } = this.#deps;
    const stale = Object.entries(state.state.certificates)
      .filter(([name, managed]) => this.#stale(name, managed, now))
      .map(([name]) => name);
    if (stale.length === 0) return;
    const forgotten: string[] = [];
    try {
      if (this.#deps.locks === undefined) forgotten.push(...(await state.forget(stale)));
      else {
        for (const name of stale) {
          // The lock's holder sees what the previous one wrote: the entry is judged again under it (a handshake may have ordered it).
          await this.#deps.locks
            .hold(`acme/issue/${name}`, 0, async () => {
              const managed = state.state.certificates[name];
              if (managed === undefined || !this.#stale(name, managed, Date.now())) return;
              const dropped = await state.forget([name]);
              // A handshake ordered it while its key was deleted: issue() found the entry, and its order waits for this lock.
              // The entry stays for it (the order's save writes it again); forgotten, the order failed as not managed.
              if (this.#inFlight.has(name)) state.state.certificates[name] = managed;
              else forgotten.push(...dropped);
            })
            .catch(() => undefined);
        }
      }
    } catch (err) {
      // The state file not written (disk full): the entries stay, tried again next pass.
      log.warn({ reason: (err as Error).message }, 'failed on-demand certificates not forgotten; trying again next pass');
    }
    if (forgotten.length > 0) {
      log.info({ count: forgotten.length, names: forgotten.slice(0, 10) }, 'failed on-demand certificates forgotten a day after their last failure');
    }
  }

  /** One node of the fleet at a time deletes retired keys; the others skip the pass. */
  async #deleteRetiredKeys(now: number): Promise<void> {
    if (this.#deps.state.state.retiredKeys.length === 0) return;
    // etcd away: the keys wait for the next pass, as after a failed delete.
    await (this.#deps.locks ?? localLocks).hold('acme/retired-keys', 0, () => this.#deleteRetiredKeysHeld(now)).catch(() => undefined);
  }

  async #deleteRetiredKeysHeld(now: number): Promise<void> {
    const { state, keys, metrics, log } = this.#deps;
    const inUse = new Set([...this.#deps.records().values()].map((r) => r.keyId));
    const keep: typeof state.state.retiredKeys = [];
    for (const retired of state.state.retiredKeys) {
      if (Date.parse(retired.deleteAfter) > now || inUse.has(retired.keyId)) {
        keep.push(retired);
        continue;
      }
      try {
        await keys.remove(retired.keyId);
        metrics.keysDeleted.inc();
        log.info({ keyId: retired.keyId }, 'previous certificate key deleted from the token after its grace period');
      } catch (err) {
        log.warn({ keyId: retired.keyId, err: (err as Error).message }, 'could not delete a retired certificate key; trying again next pass');
        keep.push(retired);
      }
    }
    if (keep.length !== state.state.retiredKeys.length) {
      state.state.retiredKeys = keep;
      await state.save();
    }
  }
}
