/**
 * The skeleton the measuring benches (keyserver-sign, handshake, keepalive) share around their own runs: a timestamped
 * log, warm-up and interleaved rounds behind a quiet-machine wait, the clean-round rule, the `method` block of the
 * result JSON, a skipped scenario's `summary` row, and writing the result files. What one run measures stays in each
 * bench.
 *
 * Clean rounds: a window during which other processes used more than CONTENDED_CORES counts as contended; a scenario's
 * medians use its clean rounds when at least 3 (or all) are clean, else all rounds (marked †).
 *
 * Quiet waits: on a shared machine other workloads come and go; a window measured while something else takes a core
 * says little about the code under test. Between runs our own processes are idle, so whatever CPU the machine spends
 * then belongs to someone else: sample it (250 ms) until it is below 0.25 cores. One time budget covers the whole run,
 * so a machine that stays busy costs a bounded delay and still gets measured (the windows say so).
 */
import { machineCpu, procCpu, selfCpu, totalUs } from './proc-cpu.js';
import { type Column, fmt, type WrittenReport, writeReport } from './report.js';
import { type RoundFailure, type RoundsOptions, type RoundsResult, type RunContext, runRounds, type Scenario, sleep } from './rounds.js';
import { median, type Spread, spread } from './stats.js';

/** A window during which other processes used more than this many cores counts as contended. */
export const CONTENDED_CORES = 0.25;
/** A process using at least this share of a core during a window counts as saturated. */
export const SATURATED_CORES = 0.9;

export type Log = (line: string) => void;

/** Lines to stderr, stamped with the seconds since `started`. */
export function stampedLog(started = Date.now()): Log {
  return (line) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
}

/** The clean rounds of one scenario and the rounds its medians use. */
export function cleanRounds<R>(all: readonly R[], otherCores: (r: R) => number): { used: R[]; usedRounds: number[]; cleanRounds: number } {
  const indexed = all.map((r, i) => ({ r, i }));
  const clean = indexed.filter(({ r }) => otherCores(r) <= CONTENDED_CORES);
  // Contended rounds are left out when enough clean ones remain; every round stays in the JSON.
  const used = clean.length >= Math.min(3, all.length) ? clean : indexed;
  return { used: used.map(({ r }) => r), usedRounds: used.map(({ i }) => i), cleanRounds: clean.length };
}

/** What every measuring bench's window holds besides its own figures. */
export interface CommonWindow {
  readonly clientCores: number;
  readonly serverSideCores: number;
  readonly machineBusyCores: number;
  readonly otherCores: number;
}

/**
 * One scenario over its rounds: `med`/`spreadOf` over the rounds the clean-round rule keeps, and the fields every
 * bench reports alike (cores, saturation, the rounds used, clean and failed, every round as measured).
 */
export function overRounds<R>(all: readonly R[], window: (r: R) => CommonWindow, serverCpuCount: number, failedRounds: number) {
  const { used, usedRounds, cleanRounds: clean } = cleanRounds(all, (r) => window(r).otherCores);
  const med = (f: (r: R) => number) => median(used.map(f));
  const w = (f: (x: CommonWindow) => number) => med((r) => f(window(r)));
  return {
    med,
    spreadOf: (f: (r: R) => number) => spread(used.map(f)),
    common: {
      clientCores: w((x) => x.clientCores),
      serverSideCores: w((x) => x.serverSideCores),
      /** The client used nearly its whole core: the rate is a lower bound of the server's. */
      clientSaturated: w((x) => x.clientCores) >= SATURATED_CORES,
      serverSaturated: w((x) => x.serverSideCores) >= SATURATED_CORES * serverCpuCount,
      machineBusyCores: w((x) => x.machineBusyCores),
      otherCores: w((x) => x.otherCores),
      cleanRounds: clean,
      usedRounds,
      failedRounds,
      perRound: all,
    },
  };
}

type Common = ReturnType<typeof overRounds>['common'];

/** A rate cell: "≥" when the client saturated, "†" when contended rounds were used. */
export const rateCell = (s: Common, rate: Spread): string =>
  `${s.clientSaturated ? '≥ ' : ''}${fmt(rate.median)}${s.usedRounds.length > s.cleanRounds ? ' †' : ''}`;

