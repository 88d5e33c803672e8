/**
 * Waiting for the machine to be quiet before a measurement.
 *
 * On a shared machine other workloads come and go; a window measured while
 * something else takes a core says little about the code under test. Between
 * runs our own processes are idle, so whatever CPU the machine spends then
 * belongs to someone else: sample it (250 ms) until it is below 0.25 cores.
 * One time budget covers the whole run, so a machine that stays busy costs a
 * bounded delay and still gets measured (the windows say so).
 */
import { machineCpu, procCpu, selfCpu, totalUs } from './proc-cpu.js';
import { sleep } from './rounds.js';

const QUIET_CORES = 0.25;
const SAMPLE_MS = 250;

/** One sample: cores used during `ms` by everything but this process and `ownPids`. */
async function otherLoad(ms: number, ownPids: readonly number[], signal: AbortSignal): Promise<number> {
  const cpuOf = (pid: number) => {
    try {
      return totalUs(procCpu(pid));
    } catch {
      return 0; // exited
    }
  };
  const own = () => totalUs(selfCpu()) + ownPids.reduce((sum, pid) => sum + cpuOf(pid), 0);
  const [m0, o0, t0] = [machineCpu(), own(), process.hrtime.bigint()];
  await sleep(ms, signal);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return Math.max(0, (machineCpu().busyUs - m0.busyUs - (own() - o0)) / 1e6 / seconds);
}

/**
 * The quiet wait before every measured run of a bench (runRounds' beforeRun): one budget of `budgetMs` for the
 * whole run (0: never wait), long waits logged, every wait kept for the result file (`record()`).
 */
export function quietBeforeRun(budgetMs: number, ownPids: readonly number[], signal: AbortSignal, log: (line: string) => void) {
  const waits: { scenario: string; round: number; waitedMs: number; otherCores: number; quiet: boolean }[] = [];
  let waitedMs = 0;
  return {
    beforeRun: async (scenario: string, context: { readonly phase: string; readonly round: number }): Promise<void> => {
      if (budgetMs <= 0 || context.phase !== 'measure') return;
      const started = Date.now();
      let other: number;
      let quiet: boolean;
      for (;;) {
        other = await otherLoad(SAMPLE_MS, ownPids, signal);
        quiet = other <= QUIET_CORES;
        if (quiet || Date.now() - started >= budgetMs - waitedMs) break;
      }
      const waited = Date.now() - started;
      waitedMs += waited;
      waits.push({ scenario, round: context.round, waitedMs: waited, otherCores: other, quiet });
      if (!quiet || waited > 300)
        log(`waited ${(waited / 1000).toFixed(1)} s for other load to drop: ${other.toFixed(2)} cores${quiet ? '' : ' (budget spent, measuring anyway)'}`);
    },
    record: () => ({ budgetMs, waitedMs, waits }),
  };
}
