import { describe, expect, it } from 'vitest';
import { WATCH_RETRY_CLOSED_MS, WATCH_RETRY_FIRST_MS, WATCH_RETRY_MAX_MS, WatchBackoffs } from '../proxy/store/watch-backoff.js';

// The waits etcd3 takes between two tries of a lost watch stream: never past the ceiling however many failures in a
// row (etcd3's default reached 30 s, and its timer held a stopped process that long), the shortest once the client is
// closed, the waits handed out before the close included (etcd3 reads `duration` as it schedules).
describe('the watch stream retry waits', () => {
  it('double from the first, never past the ceiling, and are the shortest once the client is closed', () => {
    const backoffs = new WatchBackoffs();
    const waits = [];
    let wait = backoffs.first().next(undefined);
    for (let i = 0; i < 40; i++) {
      waits.push(wait);
      wait = wait.next(undefined);
    }
    const open = waits.map((w) => w.duration);
    expect(open[0]).toBeGreaterThanOrEqual(WATCH_RETRY_FIRST_MS / 2);
    expect(open[0]).toBeLessThanOrEqual(WATCH_RETRY_FIRST_MS);
    expect(open.every((ms) => ms >= WATCH_RETRY_FIRST_MS / 2 && ms <= WATCH_RETRY_MAX_MS)).toBe(true);
    expect(open.slice(10).every((ms) => ms >= WATCH_RETRY_MAX_MS / 2)).toBe(true);
    backoffs.close();
    expect(waits.map((w) => w.duration).every((ms) => ms === WATCH_RETRY_CLOSED_MS)).toBe(true);
    expect(wait.next(undefined).duration).toBe(WATCH_RETRY_CLOSED_MS);
  });
});
