/**
 * The signing log's rate over a long outage (proxy/keyless/signing-log.ts),
 * driven tick by tick on a clock of the test's: the bridge's counters as the
 * native stats give them, failures added as handshakes would fail. The real
 * outage, with a key server stopped under a cluster, is in
 * keyserver-outage-log.test.ts; this covers what takes minutes there.
 */
import { describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { SigningLog, WARN_INTERVAL_MS } from '../proxy/keyless/signing-log.js';
import type { BridgeStats } from '../proxy/native/index.js';
import { jsonLineSink } from './helpers/proxy-lab.js';

const WARNING = 'key server signing failing: handshakes fail';
const RECOVERED = 'key server signing works again';

function lab() {
  const counts = { signs: 0, connect: 0, breaker: 0 };
  let state: 'up' | 'cooling' = 'up';
  const stats = (): BridgeStats => ({
    signs: counts.signs,
    failures: { connect: counts.connect, timeout: 0, remote: 0, protocol: 0, breaker: counts.breaker },
    lastError: counts.connect > 0 ? 'key server at unix:/run/ks.sock: connect: No such file or directory' : '',
    failovers: 0,
    servers: [
      {
        name: 'ks',
        state,
        signs: counts.signs,
        failovers: 0,
        rejoins: 0,
        failures: { connect: counts.connect, timeout: 0, remote: 0, protocol: 0 },
        signSeconds: 0,
        latencyEwmaMs: 0,
      },
    ],
  });
  const lines: Record<string, unknown>[] = [];
  let now = 0;
  // Ticks only when the test says (a tick interval no test waits for).
  const log = new SigningLog(stats, ['unix:/run/ks.sock'], createLogger('signing-log-test', 'info', jsonLineSink(lines)), () => now, 3_600_000);
  return {
    counts,
    lines,
    down: (cooling: boolean) => (state = cooling ? 'cooling' : 'up'),
    tick(ms = 1_000) {
      now += ms;
      log.tick();
    },
    stop: () => log.stop(),
    of: (msg: string) => lines.filter((l) => l.msg === msg),
  };
}

describe('the signing log', () => {
  it('says the first failure at once, then one line per interval with the count since the last, and one recovery line', async () => {
    const t = lab();
    t.counts.signs = 5;
    t.tick();
    expect(t.lines).toEqual([]);
    // The outage: 3 failed handshakes in the first second, then 10 a second (connects, and the breaker's).
    t.down(true);
    t.counts.connect += 3;
    t.tick();
    for (let s = 1; s < 95; s++) {
      t.counts.connect += 4;
      t.counts.breaker += 6;
      t.tick();
    }
    await new Promise(setImmediate);
    const warnings = t.of(WARNING);
    // At 1 s, then one per interval: 95 s of outage is four lines, not 943.
    expect(warnings.map((w) => w.failed)).toEqual([3, 300, 300, 300]);
    expect(warnings[1]!.reasons).toEqual({ connect: 120, breaker: 180 });
    expect(warnings.every((w) => (w.keyservers as string[]).join() === 'unix:/run/ks.sock')).toBe(true);
    // Back: the first tick with signs and no failure says so, with the failures since the last warning.
    t.down(false);
    t.counts.signs += 2;
    t.tick();
    t.counts.signs += 2;
    t.tick();
    await new Promise(setImmediate);
    const recoveries = t.of(RECOVERED);
    expect(recoveries).toHaveLength(1);
    expect(recoveries[0]!.failed).toBe(4 * 10);
    expect(t.of(WARNING)).toHaveLength(4);
    t.stop();
  });

  it('keeps to one warning per interval when signing comes and goes', async () => {
    const t = lab();
    // A failure, a recovery, a failure again within the interval: the second waits for the interval, with its count.
    t.counts.connect += 1;
    t.tick();
    t.counts.signs += 1;
    t.tick();
    t.counts.connect += 2;
    t.tick();
    t.counts.signs += 1;
    t.tick();
    await new Promise(setImmediate);
    expect(t.of(WARNING).map((w) => w.failed)).toEqual([1]);
    expect(t.of(RECOVERED)).toHaveLength(1);
    t.tick(WARN_INTERVAL_MS);
    await new Promise(setImmediate);
    expect(t.of(WARNING).map((w) => w.failed)).toEqual([1, 2]);
    t.stop();
  });
});
