/**
 * Revoking a lease whose keys must go now: a lock its holder released or
 * failed to take (lock.ts), the ACME challenges of a node that stops
 * (acme/fleet-challenges.ts). Until the revocation reaches etcd those keys
 * stay, and hold every other node off (a lock) for as long as the lease
 * lives.
 *
 * One try is not enough. A revocation is typically sent right after a call
 * failed past its deadline (etcd stalled, a member lost), while etcd still
 * does not answer (and a member whose calls failed three times in a row is
 * skipped 5 s while another member answers: member-breaker.ts): a lone
 * revocation failed, and the keys stayed for the lease's whole TTL. So a failed revocation is
 * tried again in the background, every RETRY_MS, until it gets through or
 * the lease has surely run out by itself (twice its TTL: etcd3 stopped its
 * keepalive at the first try, but one sent just before, answered late by a
 * member that stalled, renews it for a TTL from then). A revocation of a
 * lease etcd no longer has counts as done (etcd3 says so). Nothing of it is
 * ever unhandled, and it is logged once, when it ends.
 *
 * The store waits for the revocations under way before it closes its client
 * (`settled`, bounded): a node that stops revokes its leases and closes the
 * client right after, and a revocation not yet sent then never was (etcd3
 * refuses a call on a closed client); the keys stayed for the lease's TTL,
 * and every other node waited on a node that was gone.
 */
import { ClientClosedError } from 'etcd3';
import type { Logger } from '../../keyserver/shared/log.js';

/** Between tries: etcd answers again within a second of its return (member-breaker.ts), and a try costs at most a deadline. */
const RETRY_MS = 1_000;

/** The revocations of one etcd client: each tried until it reaches etcd; waited for, within a bound, before the client closes. */
export class Revocations {
  readonly #log: Logger | undefined;
  readonly #pending = new Set<Promise<void>>();

  /** `log`: where a revocation that needed tries again says how it ended. */
  constructor(log?: Logger) {
    this.#log = log;
  }

  /**
   * Runs `revoke` (etcd3's Lease.revoke or Lock.release, which end the keepalive first, so calling it again is safe) and,
   * when it fails, again in the background until it succeeds or twice `ttlSeconds` have passed. Resolves once the first
   * try ended, either way; never rejects. `what` names the lease's keys in the log line (never a value).
   */
  revoke(revoke: () => Promise<void>, ttlSeconds: number, what: string): Promise<void> {
    let firstTried!: () => void;
    const first = new Promise<void>((resolve) => (firstTried = resolve));
    const done = this.#untilRevoked(revoke, ttlSeconds, what, firstTried);
    this.#pending.add(done);
    void done.finally(() => this.#pending.delete(done));
    return first;
  }

  /** Resolves once every revocation under way has ended (reached etcd, or given up), or after `waitMs`, whichever is first. */
  async settled(waitMs: number): Promise<void> {
    if (this.#pending.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.#pending), new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
  }

  async #untilRevoked(revoke: () => Promise<void>, ttlSeconds: number, what: string, firstTried: () => void): Promise<void> {
    const started = Date.now();
    const deadline = started + 2 * ttlSeconds * 1_000;
    for (let tries = 1; ; tries++) {
      let reason: string;
      try {
        await revoke();
        if (tries > 1) this.#log?.info({ what, tries, ms: Date.now() - started }, 'lease revoked in etcd after a failed revocation');
        return;
      } catch (err) {
        reason = (err as Error).message;
        // The client is closed (the node stops): nothing can reach etcd any more; the lease runs out by itself.
        if (err instanceof ClientClosedError) return;
      } finally {
        if (tries === 1) firstTried();
      }
      if (tries > 1 && Date.now() + RETRY_MS >= deadline) {
        this.#log?.warn({ what, tries, reason }, 'lease not revoked in etcd (it did not answer); its keys went when the lease ran out');
        return;
      }
      // Never what keeps a stopping process alive: its lease runs out by itself.
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
    }
  }
}
