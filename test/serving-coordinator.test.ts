import { describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ConfigError } from '../keyserver/shared/errors.js';
import { ReloadCoordinator } from '../proxy/serving/coordinator.js';
import type { NextServing } from '../proxy/serving/next-serving.js';
import type { ServingSource } from '../proxy/serving/source.js';
import type { ServingDelta } from '../proxy/serving/spec.js';
import { Writable } from 'node:stream';

// Reloads run one at a time; triggers that arrive meanwhile fold into one
// more reload, and a reload that fails never blocks the ones after it.

const log = createLogger('coordinator-test', 'fatal', new Writable({ write: (_c, _e, done) => done() }));

function fakeSource(behaviour: (pass: number) => Promise<void>): {
  source: ServingSource;
  passes: () => number;
  commits: () => number;
  asked: () => (string[] | undefined)[];
} {
  let passes = 0;
  let commits = 0;
  let generation = 0;
  const asked: (string[] | undefined)[] = [];
  const source = {
    async next(options: { only?: ReadonlySet<string> } = {}): Promise<NextServing> {
      asked.push(options.only === undefined ? undefined : [...options.only].sort());
      const pass = ++passes;
      await behaviour(pass);
      const delta: ServingDelta = { generation: generation + 1, routing: { domains: [], sni: { default: null, onUnknown: 'reject' } }, upsert: [], remove: [] };
      return {
        delta,
        config: {} as NextServing['config'],
        refused: [],
        warnings: [],
        restartNeeded: [],
        present: new Set(),
        unsettled: [],
        followed: [],
        fileDomains: [],
        targeted: options.only !== undefined,
        answered: [],
        storeDirId: undefined,
      };
    },
    commit(next: NextServing): void {
      generation = next.delta.generation;
      commits++;
    },
    get generation(): number {
      return generation;
    },
  };
  return { source: source as unknown as ServingSource, passes: () => passes, commits: () => commits, asked: () => asked };
}

const tick = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('ReloadCoordinator', () => {
  it('folds triggers that arrive during a reload into one more reload', async () => {
    const { source, passes, commits } = fakeSource(() => tick(30));
    const coordinator = new ReloadCoordinator(source, { log, apply: async () => [] });
    const first = coordinator.reload('watch');
    const queued = [coordinator.reload('watch'), coordinator.reload('signal'), coordinator.reload('admin')];
    expect(queued[0]).toBe(queued[1]);
    const reports = await Promise.all([first, ...queued]);
    expect(passes()).toBe(2);
    expect(commits()).toBe(2);
    expect(reports.map((r) => r.generation)).toEqual([1, 2, 2, 2]);
  });

  it('looks at the entries a trigger names; folded triggers at the union of their names, or at everything when one named none', async () => {
    const { source, asked } = fakeSource(() => tick(30));
    const coordinator = new ReloadCoordinator(source, { log, apply: async () => [] });
    const first = coordinator.reload('watch', ['a']);
    const folded = [coordinator.reload('watch', ['b']), coordinator.reload('admin', ['c'])];
    await Promise.all([first, ...folded]);
    expect(asked()).toEqual([['a'], ['b', 'c']]);
    const again = coordinator.reload('watch', ['d']);
    const all = [coordinator.reload('watch', ['e']), coordinator.reload('rescan'), coordinator.reload('watch', ['f'])];
    await Promise.all([again, ...all]);
    expect(asked().slice(2)).toEqual([['d'], undefined]);
  });

  it('reports a refused config without committing, and reloads again afterwards', async () => {
    const { source, commits } = fakeSource(async (pass) => {
      if (pass === 1) throw new ConfigError('/etc/keyedge/proxy.json', 'domains[0].name', 'expected a lower-case DNS name');
    });
    const coordinator = new ReloadCoordinator(source, { log, apply: async () => [] });
    const refused = await coordinator.reload('admin');
    expect(refused).toMatchObject({ result: 'refused', error: { code: 'KEYEDGE_ERR_CONFIG' } });
    expect(refused.error?.message).toContain('domains[0].name');
    expect(commits()).toBe(0);
    expect(await coordinator.reload('admin')).toMatchObject({ result: 'ok', generation: 1 });
  });

  it('reports the generation that keeps serving for a reload refused whole, not 0', async () => {
    const { source, commits } = fakeSource(async (pass) => {
      if (pass === 3) throw new ConfigError('/etc/keyedge/proxy.json', 'domains[0].name', 'expected a lower-case DNS name');
    });
    const coordinator = new ReloadCoordinator(source, { log, apply: async () => [] });
    expect(await coordinator.reload('start')).toMatchObject({ result: 'ok', generation: 1 });
    expect(await coordinator.reload('signal')).toMatchObject({ result: 'ok', generation: 2 });
    expect(await coordinator.reload('signal')).toMatchObject({ result: 'refused', generation: 2, error: { code: 'KEYEDGE_ERR_CONFIG' } });
    expect(commits()).toBe(2);
    expect(await coordinator.reload('admin')).toMatchObject({ result: 'ok', generation: 3 });
  });

  it('reports an apply that threw as partial, and keeps going with the queued reload', async () => {
    const { source, passes } = fakeSource(() => tick(20));
    let calls = 0;
    const coordinator = new ReloadCoordinator(source, {
      log,
      apply: async () => {
        if (++calls === 1) throw new Error('lost the workers');
        return [];
      },
    });
    const first = coordinator.reload('watch');
    const second = coordinator.reload('watch');
    expect(await first).toMatchObject({ result: 'partial', error: { message: 'lost the workers' } });
    expect(await second).toMatchObject({ result: 'ok' });
    expect(passes()).toBe(2);
  });

  it('calls a partial apply partial, naming where it failed', async () => {
    const { source } = fakeSource(async () => undefined);
    const coordinator = new ReloadCoordinator(source, { log, apply: async () => ['worker 2: certificate cannot be served'] });
    expect(await coordinator.reload('signal')).toMatchObject({ result: 'partial', error: { message: 'worker 2: certificate cannot be served' } });
  });

  it('calls a reload that lost workers (one exited, one did not answer in time) ok and committed, naming them, with no error', async () => {
    const { source, commits } = fakeSource(async () => undefined);
    const lost = [{ notApplied: 'worker 2: exited' }, { notApplied: 'worker 3: no answer within 30000 ms' }];
    const coordinator = new ReloadCoordinator(source, { log, apply: async () => lost });
    const report = await coordinator.reload('admin');
    expect(report).toMatchObject({ result: 'ok', notApplied: ['worker 2: exited', 'worker 3: no answer within 30000 ms'] });
    expect(report.error).toBeUndefined();
    expect(commits()).toBe(1);
    // With a failure of the delta itself beside them, it is partial.
    const mixed = new ReloadCoordinator(source, { log, apply: async () => ['worker 4: certificate cannot be served', ...lost] });
    expect(await mixed.reload('admin')).toMatchObject({
      result: 'partial',
      error: { message: 'worker 4: certificate cannot be served' },
      notApplied: ['worker 2: exited', 'worker 3: no answer within 30000 ms'],
    });
  });
});
