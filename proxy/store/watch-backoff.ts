/**
 * How long the fleet's etcd client waits before it opens its watch stream
 * again after the stream failed (etcd3's `faultHandling.watchBackoff`):
 * doubling from WATCH_RETRY_FIRST_MS, never more than WATCH_RETRY_MAX_MS,
 * each wait between half and all of that (jitter: the nodes of a fleet do not
 * all come back at once).
 *
 * Why not etcd3's default (cockatiel's ExponentialBackoff, up to 30 s):
 * etcd3 1.1.2 schedules each retry with a plain setTimeout that its close()
 * neither clears nor unrefs, and counts every failure of the stream twice
 * (its 'error' and its 'end'), so while etcd is unreachable the wait grows to
 * 30 s within seconds, and is reset only by an answer from etcd; the close
 * itself ends the stream, one more failure, one more wait. A node stopped
 * then said "proxy stopped" and its primary stayed alive until the last of
 * those timers fired: 3.3 to 30 s after the signal in five stops here, 0.6 to
 * 29 s elsewhere. A timer etcd3 scheduled is out of
 * reach; what it waits is not. So every wait is short, and once the client
 * is closed (FleetEtcd3 in etcd-client.ts says so) the shortest: a stopping
 * node outlives its close by WATCH_RETRY_MAX_MS at most, by the waits
 * scheduled before it.
 *
 * A short wait costs etcd nothing: etcd3's own reconnect matters only until
 * the link's next probe (etcd-link.ts, every second), which drops a watch
 * that was lost and starts a new one from a fresh snapshot once etcd
 * answers; and a lock's wait on its key (lock.ts) lasts a second at most.
 * Until then a node retries twice a second; past that no watch is attached
 * and a retry opens nothing.
 */
import type { IOptions } from 'etcd3';

/** What etcd3 takes (cockatiel's IBackoff: etcd3 reads `duration` and calls `next`, nothing else). */
type WatchBackoff = NonNullable<NonNullable<IOptions['faultHandling']>['watchBackoff']>;

/** The first wait's ceiling. */
export const WATCH_RETRY_FIRST_MS = 100;
/** No wait is longer: also how long, at most, etcd3 keeps the stopping process alive after its close. */
export const WATCH_RETRY_MAX_MS = 500;

/** Every wait once the client is closed: a retry then fails at once (etcd3 refuses a closed client's calls), and the stream is never opened again. */
export const WATCH_RETRY_CLOSED_MS = 10;

/** The waits of one client: etcd3 calls `next()` on `first()` for the first, and on each wait for the one after it. */
export class WatchBackoffs {
  #closed = false;

  /**
   * The client closes: every wait from now on is WATCH_RETRY_CLOSED_MS, the one etcd3 schedules as its close ends the
   * stream included (with etcd away, its wait had grown to the ceiling). Waits scheduled before stay, WATCH_RETRY_MAX_MS
   * at most. Not zero: a watch its caller never cancelled would have etcd3 retry in a loop, as fast as timers fire.
   */
  close(): void {
    this.#closed = true;
  }

  first(): WatchBackoff {
    return this.#wait(-1);
  }

  #wait(attempt: number): WatchBackoff {
    const ceiling = Math.min(WATCH_RETRY_MAX_MS, WATCH_RETRY_FIRST_MS * 2 ** Math.max(0, attempt));
    const open = Math.round(ceiling * (0.5 + Math.random() / 2));
    const closed = (): boolean => this.#closed;
    return {
      // Read by etcd3 as it schedules the retry.
      get duration() {
        return closed() ? WATCH_RETRY_CLOSED_MS : open;
      },
      next: () => this.#wait(attempt + 1),
    };
  }
}
