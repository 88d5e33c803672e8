/**
 * Which connections may stay open: at most `maxConnections` over all
 * listeners and at most `maxConnectionsPerClient` per client identity, and
 * which one makes room when a new connection arrives at a cap.
 *
 * Refusing the newcomer at a full cap is what let 1,023 stalled connections
 * from one local client fail half the proxy's handshakes: the proxy's bridge
 * reconnects as a newcomer, and on the unix socket it is the same identity as
 * the local client that stalls (the peer's uid is not visible to Node). So, as
 * nginx does when worker_connections run out (it closes idle keep-alive and
 * not-yet-active connections to reuse them), a newcomer at a cap evicts:
 *
 *   1. the longest-stalled connection of that identity (or, at the overall
 *      cap, of anyone): one that has a partial frame pending, or has not
 *      completed a frame since it was accepted, or has left its answers
 *      unread for the frame deadline (connection.ts). It is doing nothing
 *      useful and the frame deadline would close a partial one soon anyway;
 *   2. else the connection idle longest (frames answered, nothing in flight):
 *      the bridge notices a closed idle connection before its next request and
 *      reconnects without failing a handshake (transport `usable` check);
 *   3. never one with requests in flight: if every connection is busy, the
 *      newcomer is refused instead.
 *
 * State changes are O(1): each state keeps its members in a Set, whose
 * insertion order is the order they entered it, so the first is the oldest.
 */

export type ConnectionState = 'stalled' | 'idle' | 'busy';

/** Which cap a newcomer met: the client identity's, or the overall one. */
export type Cap = 'client_cap' | 'connection_cap';

export interface AdmissionLimits {
  readonly maxConnections: number;
  readonly maxConnectionsPerClient: number;
}

export type Admitted<T> =
  | { readonly admitted: true; readonly evicted: readonly { readonly member: T; readonly cap: Cap }[] }
  | {
      readonly admitted: false;
      readonly cap: Cap;
    };

class Pool<T> {
  count = 0;
  readonly stalled = new Set<T>();
  readonly idle = new Set<T>();

  /** The member to evict, if any may be. */
  victim(): T | undefined {
    for (const member of this.stalled) return member;
    for (const member of this.idle) return member;
    return undefined;
  }

  add(member: T, state: ConnectionState): void {
    if (state !== 'busy') this[state].add(member);
  }

  delete(member: T, state: ConnectionState): void {
    if (state !== 'busy') this[state].delete(member);
  }
}

interface Entry<T> {
  readonly name: string;
  readonly client: Pool<T>;
  state: ConnectionState;
}

export class Admission<T> {
  readonly #limits: AdmissionLimits;
  readonly #all = new Pool<T>();
  readonly #clients = new Map<string, Pool<T>>();
  readonly #entries = new Map<T, Entry<T>>();

  constructor(limits: AdmissionLimits) {
    this.#limits = limits;
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * Admits `member` of identity `client` as stalled (it has not sent a frame
   * yet), evicting others as above. Evicted members are already removed here;
   * the caller closes them. A refused member is not recorded.
   */
  admit(member: T, client: string): Admitted<T> {
    const pool = this.#clients.get(client) ?? new Pool<T>();
    const evicted: { member: T; cap: Cap }[] = [];
    if (pool.count >= this.#limits.maxConnectionsPerClient) {
      const victim = pool.victim();
      if (victim === undefined) return { admitted: false, cap: 'client_cap' };
      this.remove(victim);
      evicted.push({ member: victim, cap: 'client_cap' });
    }
    if (this.#all.count >= this.#limits.maxConnections) {
      const victim = this.#all.victim();
      if (victim === undefined) return { admitted: false, cap: 'connection_cap' };
      this.remove(victim);
      evicted.push({ member: victim, cap: 'connection_cap' });
    }
    this.#clients.set(client, pool);
    this.#entries.set(member, { name: client, client: pool, state: 'stalled' });
    for (const p of [pool, this.#all]) {
      p.count++;
      p.add(member, 'stalled');
    }
    return { admitted: true, evicted };
  }

  /** Records a change of state; the member goes to the back of its new state's order. */
  update(member: T, state: ConnectionState): void {
    const entry = this.#entries.get(member);
    if (entry === undefined || entry.state === state) return;
    for (const p of [entry.client, this.#all]) {
      p.delete(member, entry.state);
      p.add(member, state);
    }
    entry.state = state;
  }

  /** Forgets `member` (closed, or evicted); a no-op for one not admitted. */
  remove(member: T): void {
    const entry = this.#entries.get(member);
    if (entry === undefined) return;
    this.#entries.delete(member);
    for (const p of [entry.client, this.#all]) {
      p.count--;
      p.delete(member, entry.state);
    }
    if (entry.client.count === 0) this.#clients.delete(entry.name);
  }
}
