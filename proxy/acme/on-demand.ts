/**
 * On-demand issuance: a handshake for a name no certificate covers (a
 * customer just pointed a CNAME at the edge) asks, through the worker's IPC
 * message, for a certificate; the handshake itself never waits (it gets the
 * default certificate or unrecognized_name), and a later one gets the new
 * certificate once it serves.
 *
 * Every gate runs before the CA is contacted, cheapest first, so a wildcard
 * CNAME flood (a.evil.example, b.evil.example, …) never reaches it:
 *   1. the name is one a CA issues for (on-demand-ca-names.ts: a plain DNS name, not an IP literal, its `xn--`
 *      labels valid Punycode, no other label with `--` in its third and fourth characters; with `publicNamesOnly`,
 *      under an ICANN TLD, no special-use name, at most 10 labels) with a registrable domain
 *      (below, gate 7: not a public suffix itself), not managed or in flight already
 *      (by its own entry, or listed by another managed entry or an order running: maintain.ts `isManaged`), and not the
 *      entry name of a certificate already in the store (one the operator uploaded: the order would replace it);
 *      an ignored name is counted with its reason (a bounded set: NameRefusal, `managed`, `checking`); and its last
 *      order did not fail within its backoff (`backoff`: retryMin × 2^(failures−1), never before the CA's
 *      Retry-After; maintain.ts backingOff): a name the CA would not validate, ordered again at each handshake, took
 *      every order of its registered domain's hour, and the domain's other names were rate-limited;
 *   2. it was not refused within `refusedSeconds` (remembered, bounded LRU);
 *   3. its hourly limits are not known to be full (the ledger's last answer, no I/O): a name it could not order
 *      anyway is not asked about. Each of 1,000 random names under one registered domain was asked about, though
 *      `maxOrdersPerDomainPerHour` of them at most could be ordered: the ask endpoint took a flood the limit had
 *      already stopped;
 *   4. the client that sent it has a check left (`maxChecksPerClientPerMinute`, a token bucket per client
 *      address, IPv6 per /64: on-demand-clients.ts; over it the name is ignored, reason `client_limit`, as one not
 *      allowed yet), at most `maxPendingChecks` names are being checked at once, and checks are not paused after
 *      one that failed (on-demand-ask.ts); others are dropped, not queued (`busy`);
 *   5. the `ask` URL answers 2xx for `?domain=NAME` within `askTimeoutMs` (a user and password in the URL
 *      are sent as Basic authorization; on-demand-ask.ts);
 *   6. with `cnameTarget`, the name's CNAME is that target (the DNS check the seed product did);
 *   7. rate limits: `maxOrdersPerDomainPerHour` per registered domain and
 *      `maxOrdersPerHour` in all. The registered domain is the name's registrable
 *      domain by the Public Suffix List, its private section included (tldts,
 *      which bundles the list), as Let's Encrypt counts its per-domain limit:
 *      shop.co.uk for a.b.shop.co.uk, alice.github.io for www.alice.github.io, x.test
 *      for www.x.test (the list's default rule `*`: an unlisted top-level label is a
 *      suffix). The last two labels, before, made every customer under co.uk or a
 *      platform's suffix share one counter: one tenant's names used up the hour for
 *      all the others. A name that is a public suffix itself (co.uk, github.io) has no
 *      registrable domain and is ignored at gate 1: it would count with no registrant
 *      (or with all of them), and no CA issues for an ICANN suffix; a platform that
 *      serves its own suffix issues it as the operator (`POST /acme/issue`).
 * A refusal at 2, 5 or 6 is remembered; a check that failed (no answer: a
 * timeout, a 5xx, a DNS server failure) is not, checks pause instead; a
 * rate-limited name is not (it may come back when the hour has room). What is remembered and counted lives in
 * the ledger (on-demand-ledger.ts): this node's memory, or the fleet's store,
 * so the hourly limits hold for the fleet.
 */
import { Resolver } from 'node:dns/promises';
import type { OnDemandConfig } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { LogLimiter } from '../../keyserver/shared/log-limiter.js';
import { ALLOWED, askEndpoint, CheckPause, type CheckVerdict } from './on-demand-ask.js';
import { ClientChecks } from './on-demand-clients.js';
import { LocalLedger, type OnDemandLedger } from './on-demand-ledger.js';
import { judgeName, type NameRefusal } from './on-demand-ca-names.js';
import { maskedUrl } from '../masked-url.js';

