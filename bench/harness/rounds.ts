/**
 * Warm-up, then interleaved rounds: the measuring method for a noisy machine, where identical runs differ by 10-25% and
 * the noise drifts over minutes. Every scenario runs several short times, round r in an order rotated by r and reversed
 * on odd rounds, so drift hits all alike; a warm-up run of each comes first, discarded (JIT, connections, CPU frequency).
 * With `failSoft`, a run that throws or outlives its deadline costs that round of that scenario (recorded, its signal
 * aborted so it stops its client); only the caller's signal ends the rounds.
 */
import { setTimeout as delay } from 'node:timers/promises';

/** `round`: 0-based, -1 during warm-up. */
export type RunContext = { readonly phase: 'warmup' | 'measure'; readonly round: number; readonly signal: AbortSignal | undefined };
export type Scenario<R> = { readonly name: string; run(durationMs: number, context: RunContext): Promise<R> };

export interface RoundsOptions<R> {
  readonly rounds: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  readonly settleMs?: number; // Idle time between two runs, so one scenario's tail (drain, GC) does not land in the next one's window.
  readonly signal?: AbortSignal;
  /** Awaited before every run, warm-up included (e.g. to wait for a quiet machine). */
  readonly beforeRun?: (scenario: string, context: RunContext) => Promise<void>;
  /** Rounds after `rounds`, at most `max`, while `needed` says the results so far are not enough. */
  readonly extraRounds?: { readonly max: number; readonly needed: (results: ReadonlyMap<string, readonly R[]>) => boolean };
  readonly onRun?: (event: { scenario: string; context: RunContext; result: R }) => void;
  /** A failed run, or one overdue `deadlineMs` after its own duration, is recorded and skipped. */
  readonly failSoft?: { readonly deadlineMs: number; readonly onFailure?: (failure: RoundFailure) => void };
}

export type RoundFailure = { readonly scenario: string; readonly phase: RunContext['phase']; readonly round: number; readonly error: string };

/** `order`: the scenarios' order in each round; `results`: per scenario, one per round that did not fail. */
export async function runRounds<R>(scenarios: readonly Scenario<R>[], options: RoundsOptions<R>) {
  if (new Set(scenarios.map((s) => s.name)).size !== scenarios.length) throw new Error('scenario names must be unique');
  const { signal, failSoft } = options;
  const failures: RoundFailure[] = [];
  const runOnce = async (scenario: Scenario<R>, ms: number, context: RunContext): Promise<R | undefined> => {
    if (failSoft === undefined) return scenario.run(ms, context);
    const own = new AbortController();
    const limitMs = ms + failSoft.deadlineMs;
    const timer = setTimeout(() => own.abort(new Error(`no result within ${(limitMs / 1000).toFixed(0)} s: killed`)), limitMs);
    const run = scenario.run(ms, { ...context, signal: signal === undefined ? own.signal : AbortSignal.any([signal, own.signal]) });
    // A run stuck where no signal reaches it is left behind after its deadline and a grace period.
    const overdue = new Promise<never>((_, reject) =>
      own.signal.addEventListener('abort', () => setTimeout(() => reject(own.signal.reason), 15_000).unref(), { once: true }),
    );
    try {
      return await Promise.race([run, overdue]);
    } catch (err) {
      if (signal?.aborted) throw err;
      const failure = { scenario: scenario.name, phase: context.phase, round: context.round, error: (err as Error).message?.split('\n')[0] ?? String(err) };
      failures.push(failure);
      failSoft.onFailure?.(failure);
      return undefined;
    } finally {
      clearTimeout(timer);
      run.catch(() => undefined);
    }
  };
  const attempt = async (scenario: Scenario<R>, ms: number, phase: RunContext['phase'], round: number): Promise<R | undefined> => {
    signal?.throwIfAborted();
    const context = { phase, round, signal };
    await options.beforeRun?.(scenario.name, context);
    const result = await runOnce(scenario, ms, context);
    if (result !== undefined) options.onRun?.({ scenario: scenario.name, context, result });
    await sleep(options.settleMs ?? 0, signal);
    return result;
  };

  if (options.warmupMs > 0) for (const scenario of scenarios) await attempt(scenario, options.warmupMs, 'warmup', -1);
  const results = new Map<string, R[]>(scenarios.map((s) => [s.name, []]));
  const order: string[][] = [];
  for (let round = 0; round < options.rounds + (options.extraRounds?.max ?? 0); round++) {
    if (round >= options.rounds && !options.extraRounds!.needed(results)) break;
    const rotated = scenarios.map((_, i) => scenarios[(i + round) % scenarios.length]!);
    const thisRound = round % 2 === 1 ? rotated.reverse() : rotated;
    order.push(thisRound.map((s) => s.name));
    for (const scenario of thisRound) {
      const result = await attempt(scenario, options.measureMs, 'measure', round);
      if (result !== undefined) results.get(scenario.name)!.push(result);
    }
  }
  return { order, results, failures };
}

/** setTimeout as a promise that an AbortSignal cuts short, rejecting with the signal's reason. */
export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  delay(Math.max(0, ms), undefined, { signal }).catch((err) => Promise.reject(signal?.aborted ? signal.reason : err));
