/**
 * Running a managed entry's orders (maintain.ts decides when): at most one
 * per entry at a time, under the name's issuance lock, and what each outcome
 * writes in the entry's state.
 *
 * Guarantees:
 *  - An order asked for the names the entry records joins the one running;
 *    one for an operator's new list (domain-lists.ts) follows it, judged
 *    again under the lock on the list recorded then.
 *  - The entry's state follows the certificate the store holds: once an
 *    order's chain is stored, its names and key are the entry's, even when
 *    the order is reported failed because not every worker loaded it (the
 *    store step throws ChainStoredNotLoadedError, errors.ts). Recording the list before it left the entry renewing
 *    the list before, and its next renewal took the added names out of the
 *    store.
 *  - A failure of an order for the recorded names is the entry's: counted,
 *    backed off, shown in GET /certs. A failure of an order for a new list is
 *    its caller's (the answer, the log, the metrics) and leaves the entry's
 *    failures and backoff alone: the loop never retries a new list, so a
 *    backoff has nothing of its own to pace, and counted as the entry's it
 *    delayed the renewal of the certificate that serves.
 * In a fleet, when two nodes order one entry, the second, once the lock is
 * its own, finds it issued since it asked and orders nothing.
 */
import type { AcmeConfig } from '../../config/proxy-schema.js';
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { ACME_PROBLEMS, type AcmeMetrics } from '../metrics.js';
import type { CertificateRecord } from '../serving/spec.js';
import type { HeldLock } from '../store/lock.js';
import { covers, domainsToOrder, sameDomains } from './domain-lists.js';
import { AcmeError, ChainStoredNotLoadedError } from './errors.js';
import { type IssuanceLocks, localLocks } from './issuance-locks.js';
import type { AcmeIssuer, Issued } from './issuer.js';
import { backoffMs, leafTimes } from './policy.js';
import type { IssuerStateStore, ManagedState } from './state.js';

export interface OrderDeps {
  readonly config: AcmeConfig;
  readonly state: IssuerStateStore;
  readonly issuer: AcmeIssuer;
  readonly records: () => ReadonlyMap<string, CertificateRecord>;
  readonly metrics: AcmeMetrics;
  readonly log: Logger;
  /** The fleet's issuance locks; default: one node alone. */
  readonly locks?: IssuanceLocks;
}

/** An operator's list of names for a managed entry, and whether it may leave recorded names out (domain-lists.ts). */
export interface NewList {
  readonly domains: readonly string[];
  readonly replace: boolean;
}

/** An order's lock is waited for this much longer than the order may take. */
const LOCK_WAIT_SLACK_MS = 10_000;

export class OrderRunner {
  readonly #deps: OrderDeps;
  /** Each running order and the names it orders: an issue for another list waits for it, not answered by it. */
  readonly #inFlight = new Map<string, { readonly domains: readonly string[]; readonly attempt: Promise<Issued> }>();
  /** The new lists waiting behind each entry's running order (run). */
  readonly #following = new Map<string, Set<readonly string[]>>();
  /** Told each time an order ends (a place among `renewal.maxConcurrent` is free: maintain.ts). */
  readonly #onEnd: () => void;

  constructor(deps: OrderDeps, onEnd: () => void = () => {}) {
    this.#deps = deps;
    this.#onEnd = onEnd;
  }

  /** How many orders run now. */
  get size(): number {
    return this.#inFlight.size;
  }

  /** Whether an order for entry `name` runs now. */
  running(name: string): boolean {
    return this.#inFlight.has(name);
  }

  /** The names the orders running for entry `name`, or waiting behind its running one, are for; undefined when none. */
  domainsOf(name: string): readonly string[] | undefined {
    const running = this.#inFlight.get(name)?.domains;
    const waiting = this.#following.get(name);
    if (waiting === undefined) return running;
    return [...new Set([...(running ?? []), ...[...waiting].flat()])];
  }

