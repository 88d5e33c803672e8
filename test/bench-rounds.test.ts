import { describe, expect, it } from 'vitest';
import { startClient } from '../bench/harness/spawn.js';
import { runRounds, type Scenario } from '../bench/harness/rounds.js';

// A crashed or hung load client must cost one round of one scenario, never the bench run.
describe('bench rounds with failing clients', () => {
  it('a client that crashes rejects its report; one that hangs is killed after the grace period', async () => {
    const crash = startClient('crasher', ['sh', '-c', 'echo partial; kill -ABRT $$'], undefined, (out) => {
      if (out.exitCode !== 0) throw new Error(`exit ${out.signal ?? out.exitCode}`);
      return out.stdout;
    });
    await expect(crash.stop(undefined, 5000)).rejects.toThrow(/crasher exited with SIGABRT/);
    const hang = startClient('hanger', ['sh', '-c', 'trap "" INT; exec sleep 30'], undefined, () => 'report');
    const started = Date.now();
    await expect(hang.stop('SIGINT', 300)).resolves.toBe('report');
    expect(hang.exited()).toBe(true);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('records a thrown or overdue run as a failed round and goes on', async () => {
    const scenarios: Scenario<number>[] = [
      { name: 'ok', run: async () => 1 },
      {
        name: 'flaky',
        run: async (_ms, ctx) => {
          if (ctx.round === 0) throw new Error('ab exited with SIGABRT');
          if (ctx.round === 1) await new Promise((_, reject) => ctx.signal!.addEventListener('abort', () => reject(ctx.signal!.reason)));
          return 2;
        },
      },
    ];
    const failed: string[] = [];
    const result = await runRounds(scenarios, {
      rounds: 3,
      warmupMs: 0,
      measureMs: 10,
      failSoft: { deadlineMs: 200, onFailure: (f) => failed.push(`${f.scenario}/${f.round}`) },
    });
    expect(result.results.get('ok')).toEqual([1, 1, 1]);
    expect(result.results.get('flaky')).toEqual([2]);
    expect(result.failures.map((f) => [f.scenario, f.round, f.phase])).toEqual([
      ['flaky', 0, 'measure'],
      ['flaky', 1, 'measure'],
    ]);
    expect(result.failures[0]!.error).toBe('ab exited with SIGABRT');
    expect(result.failures[1]!.error).toMatch(/no result within/);
    expect(failed).toEqual(['flaky/0', 'flaky/1']);
  });

  it('without failSoft a failing run still ends the rounds', async () => {
    const boom: Scenario<number> = { name: 'boom', run: async () => Promise.reject(new Error('boom')) };
    await expect(runRounds([boom], { rounds: 1, warmupMs: 0, measureMs: 1 })).rejects.toThrow('boom');
  });
});
