/**
 * ACME challenges across the fleet: one node orders, every node answers.
 *
 * The ordering node writes each challenge to etcd; every node's primary
 * takes it from its watch (store/etcd-store.ts) onto its own board
 * (challenges.ts), whose workers answer it on port 80 (HTTP-01, RFC 8555
 * §8.3) or to an "acme-tls/1" ClientHello (TLS-ALPN-01, RFC 8737), and says
 * so in etcd. The ordering node tells the CA to validate once every node
 * answering has said it serves the challenge (or after the wait), so
 * whichever node the CA's connection lands on (DNS, anycast) answers it.
 *
 *   <prefix>acme/challenges/<token>  a ChallengeEntry (JSON): a key
 *                                    authorization, or a TLS-ALPN-01
 *                                    certificate and the id of its key in the
 *                                    token; public by design (RFC 8555 §8.1),
 *                                    never key material; under the ordering
 *                                    node's lease, so the challenges of a node
 *                                    that dies mid-order go with it
 *   <prefix>acme/answering/<node>    the store revision up to which this
 *                                    node's workers serve the challenges,
 *                                    under a lease: a node that dies drops
 *                                    out of the wait within LEASE_TTL_SECONDS
 *
 * Node ids are random per start: a restarted node is a new one, and its old
 * key goes with its lease.
 *
 * The report is kept in etcd while the node runs. When its lease is lost
 * (etcd3's 'lost': etcd stalled or was away past the TTL), its key went
 * with it, and the other nodes no longer waited for this one: the CA could
 * be told to look before this node answered. It was written again only at
 * the next change of the board; now at once, under a new lease, and a report
 * that fails (etcd still away) is tried again with a growing wait, until it
 * gets through or the node stops. At the stop the lease is revoked, and the
 * store waits for that before it closes its client (etcd-store.ts): this
 * node leaves every other node's wait at once, not a TTL later.
 *
 * Costs: two writes per challenge (the entry, then one report per node), one
 * delete when it is done; a lease grant and a write per lost lease.
 */
import { randomBytes } from 'node:crypto';
import type { Lease } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';
import type { EtcdStore } from '../store/etcd-store.js';
import { ACME } from '../store/layout.js';
import { StoreUnavailableError } from '../store/storage.js';
import type { ChallengeBoard, ChallengeEntry, ChallengePublisher } from './challenges.js';

const CHALLENGES = `${ACME}challenges/`;
const ANSWERING = `${ACME}answering/`;
const LEASE_TTL_SECONDS = 10;
/** The first wait before a failed report is tried again, doubled each time up to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 250;
/**
 * ...at most this long apart: well inside the lease's TTL, so a report lost to an etcd blip is back soon after etcd
 * answers again (store/member-breaker.ts lets a call through as soon as no member is better placed).
 */
const RETRY_MAX_MS = 2_000;

export class FleetChallenges implements ChallengePublisher {
  readonly #store: EtcdStore;
  readonly #board: ChallengeBoard;
  readonly #log: Logger;
  readonly #waitMs: number;
  readonly #node = randomBytes(8).toString('hex');
  readonly #waiters = new Set<() => void>();
  #lease: Lease | undefined;
  #stopped = false;
  /** The challenges last put on the board, as JSON. */
  #onBoard = '[]';
  /** Board updates and their reports, one after another. */
  #reporting: Promise<void> = Promise.resolve();
  /** The store revision up to which the workers serve the challenges (the last board they applied). */
  #served = 0;
  /** A report to try again (the last one failed, or its lease was lost). */
  #retry: NodeJS.Timeout | undefined;
  #retryMs = RETRY_FIRST_MS;
  /** Since the last report that got through, reports fail: said once, and once when one gets through again. */
  #failing = false;

  /** `waitMs`: how long a new challenge waits for every node to serve it before the CA is told to look. */
  constructor(store: EtcdStore, board: ChallengeBoard, log: Logger, waitMs: number) {
    this.#store = store;
    this.#board = board;
    this.#log = log;
    this.#waitMs = waitMs;
  }

  /** Puts the fleet's current challenges on the board and joins the nodes that answer. */
  start(): void {
    this.#onBoard = '';
    this.changed();
  }