  /** Whether a running or waiting order's names cover `name` (an expansion not yet recorded, domain-lists.ts). */
  ordering(name: string): boolean {
    for (const order of this.#inFlight.values()) if (covers(order.domains, name)) return true;
    for (const lists of this.#following.values()) for (const domains of lists) if (covers(domains, name)) return true;
    return false;
  }

  /** Orders `name` for its recorded names, or for an operator's new list; joins the running order when it is for the same names. */
  run(name: string, list?: NewList): Promise<Issued> {
    const running = this.#inFlight.get(name);
    if (running !== undefined) {
      if (list === undefined || sameDomains(running.domains, list.domains)) return running.attempt;
      // An order for other names runs (a renewal of the recorded ones): its certificate does not cover these, so this one follows it.
      // Until it starts, its names count as ordered (domainsOf, ordering): another issue or the on-demand gate would put them on a
      // second entry.
      const waiting = this.#following.get(name) ?? new Set<readonly string[]>();
      this.#following.set(name, waiting);
      const domains = list.domains;
      waiting.add(domains);
      return running.attempt
        .catch(() => undefined)
        .then(() => {
          waiting.delete(domains);
          if (waiting.size === 0 && this.#following.get(name) === waiting) this.#following.delete(name);
          return this.run(name, list);
        });
    }
    const attempt = this.#attempt(name, list).finally(() => {
      this.#inFlight.delete(name);
      this.#onEnd();
    });
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
    const newEntry = managed.onDemand === true && managed.lastIssuedAt === undefined && record === undefined;
    try {
      const issued = await issuer.issue({
        name,
        domains,
        // `replaces` is only meaningful to a CA that offers ARI; one that does not ignores what it does not know (RFC 8555 §7.4).
        ...(certId !== undefined && managed.ari !== undefined ? { replaces: certId } : {}),
        ...(!config.renewal.newKey && previousKey !== undefined ? { keyId: previousKey } : {}),
        ...(lock === undefined ? {} : { lock }),
        // Never over a store entry of that name written while it ran (the operator's, a renewal tool's): see IssueRequest.
        ...(newEntry ? { newEntry: true } : {}),
      });
      this.#recordServing(managed, domains, issued.keyId, previousKey);
      Object.assign(managed, { failures: 0, notBefore: undefined, lastError: undefined });
      // Before the lock goes: the next holder reads it and orders nothing.
      await state.save(lock);
      await this.#retireIfOrphaned(name, issued.keyId);
      metrics.renewals.inc({ result: 'ok', problem: 'none' });
      log.info({ certificate: name, keyId: issued.keyId }, 'ACME certificate issued and serving');
      return issued;
    } catch (err) {
      if (newEntry && err instanceof KeyedgeError && err.code === 'KEYEDGE_ERR_CERT_EXISTS') {
        // The store has an entry of that name now, written while the order ran: the operator's. Kept, this failed on-demand
        // entry would have renewed it (its certificate serving the name) at two thirds of its lifetime, over it.
        log.warn(
          { certificate: name, reason: (err as Error).message },
          'ACME on-demand certificate not stored: an entry of that name was written to the store while it was ordered; the name is not managed',
        );
        await Promise.resolve()
          .then(() => state.forget([name], lock))
          .catch((e: unknown) => log.warn({ certificate: name, reason: (e as Error).message }, 'ACME state not saved'));
        metrics.renewals.inc({ result: 'failed', problem: 'other' });
        throw err;
      }
      // Stored, then not loaded by every worker (the store step says so): the store's entry is this order's certificate, its
      // names and key are the entry's; the workers that did not load it are replaced, or load it at the next reload.
      const storedHere = err instanceof ChainStoredNotLoadedError;
      if (storedHere) this.#recordServing(managed, domains, err.keyId, previousKey);
      const acme = err instanceof AcmeError ? err : undefined;
      const code = err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_ACME';
      const problem = (ACME_PROBLEMS as readonly string[]).includes(acme?.problem ?? '') ? (acme?.problem as string) : 'other';
      const reason = (err as Error).message;
      if (wanted === undefined) {
        managed.failures++;
        const wait = backoffMs(managed.failures, config.renewal, acme?.retryAfterMs);
        managed.notBefore = new Date(Date.now() + wait).toISOString();
        managed.lastError = { code, problem: acme?.problem, message: reason, at: new Date().toISOString() };
        log.error(
          { certificate: name, code, problem: acme?.problem, failures: managed.failures, retryInMs: Math.round(wait), reason, stored: storedHere },
          'ACME issuance failed; the current certificate keeps serving',
        );
      } else {
        log.error(
          { certificate: name, domains, recorded: managed.domains, code, problem: acme?.problem, reason, stored: storedHere },
          storedHere
            ? "ACME order for a new list of names stored but not applied everywhere; the entry's names are the new list"
            : 'ACME order for a new list of names failed; the entry keeps its names and its renewal schedule',
        );
      }
      await state.save(lock);
      if (storedHere) await this.#retireIfOrphaned(name, err.keyId);
      metrics.renewals.inc({ result: 'failed', problem });
      throw err;
    }
  }

  /** Records that the certificate for `domains` on `keyId` serves `managed`'s entry; `previousKey`, when another, is retired (its grace starts now). */
  #recordServing(managed: ManagedState, domains: readonly string[], keyId: string, previousKey: string | undefined): void {
    const { state } = this.#deps;
    // The names its certificate covers now: renewals keep them, and in a fleet every node reads them (shared-state.ts).
    Object.assign(managed, { domains: [...domains], keyId, ari: undefined, lastIssuedAt: new Date().toISOString() });
    // Retired by the issuer when its order was reported failed after the chain was stored: it serves, it is not to be deleted.
    state.state.retiredKeys = state.state.retiredKeys.filter((r) => r.keyId !== keyId);
    if (previousKey !== undefined && previousKey !== keyId) this.#retire(previousKey);
  }

  /** `keyId` waits out the grace period (from now), then housekeeping deletes it unless a stored certificate uses it. */
  #retire(keyId: string): void {
    const { state, config } = this.#deps;
    const deleteAfter = new Date(Date.now() + config.renewal.keyGraceSeconds * 1000).toISOString();
    const retired = state.state.retiredKeys.find((r) => r.keyId === keyId);
    if (retired !== undefined) retired.deleteAfter = deleteAfter;
    else state.state.retiredKeys.push({ keyId, deleteAfter });
  }

  /**
   * After the save of an order whose chain was stored with `keyId`: when the entry the store kept does not use it (this
   * node's lock ended before its save, and the state its successor wrote, or had, won), nothing else records the key and
   * it stayed in the token for ever. It is retired, not deleted: the chain stored with it may still serve, and
   * housekeeping deletes a key only once no stored certificate uses it. The retired keys are written without the lock
   * (shared-state.ts).
   */
  async #retireIfOrphaned(name: string, keyId: string): Promise<void> {
    const { state, log } = this.#deps;
    if (keyId === '' || state.state.certificates[name]?.keyId === keyId) return;
    this.#retire(keyId);
    log.warn(
      { certificate: name, keyId },
      "ACME state of this order not kept in the fleet's store (this node's lock ended); its key is retired, deleted once nothing uses it",
    );
    await state.save();
  }
}
