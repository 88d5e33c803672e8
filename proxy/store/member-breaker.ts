/**
 * The fleet's etcd client's policy per etcd member (etcd3's
 * `faultHandling.host`): a member whose calls keep failing is skipped while
 * another member can take its calls, and a call no other member can take is
 * never refused.
 *
 * Why not etcd3's default (node_modules/etcd3/lib/connection-pool.js, a
 * cockatiel circuit breaker per member: three recoverable failures in a row
 * open it for 5 s, one call let through every 5 s after): with one member, or
 * every member failing at once (etcd restarted or stalled, a leader lost), it
 * refused every call for up to 5 s after etcd answered again. Measured on a
 * one-member etcd stalled for 2 s (SIGSTOP, 300 ms deadlines): the first
 * write went through 3.6 s after etcd resumed (71 calls refused "the circuit
 * breaker is open" meanwhile), 16 ms after it with this policy; on a
 * 3-member cluster whose leader was killed, the first write went through
 * 5.4-6.0 s after the kill (the survivors failed calls while they elected a
 * new leader, and were refused for 5 s), 1.1-1.4 s after it with this
 * policy (three runs each). No breaker at all costs a multi-member cluster
 * its failover, though: etcd3 picks a member at random for each call, and
 * with a follower killed, 15 of 34 writes in 2 s failed with none, none with
 * etcd3's breaker or this policy (the global retry sends a failed call to
 * the next member). Measured with /tmp scripts on loopback, etcd 3.4,
 * 300 ms deadlines, a write every 50 ms.
 *
 * So a member is skipped for SKIP_MS after FAILURES_TO_SKIP recoverable
 * failures in a row (etcd3's isRecoverableError: unavailable, deadline
 * exceeded...), and etcd3 sends the call to the next member; but while every
 * member is skipped, a call goes through: no member is likelier to answer
 * than another, and refusing it only delays the return of the cluster. Past
 * SKIP_MS a member takes calls again; one success clears its failures, one
 * more failure skips it again. etcd3's global policy (three tries, each on
 * the next member) is kept.
 */
import { type IOptions, isRecoverableError } from 'etcd3';

/** What etcd3 takes for one member (cockatiel's IPolicy, of which etcd3 calls only `execute`). */
type HostPolicy = ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>;
type PolicyContext = Parameters<Parameters<HostPolicy['execute']>[0]>[0];

/** Failures in a row (each past its deadline, or refused by a member that is down) before a member is skipped... */
const FAILURES_TO_SKIP = 3;
/** ...and for how long, while another member takes the calls (etcd3's default). */
const SKIP_MS = 5_000;

const NOT_ABORTED = new AbortController().signal;

/** A call not sent to a member being skipped (etcd3 then tries the next one; never a caller's answer). */
export class MemberSkippedError extends Error {}

/** A policy per member, `host` in `faultHandling`; the members of one client share what they know of each other. */
export function memberBreakers(): (member: string) => HostPolicy {
  const members: MemberBreaker[] = [];
  return (member) => {
    const breaker = new MemberBreaker(member, members);
    members.push(breaker);
    return breaker;
  };
}

class MemberBreaker implements HostPolicy {
  declare readonly _altReturn: never;
  readonly #member: string;
  readonly #members: readonly MemberBreaker[];
  #failures = 0;
  #skipUntil = 0;

  constructor(member: string, members: readonly MemberBreaker[]) {
    this.#member = member;
    this.#members = members;
  }

  // etcd3 listens to neither; they are part of the policy's shape.
  readonly onSuccess = (): { dispose(): void } => ({ dispose() {} });
  readonly onFailure = (): { dispose(): void } => ({ dispose() {} });

  async execute<T>(fn: (context: PolicyContext) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> {
    const now = performance.now();
    if (this.#skipped(now) && this.#members.some((other) => !other.#skipped(now))) {
      throw new MemberSkippedError(`etcd member ${this.#member} skipped: its last ${this.#failures} calls failed`);
    }
    try {
      const result = await fn({ signal: signal ?? NOT_ABORTED });
      this.#failures = 0;
      return result;
    } catch (err) {
      if (err instanceof Error && isRecoverableError(err) && ++this.#failures >= FAILURES_TO_SKIP) this.#skipUntil = performance.now() + SKIP_MS;
      throw err;
    }
  }

  /** Skipped for SKIP_MS as if its calls had failed: the member carrying a watch stream that showed nothing etcd had done (watch-stream.ts). */
  skip(): void {
    this.#failures = FAILURES_TO_SKIP;
    this.#skipUntil = performance.now() + SKIP_MS;
  }

  #skipped(now: number): boolean {
    return now < this.#skipUntil;
  }
}