/** Refused and rate-limited lines: at most LOG_BURST of each per LOG_INTERVAL_MS (the key server's defaults). */
const LOG_INTERVAL_MS = 10_000;
const LOG_BURST = 10;
/** Resolver errors that are the DNS's answer about the name (RFC 2308: NXDOMAIN, NODATA), not a failure to get one. */
const DNS_ANSWERS = new Set(['ENOTFOUND', 'ENODATA']);
/** The `reason` of a name ignored because its client is over `maxChecksPerClientPerMinute`. */
const CLIENT_LIMIT = 'client_limit';

export type OnDemandOutcome = 'ordered' | 'refused' | 'remembered' | 'rate_limited' | 'busy' | 'ignored';
/**
 * Why a name was ignored (the metric's `reason` label): a CA would refuse it, it is managed, its last order failed and
 * its backoff is not over, it is being checked, or the client that sent it is over its checks (gate 4).
 */
export type IgnoredReason = NameRefusal | 'managed' | 'backoff' | 'checking' | typeof CLIENT_LIMIT;

export interface OnDemandDeps {
  readonly config: OnDemandConfig;
  readonly log: Logger;
  readonly isManaged: (name: string) => boolean;
  /** Whether `name`'s last order failed and its backoff is not over (maintain.ts backingOff); none: never. */
  readonly backingOff?: (name: string) => boolean;
  /** Starts issuance in the background. */
  readonly order: (name: string) => void;
  /** Each decision; `reason` with `ignored` only. */
  readonly onOutcome?: (outcome: OnDemandOutcome, reason?: IgnoredReason) => void;
  /** Refusals and order counts; default: this node's memory. */
  readonly ledger?: OnDemandLedger;
}

export class OnDemandGate {
  readonly #deps: OnDemandDeps;
  readonly #ledger: OnDemandLedger;
  readonly #checking = new Set<string>();
  readonly #resolver: Resolver;
  readonly #ask: ((name: string) => Promise<CheckVerdict>) | undefined;
  readonly #pause = new CheckPause();
  /** Checks per client (gate 4); none when `maxChecksPerClientPerMinute` is null. */
  readonly #clients: ClientChecks | undefined;
  /**
   * A client picks the names, so it picks how many are refused or
   * rate-limited: their lines are capped per outcome (random names under a
   * wildcard CNAME made one line each), while `onOutcome`'s metric counts
   * every one. Orders are bounded by the hourly limits and logged each.
   */
  readonly #limiter = new LogLimiter({ intervalMs: LOG_INTERVAL_MS, burst: LOG_BURST });

  constructor(deps: OnDemandDeps) {
    this.#deps = deps;
    this.#ask = deps.config.ask === null ? undefined : askEndpoint(deps.config.ask, deps.config.askTimeoutMs);
    this.#ledger = deps.ledger ?? new LocalLedger(deps.config);
    const perClient = deps.config.maxChecksPerClientPerMinute;
    this.#clients = perClient === null ? undefined : new ClientChecks(perClient);
    this.#resolver = new Resolver({ timeout: deps.config.askTimeoutMs, tries: 1 });
    if (deps.config.resolver !== null) this.#resolver.setServers([deps.config.resolver]);
  }