  async add(entry: ChallengeEntry): Promise<void> {
    const key = CHALLENGES + entry.token;
    const value = JSON.stringify(entry);
    this.#store.assertFits(key, value);
    this.#store.assertWritable();
    // Under this node's lease: written without one, a challenge stayed in etcd (and on every node's board) for ever
    // once its node died before withdrawing it. A node whose lease lapses (cut off from etcd for LEASE_TTL_SECONDS)
    // loses its challenges with it, as it loses its issuance locks: its orders fail and are tried again.
    const lease = this.#currentLease();
    const result = await this.#store.call(`write ${key}`, () =>
      lease
        .put(this.#store.prefix + key)
        .value(value)
        .exec(),
    );
    const revision = Number(result.header.revision);
    this.#store.applyLocal(key, value, revision);
    await this.#everyNodeServes(revision);
  }

  async remove(token: string): Promise<void> {
    if (this.#store.item(CHALLENGES + token) === undefined) return;
    // Left in etcd when it is away: a stale HTTP-01 token answers nothing the CA still asks for (the token was used), and a
    // stale TLS-ALPN-01 certificate yields to a newer one for its name (#entries).
    await this.#store.delete(CHALLENGES + token).catch((err: Error) => this.#log.warn({ reason: err.message }, 'ACME challenge not withdrawn from etcd'));
  }

  /** The store's ACME keys moved (the watch, or this node's own write). */
  changed(): void {
    // The store's watch runs on until the store closes, after this stop.
    if (this.#stopped) return;
    const revision = this.#store.health.revision;
    const entries = this.#entries();
    const text = JSON.stringify(entries);
    if (text !== this.#onBoard) {
      this.#onBoard = text;
      this.#reporting = this.#reporting.then(async () => {
        await this.#board.replace(entries);
        this.#served = Math.max(this.#served, revision);
        await this.#report();
      });
    } else if (revision > this.#served && this.#newestChallenge() > this.#served) {
      // The board holds these challenges already: this node's own, taken on at its write, when the mirror's revision
      // (the watch's alone: etcd-store.ts applyLocal) was still below it. The watch has caught up with it now: said
      // at once, or the order waited out the whole wait (#everyNodeServes) for this node's word on its own challenge.
      // Only a challenge newer than the word moves it: the word's own write, seen by the watch, says nothing again.
      this.#reporting = this.#reporting.then(async () => {
        this.#served = Math.max(this.#served, revision);
        await this.#report();
      });
    }
    for (const wake of this.#waiters) wake();
  }

  /** The store revision of the newest challenge written (0: none). */
  #newestChallenge(): number {
    let newest = 0;
    for (const token of this.#store.keys(CHALLENGES)) newest = Math.max(newest, this.#store.item(CHALLENGES + token)?.modRevision ?? 0);
    return newest;
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#retry);
    const lease = this.#lease;
    this.#lease = undefined;
    // Tried again until etcd has it (lease-revocation.ts): a stop right after a failed call was refused by etcd3 itself,
    // and this node's challenges, and its place in every other node's wait, stayed for the lease's TTL. The store's close
    // waits for it: closed right after, the client never sent it.
    if (lease !== undefined) void this.#store.revocations.revoke(() => lease.revoke(), LEASE_TTL_SECONDS, 'the ACME challenges');
  }

  /**
   * Oldest first (by the store's revision), so that of two TLS-ALPN-01 challenges for one name the newest is the one a
   * worker presents (ChallengeAnswers keeps the last per name): one a node left behind (it died mid-order, or etcd was
   * away when it withdrew it) would otherwise hide a later order's for the same name, and fail its validation.
   */
  #entries(): ChallengeEntry[] {
    const entries: { entry: ChallengeEntry; at: number }[] = [];
    for (const token of this.#store.keys(CHALLENGES).sort()) {
      const item = this.#store.item(CHALLENGES + token);
      const entry = parseEntry(item?.value, token);
      if (entry === undefined) this.#log.warn({ token }, "an ACME challenge in the fleet's store is malformed; not answered");
      else entries.push({ entry, at: item?.modRevision ?? 0 });
    }
    return entries.sort((a, b) => a.at - b.at).map(({ entry }) => entry);
  }

  /** Tells the fleet this node's workers serve every challenge up to the board they applied; tried again until it gets through. */
  async #report(): Promise<void> {
    clearTimeout(this.#retry);
    this.#retry = undefined;
    // One under way at the stop (its board update waits for the workers) took a new lease, never revoked and kept alive
    // until the store closed: the node, gone, stayed in every other node's wait (#everyNodeServes).
    if (this.#stopped) return;
    try {
      await this.#currentLease()
        .put(this.#store.prefix + ANSWERING + this.#node)
        .value(String(this.#served))
        .exec();
      if (this.#failing) this.#log.info({ revision: this.#served }, 'this node tells the fleet again which ACME challenges it answers');
      this.#failing = false;
      this.#retryMs = RETRY_FIRST_MS;
    } catch (err) {
      // The lease stays this node's: etcd3 keeps it alive, and says when it is gone ('lost', #currentLease). Dropped here
      // (once a put's answer was late), it stayed alive unused, never revoked, with what was written under it, for as
      // long as the node lived, and a new lease (another keepalive) came with every failed report.
      if (this.#stopped) return;
      if (!this.#failing) this.#log.warn({ reason: (err as Error).message }, 'cannot tell the fleet which ACME challenges this node answers; trying again');
      this.#failing = true;
      this.#retryLater();
    }
  }

  /** The report again after the current wait (doubled for the next); one pending at a time, none once stopped. */
  #retryLater(): void {
    if (this.#stopped || this.#retry !== undefined) return;
    const wait = this.#retryMs;
    this.#retryMs = Math.min(wait * 2, RETRY_MAX_MS);
    this.#retry = setTimeout(() => {
      this.#reporting = this.#reporting.then(() => this.#report());
    }, wait);
    this.#retry.unref();
  }

  /** This node's lease (kept alive while it runs), taken anew once lost; none once stopped. */
  #currentLease(): Lease {
    if (this.#stopped) throw new StoreUnavailableError("the fleet's ACME challenges are stopped (the node stops): nothing is written");
    if (this.#lease === undefined) {
      const lease = this.#store.client.lease(LEASE_TTL_SECONDS);
      lease.on('lost', (err: Error) => {
        if (this.#lease !== lease) return;
        this.#lease = undefined;
        if (this.#stopped) return;
        // Its key went with it: the other nodes no longer wait for this one. Said again at once, under a new lease (a
        // lease whose grant failed, etcd still away, comes here too: the retry's wait grows).
        if (!this.#failing)
          this.#log.warn({ reason: err.message }, 'the lease of the ACME challenge report was lost (etcd away or stalled past its TTL); reporting again');
        this.#failing = true;
        this.#retryLater();
      });
      this.#lease = lease;
    }
    return this.#lease;
  }

  /** Resolves once every answering node (this one included) serves the challenges up to `revision`, or after the wait. */
  async #everyNodeServes(revision: number): Promise<void> {
    const behind = (): string[] =>
      [...new Set([...this.#store.keys(ANSWERING), this.#node])].filter((node) => Number(this.#store.item(ANSWERING + node)?.value ?? -1) < revision);
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve();
      };
      const check = (): void => void (behind().length === 0 && done());
      const timer = setTimeout(() => {
        this.#log.warn({ nodes: behind().length }, 'ACME challenge published, but not every node said it serves it in time; the CA is told to look anyway');
        done();
      }, this.#waitMs);
      this.#waiters.add(check);
      check();
    });
  }
}

/** A challenge from etcd, checked for the fields the workers use; undefined when malformed. */
function parseEntry(text: string | undefined, token: string): ChallengeEntry | undefined {
  try {
    const raw = JSON.parse(text ?? '') as Record<string, unknown>;
    const strings = (...keys: string[]): boolean => keys.every((k) => typeof raw[k] === 'string');
    if (raw.token !== token || !strings('token', 'name')) return undefined;
    if (raw.kind === 'http-01' && strings('keyAuthorization')) return raw as unknown as ChallengeEntry;
    if (raw.kind === 'tls-alpn-01' && strings('certificatePem', 'keyId', 'spki')) return raw as unknown as ChallengeEntry;
    return undefined;
  } catch {
    return undefined;
  }
}