/** The columns every measuring bench's table ends with. */
export function roundColumns<T extends Common>(busyHeader: string): Column<T>[] {
  return [
    ['clean rounds', 'right', (s) => `${s.cleanRounds}/${s.perRound.length}${s.failedRounds > 0 ? `, ${s.failedRounds} failed` : ''}`],
    [busyHeader, 'right', (s) => `${fmt(s.machineBusyCores, 2)} / ${fmt(s.otherCores, 2)}`],
  ];
}

/** The reports' sentence on the clean-round rule. */
export const CLEAN_ROUNDS_NOTE = `Rounds are clean when other processes used ≤ ${CONTENDED_CORES} cores in the window; medians use the clean`;

/** "warm-up " or "round N ", for progress lines. */
export const roundTag = (context: Pick<RunContext, 'phase' | 'round'>): string => (context.phase === 'warmup' ? 'warm-up ' : `round ${context.round + 1} `);

export interface MeasureTiming {
  readonly rounds: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  readonly rampMs: number;
  readonly settleMs: number;
  /** Total time the run may wait for other load to go away (0: never wait). */
  readonly quietBudgetMs: number;
}

/** Warm-up and rounds, each measured run after a wait for a quiet machine (one budget per run; `ownPids` are ours). */
export async function measureRounds<R>(
  scenarios: readonly Scenario<R>[],
  timing: MeasureTiming,
  ownPids: readonly number[],
  signal: AbortSignal,
  log: Log,
  more: Pick<RoundsOptions<R>, 'extraRounds' | 'onRun' | 'failSoft'> & { readonly rounds?: number },
): Promise<RoundsResult<R> & { readonly quietWait: unknown }> {
  const quiet = quietBeforeRun(timing.quietBudgetMs, ownPids, signal, log);
  const result = await runRounds(scenarios, {
    ...more,
    rounds: more.rounds ?? timing.rounds,
    warmupMs: timing.warmupMs,
    measureMs: timing.measureMs,
    settleMs: timing.settleMs,
    signal,
    beforeRun: quiet.beforeRun,
  });
  return { ...result, quietWait: quiet.record() };
}

/** The result JSON's `method` block: the timing, the round order, the thresholds, the quiet waits. */
export function methodJson(timing: MeasureTiming, order: readonly (readonly string[])[], quietWait: unknown, extra: Record<string, unknown> = {}) {
  return {
    rounds: timing.rounds,
    measureMs: timing.measureMs,
    warmupMs: timing.warmupMs,
    rampMs: timing.rampMs,
    settleMs: timing.settleMs,
    order,
    contendedCores: CONTENDED_CORES,
    saturatedCores: SATURATED_CORES,
    quietWait,
    ...extra,
  };
}

/** failSoft for runRounds: a run with no result 60 s past its window (a crashed or hung client) costs that round, logged. */
export function failSoft(log: Log): NonNullable<RoundsOptions<unknown>['failSoft']> {
  return {
    deadlineMs: 60_000,
    onFailure: (f) => log(`${roundTag(f)}${f.scenario}: FAILED, round skipped: ${f.error}`),
  };
}

/** The report's lines on failed rounds: none when every run gave figures. */
export function failureLines(failures: readonly RoundFailure[]): string[] {
  if (failures.length === 0) return [];
  return ['', `Failed rounds (no figures; left out of the medians): ${failures.map((f) => `${f.scenario} ${roundTag(f).trim()}: ${f.error}`).join('; ')}.`];
}

/** Writes `<date>-<name>.{json,md}` into `out`, prints the Markdown, logs where. */
export function publish(out: string, name: string, json: unknown, markdown: string, date: string, log: Log): WrittenReport {
  const written = writeReport(out, name, json, markdown, date);
  process.stdout.write(`${markdown}\n`);
  log(`wrote ${written.jsonPath} and ${written.markdownPath}`);
  return written;
}

/** Exit status 1 (with a line saying why) when `errors` > 0. */
export function errorStatus(errors: number, what: string, log: Log): number {
  if (errors === 0) return 0;
  log(`${errors} ${what} failed during measurement: the figures are suspect`);
  return 1;
}

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
