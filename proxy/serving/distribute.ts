/**
 * What the primary sends its workers for a reload: the delta itself, or the
 * whole state after it. A worker layers each delta on its current state
 * (state.ts), in time and memory proportional to the changes since its base;
 * a base that is a pack's table (table.ts) is never rebuilt by the worker,
 * so the primary sends a whole state instead of a delta once the changes
 * since the last whole state would pass REBASE_AFTER, and for any delta too
 * large to go inline (a mass renewal: it travels as a pack either way).
 *
 * Owned by the cluster primary; one reload at a time (coordinator.ts).
 */
import { PACK_THRESHOLD } from './pack.js';
import type { ServingDelta } from './spec.js';

/** Changes a worker takes as layers on its base before it is sent a whole state. */
export const REBASE_AFTER = 4096;

export class Distribution {
  #sinceWhole = 0;

  /** The delta to send for `delta`; `whole()` makes the whole state after it (source.ts wholeWith). */
  shape(delta: ServingDelta, whole: () => ServingDelta): ServingDelta {
    if (delta.whole === true) {
      this.#sinceWhole = 0;
      return delta;
    }
    const size = delta.upsert.length + delta.remove.length;
    if (size > PACK_THRESHOLD || this.#sinceWhole + size > REBASE_AFTER) {
      this.#sinceWhole = 0;
      return whole();
    }
    this.#sinceWhole += size;
    return delta;
  }
}
