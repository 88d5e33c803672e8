/**
 * Which origin of a domain gets a request: round robin over the origins that
 * are not cooling down, with passive health (nothing is probed; a request
 * that fails to reach an origin is the signal, as with nginx's max_fails=1).
 *
 * An origin that failed is skipped for `cooldownMs`, then tried again by the
 * next request it is due for; one success clears it, one more failure starts
 * a new cool-down. When every origin of a domain is cooling down they are all
 * tried anyway, in turn: a possibly-recovered origin beats a certain 502.
 *
 * Pure state over origin keys and an injected clock, no I/O. Not shared
 * between workers: each worker learns health from its own requests.
 */

export class Balancer {
  readonly #cooldownMs: number;
  readonly #now: () => number;
  /** Next position in each group's rotation. */
  readonly #cursor = new Map<string, number>();
  /** Origins cooling down, with the time they may be tried again. */
  readonly #downUntil = new Map<string, number>();

  constructor(cooldownMs: number, now: () => number = () => performance.now()) {
    this.#cooldownMs = cooldownMs;
    this.#now = now;
  }

  /**
   * The origins of `group` (a domain) in the order to try them: the next
   * healthy one in rotation first, the other healthy ones after it, then the
   * cooling-down ones, soonest back first. Advances the rotation by one.
   */
  order(group: string, origins: readonly string[]): string[] {
    if (origins.length <= 1) return [...origins];
    const now = this.#now();
    const healthy = origins.filter((o) => !this.#coolingDown(o, now));
    const turn = this.#cursor.get(group) ?? 0;
    this.#cursor.set(group, (turn + 1) % Number.MAX_SAFE_INTEGER);
    const pool = healthy.length > 0 ? healthy : origins;
    const start = turn % pool.length;
    const rotated = [...pool.slice(start), ...pool.slice(0, start)];
    if (healthy.length === 0) return rotated;
    const down = origins.filter((o) => this.#coolingDown(o, now)).sort((a, b) => (this.#downUntil.get(a) ?? 0) - (this.#downUntil.get(b) ?? 0));
    return [...rotated, ...down];
  }

  /** The origin could not be reached or failed before answering. */
  failed(origin: string): void {
    this.#downUntil.set(origin, this.#now() + this.#cooldownMs);
  }

  /** The origin answered (whatever the status: a 5xx is the application's, not the connection's). */
  succeeded(origin: string): void {
    this.#downUntil.delete(origin);
  }

  healthy(origin: string): boolean {
    return !this.#coolingDown(origin, this.#now());
  }

  /** Forgets origins and groups no longer configured (after a reload); the others keep their state. */
  retain(origins: ReadonlySet<string>, groups: ReadonlySet<string>): void {
    for (const origin of this.#downUntil.keys()) if (!origins.has(origin)) this.#downUntil.delete(origin);
    for (const group of this.#cursor.keys()) if (!groups.has(group)) this.#cursor.delete(group);
  }

  #coolingDown(origin: string, now: number): boolean {
    const until = this.#downUntil.get(origin);
    if (until === undefined) return false;
    if (now < until) return true;
    // Cool-down over: the origin is tried again, and stays in rotation until it fails again.
    this.#downUntil.delete(origin);
    return false;
  }
}
