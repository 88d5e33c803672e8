/**
 * The signs waiting for a signing thread, taken in turn across flows (one flow
 * per client connection) rather than first come first served: a connection
 * that pipelines hundreds of signs cannot make another connection's sign wait
 * behind its whole backlog, only behind one of its signs per turn.
 *
 * This is round robin over the flows that have something waiting, as Deficit
 * Round Robin (Shreedhar & Varghese, 1995; Linux's sch_drr, tc-drr(8)) keeps
 * an "active" list of its non-empty classes and serves the one at its head:
 * each take is O(1), whatever the number of flows or of items queued. The
 * quantum here is one sign: the signs that reach a thread cost about the same
 * (one C_SignInit and one C_Sign on a key of the token), so counting them is
 * the deficit's whole work.
 *
 * Flows are keyed by an object (the connection's AbortSignal, sign-workers.ts)
 * and held only while they have something queued, so a connection that goes
 * leaves nothing behind once its last item is taken. What bounds a flow's
 * length is its owner's: a connection has at most its cap of requests in
 * flight (connection.ts, OVERLOADED beyond it), but a request answered
 * DEADLINE_EXCEEDED leaves that count while its sign is still queued. So a
 * flow's turn also drops the items at its head that are no longer wanted
 * (`shift(drop)`: expired, or their connection closed), all of them, not one
 * a turn: one a turn, a connection given its place back at each deadline
 * piled up signs for ever while other connections' turns came between its own.
 *
 * Contract: `push(flow, item)` appends to the flow's tail; `shift(drop?)`
 * takes the oldest item of the flow whose turn it is, first removing those of
 * its oldest that `drop` takes (it is called on each, and answers for them),
 * and sends that flow to the back of the turns (or forgets it, now empty; a
 * flow left with nothing wanted gives its turn to the next); `unshift(flow,
 * item)` puts an item back at its flow's head (a job whose thread died, made
 * again in its turn); `size` counts every item queued; `takeAll()` empties
 * the queue, in turns.
 */

/** Items oldest first from `head` (taken from the front without copying the rest). */
class Fifo<T> {
  items: T[] = [];
  head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  take(): T {
    const item = this.items[this.head]!;
    this.items[this.head++] = undefined as T;
    // Compacted once the taken part is half the array: amortised O(1) a take.
    if (this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Back at the head: in the slot taken last if there is one, else at the cost of a copy (rare: a retry). */
  putBack(item: T): void {
    if (this.head > 0) this.items[--this.head] = item;
    else this.items.unshift(item);
  }
}

/** One flow's items, and the key it is known by. */
class Flow<T> extends Fifo<T> {
  constructor(readonly key: object) {
    super();
  }
}

export class FairQueue<T> {
  /** The flows with items queued, by key. */
  readonly #flows = new Map<object, Flow<T>>();
  /**
   * The same flows in turn order, the next first. Not the Map's own order (deleting a flow and setting it again to
   * send it to the back): V8 keeps a deleted entry's slot until the table is rebuilt and iterates from the first
   * slot, so the next flow was found past as many dead slots as takes since, about as many as there are flows.
   */
  readonly #turns = new Fifo<Flow<T>>();
  #size = 0;

  /** Items queued over every flow. */
  get size(): number {
    return this.#size;
  }

  /** Flows with items queued. */
  get flows(): number {
    return this.#flows.size;
  }

  push(flow: object, item: T): void {
    this.#flowFor(flow).items.push(item);
    this.#size++;
  }

  /** Back at the head of its flow (a job whose thread died); a flow with nothing queued joins the turns at the back, as any newcomer. */
  unshift(flow: object, item: T): void {
    this.#flowFor(flow).putBack(item);
    this.#size++;
  }

  /**
   * The oldest item of the flow whose turn it is, past those at its head that `drop` takes (removed); that flow goes
   * to the back of the turns. Each item is dropped once, so this is O(1) amortised.
   */
  shift(drop?: (item: T) => boolean): T | undefined {
    while (this.#turns.length > 0) {
      const queue = this.#turns.take();
      while (queue.length > 0) {
        const item = queue.take();
        this.#size--;
        if (drop?.(item) === true) continue;
        if (queue.length > 0) this.#turns.items.push(queue);
        else this.#flows.delete(queue.key);
        return item;
      }
      this.#flows.delete(queue.key);
    }
    return undefined;
  }

  /** Every item queued, in the order `shift()` would give them; the queue is left empty. */
  takeAll(): T[] {
    const all: T[] = [];
    for (let item = this.shift(); item !== undefined; item = this.shift()) all.push(item);
    return all;
  }

  /** The flow's queue; one that had nothing queued joins at the back of the turns. */
  #flowFor(flow: object): Flow<T> {
    let queue = this.#flows.get(flow);
    if (queue === undefined) {
      queue = new Flow<T>(flow);
      this.#flows.set(flow, queue);
      this.#turns.items.push(queue);
    }
    return queue;
  }
}
