/**
 * Waiting for the machine to be quiet before a measurement.
 *
 * On a shared machine other workloads come and go; a window measured while
 * something else takes a core says little about the code under test. Between
 * runs our own processes are idle, so whatever CPU the machine spends then
 * belongs to someone else. `waitForQuiet` samples that and returns once it is
 * below a threshold, or when its time budget is spent (it never waits forever:
 * a persistently busy machine still gets measured, and the windows say so).
 */
import { machineCpu, procCpu, selfCpu, totalUs } from './proc-cpu.js';
import { sleep } from './rounds.js';

export interface QuietOptions {
  /** Other load (cores) at or below which the machine counts as quiet. */
  readonly maxOtherCores: number;
  /** Length of one sample. */
  readonly sampleMs: number;
  /** Give up after this long (the budget may be shared by many calls, see QuietGate). */
  readonly maxWaitMs: number;
  /** Processes of ours besides this one whose CPU is not "other" (e.g. the key server). */
  readonly ownPids?: readonly number[];
  readonly signal?: AbortSignal;
}

export interface QuietResult {
  readonly waitedMs: number;
  /** Other load in the last sample, in cores. */
  readonly otherCores: number;
  readonly quiet: boolean;
}

/** One sample: cores used during `ms` by everything but this process and `ownPids`. */
export async function otherLoad(ms: number, ownPids: readonly number[] = [], signal?: AbortSignal): Promise<number> {
  const own = () => totalUs(selfCpu()) + ownPids.reduce((sum, pid) => sum + safeProcCpu(pid), 0);
  const m0 = machineCpu();
  const o0 = own();
  const t0 = process.hrtime.bigint();
  await sleep(ms, signal);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const busy = machineCpu().busyUs - m0.busyUs;
  return Math.max(0, (busy - (own() - o0)) / 1e6 / seconds);
}

function safeProcCpu(pid: number): number {
  try {
    return totalUs(procCpu(pid));
  } catch {
    return 0; // exited
  }
}

export async function waitForQuiet(options: QuietOptions): Promise<QuietResult> {
  const started = Date.now();
  for (;;) {
    const other = await otherLoad(options.sampleMs, options.ownPids, options.signal);
    const waitedMs = Date.now() - started;
    if (other <= options.maxOtherCores) return { waitedMs, otherCores: other, quiet: true };
    if (waitedMs >= options.maxWaitMs) return { waitedMs, otherCores: other, quiet: false };
  }
}

/**
 * waitForQuiet with one time budget for a whole benchmark, so a machine that
 * stays busy costs a bounded delay, not one per run.
 */
export class QuietGate {
  #budgetMs: number;
  #waitedMs = 0;

  constructor(
    readonly options: Omit<QuietOptions, 'maxWaitMs'>,
    budgetMs: number,
  ) {
    this.#budgetMs = budgetMs;
  }

  /** Total time spent waiting so far. */
  get waitedMs(): number {
    return this.#waitedMs;
  }

  async wait(): Promise<QuietResult> {
    const result = await waitForQuiet({ ...this.options, maxWaitMs: Math.max(0, this.#budgetMs) });
    this.#budgetMs -= result.waitedMs;
    this.#waitedMs += result.waitedMs;
    return result;
  }
}

/**
 * The quiet wait before every measured run of a bench (runRounds' beforeRun): one budget of `budgetMs` for the
 * whole run (0: never wait), long waits logged, every wait kept for the result file (`record()`).
 */
export function quietBeforeRun(
  budgetMs: number,
  ownPids: readonly number[],
  signal: AbortSignal,
  log: (line: string) => void,
): {
  readonly beforeRun: (scenario: string, context: { readonly phase: string; readonly round: number }) => Promise<void>;
  readonly record: () => { budgetMs: number; waitedMs: number; waits: unknown[] };
} {
  const gate = budgetMs > 0 ? new QuietGate({ maxOtherCores: 0.25, sampleMs: 250, ownPids, signal }, budgetMs) : undefined;
  const waits: { scenario: string; round: number; waitedMs: number; otherCores: number; quiet: boolean }[] = [];
  return {
    beforeRun: async (scenario, context) => {
      if (gate === undefined || context.phase !== 'measure') return;
      const q = await gate.wait();
      waits.push({ scenario, round: context.round, ...q });
      if (!q.quiet || q.waitedMs > 300)
        log(
          `waited ${(q.waitedMs / 1000).toFixed(1)} s for other load to drop: ${q.otherCores.toFixed(2)} cores${q.quiet ? '' : ' (budget spent, measuring anyway)'}`,
        );
    },
    record: () => ({ budgetMs, waitedMs: gate?.waitedMs ?? 0, waits }),
  };
}