  /**
   * A worker saw a handshake for `name`, which no certificate covers, from `client` (its clientKey; none: a trusted
   * proxy's, not bounded). Resolves with what was decided (tests, logs).
   */
  async wanted(name: string, client?: string): Promise<OnDemandOutcome> {
    try {
      return await this.#wanted(name, client);
    } catch (err) {
      // A part of the gate failed (a bug, not an answer about the name): refused this time, not remembered, so its next
      // report is checked again. Rejected, it was an unhandled rejection in the primary, which stops the proxy. The line
      // is rate-limited (a client picks the names) and has no error object: a message may quote a URL with its token.
      this.#limiter.write(
        this.#deps.log,
        'error',
        'unexpected',
        { name, reason: unexpectedReason(err) },
        'on-demand certificate not checked: the check failed unexpectedly; refused this time',
      );
      this.#deps.onOutcome?.('refused');
      return 'refused';
    }
  }

  async #wanted(name: string, client: string | undefined): Promise<OnDemandOutcome> {
    const judged = judgeName(name, this.#deps.config.publicNamesOnly);
    const ignored =
      'refusal' in judged
        ? judged.refusal
        : this.#deps.isManaged(name)
          ? 'managed'
          : this.#deps.backingOff?.(name) === true
            ? 'backoff'
            : this.#checking.has(name)
              ? 'checking'
              : undefined;
    const decided = ignored === undefined && 'domain' in judged ? await this.#decide(name, judged.domain, client) : 'ignored';
    const outcome = decided === CLIENT_LIMIT ? 'ignored' : decided;
    this.#deps.onOutcome?.(outcome, decided === CLIENT_LIMIT ? CLIENT_LIMIT : ignored);
    return outcome;
  }

  async #decide(name: string, domain: string, client: string | undefined): Promise<OnDemandOutcome | typeof CLIENT_LIMIT> {
    const { config, log } = this.#deps;
    if (this.#ledger.refused(name)) return 'remembered';
    if (this.#ledger.full(domain)) return 'rate_limited';
    // Before `busy`: a flooding client is told apart from a busy gate, and takes a token only for a check it starts.
    if (this.#clients?.allows(client) === false) {
      this.#limiter.write(
        log,
        'warn',
        CLIENT_LIMIT,
        { client, name },
        'on-demand certificate not checked: the client is over acme.onDemand.maxChecksPerClientPerMinute',
      );
      return CLIENT_LIMIT;
    }
    if (this.#checking.size >= config.maxPendingChecks || this.#pause.paused()) return 'busy';
    this.#clients?.take(client);
    this.#checking.add(name);
    try {
      const verdict = await this.#check(name);
      if ('failed' in verdict) {
        // Not the endpoint's answer about the name: not remembered (on-demand-ask.ts), checks pause.
        this.#pause.failed();
        this.#limiter.write(log, 'warn', 'failed', { name, reason: verdict.failed }, 'on-demand certificate not checked: refused this time');
        return 'refused';
      }
      this.#pause.answered();
      if ('refused' in verdict) {
        this.#ledger.rememberRefusal(name, verdict.refused);
        this.#limiter.write(log, 'info', 'refused', { name, reason: verdict.refused }, 'on-demand certificate refused');
        return 'refused';
      }
      const slot = await this.#ledger.takeOrderSlot(domain);
      // The fleet's store away: nothing is counted, so nothing is ordered (the name comes back with its next handshake).
      if (slot === 'unavailable') return 'busy';
      if (slot === 'rate_limited') {
        this.#limiter.warn(log, 'rate_limited', { name, domain }, 'on-demand certificate rate-limited');
        return 'rate_limited';
      }
      log.info({ name }, 'on-demand certificate ordered');
      this.#deps.order(name);
      return 'ordered';
    } finally {
      this.#checking.delete(name);
    }
  }

  /** The ask endpoint's verdict, then (allowed) the CNAME's. */
  async #check(name: string): Promise<CheckVerdict> {
    const asked = this.#ask === undefined ? ALLOWED : await this.#ask(name);
    return 'allowed' in asked ? this.#cname(name) : asked;
  }

  async #cname(name: string): Promise<CheckVerdict> {
    const target = this.#deps.config.cnameTarget;
    if (target === null) return ALLOWED;
    try {
      const cnames = await this.#resolver.resolveCname(name);
      return cnames.some((c) => c.toLowerCase().replace(/\.$/, '') === target) ? ALLOWED : { refused: `its CNAME is not ${target}` };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      // No such name, or no CNAME: the DNS's answer. Anything else (a timeout, SERVFAIL, REFUSED) is no answer.
      return DNS_ANSWERS.has(code) ? { refused: `no CNAME to ${target} (${code})` } : { failed: `no DNS answer for its CNAME (${code})` };
    }
  }
}

/** An unexpected failure's name and message for a log line, every URL in it without its credentials (masked-url.ts). */
export function unexpectedReason(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return text.slice(0, 500).split(/(\s+)/).map(maskedUrl).join('');
}
