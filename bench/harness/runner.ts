/**
 * The measuring benches' runner: a bench is a `MeasuringBench`; `runMeasuring` does the rest alike: command line,
 * Ctrl-C (the first stops what the run started, exit 130; a second kills at once), rounds (rounds.ts) behind the quiet
 * wait (between runs our processes idle, so busy CPU is someone else's: wait, within one budget per run, until it drops
 * below CONTENDED_CORES), `<date>-<name>[-quick]` results, exit status. Medians use the clean (uncontended) rounds when
 * at least 3 (or all) are clean, else all (marked †).
 */
import type { timing } from './cli.js';
import { perUnit, snapshot, usageBetween } from './proc-cpu.js';
import { type Column, dateStamp, describeMachine, fmt, type MachineInfo, writeReport } from './report.js';
import { type RoundFailure, type RoundsOptions, type RunContext, runRounds, type Scenario, sleep } from './rounds.js';
import { median, type Spread, spread } from './stats.js';

export const CONTENDED_CORES = 0.25;
/** A process using at least this share of a core in a window is saturated. */
const SATURATED_CORES = 0.9;

export type Log = (line: string) => void;

/** The clean rounds of one scenario and the rounds its medians use (every round stays in the JSON). */
export function cleanRounds<R>(all: readonly R[], otherCores: (r: R) => number) {
  const indexed = all.map((r, i) => ({ r, i }));
  const clean = indexed.filter(({ r }) => otherCores(r) <= CONTENDED_CORES);
  const used = clean.length >= Math.min(3, all.length) ? clean : indexed;
  return { used: used.map(({ r }) => r), usedRounds: used.map(({ i }) => i), cleanRounds: clean.length };
}

type CommonWindow = { readonly clientCores: number; readonly serverSideCores: number; readonly machineBusyCores: number; readonly otherCores: number };

/** One scenario over its rounds: `med`/`spreadOf` over the rounds the clean-round rule keeps, and the fields every bench reports alike. */
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

export const CLEAN_ROUNDS_NOTE = `Rounds are clean when other processes used ≤ ${CONTENDED_CORES} cores in the window; medians use the clean`;

const roundTag = (context: Pick<RunContext, 'phase' | 'round'>): string => (context.phase === 'warmup' ? 'warm-up ' : `round ${context.round + 1} `);

/** The report's lines on failed rounds: none when every run gave figures. */
export function failureLines(failures: readonly RoundFailure[]): string[] {
  if (failures.length === 0) return [];
  return ['', `Failed rounds (no figures; left out of the medians): ${failures.map((f) => `${f.scenario} ${roundTag(f).trim()}: ${f.error}`).join('; ')}.`];
}

export function publish(out: string, name: string, json: unknown, markdown: string, date: string, log: Log): void {
  const written = writeReport(out, name, json, markdown, date);
  process.stdout.write(`${markdown}\n`);
  log(`wrote ${written.jsonPath} and ${written.markdownPath}`);
}

/** runRounds' beforeRun: the quiet wait (`budgetMs` for the whole run, 0: never), every wait kept for the result file. */
function quietBeforeRun(budgetMs: number, ownPids: readonly number[], signal: AbortSignal, log: Log) {
  const own = [{ name: 'own', roots: () => ownPids }];
  const waits: { scenario: string; round: number; waitedMs: number; otherCores: number; quiet: boolean }[] = [];
  let waitedMs = 0;
  const beforeRun = async (scenario: string, context: RunContext): Promise<void> => {
    if (budgetMs <= 0 || context.phase !== 'measure') return;
    const started = Date.now();
    let other: number;
    do {
      const before = snapshot(own);
      await sleep(250, signal);
      other = perUnit(usageBetween(before, snapshot(own)), 0).otherCores;
    } while (other > CONTENDED_CORES && Date.now() - started < budgetMs - waitedMs);
    const [waited, quiet] = [Date.now() - started, other <= CONTENDED_CORES];
    waitedMs += waited;
    waits.push({ scenario, round: context.round, waitedMs: waited, otherCores: other, quiet });
    if (!quiet || waited > 300)
      log(`waited ${(waited / 1000).toFixed(1)} s for other load to drop: ${other.toFixed(2)} cores${quiet ? '' : ' (budget spent, measuring anyway)'}`);
  };
  return { beforeRun, record: () => ({ budgetMs, waitedMs, waits }) };
}

let interrupted = false;

/** Ctrl-C for a benchmark process (one per process): see the header; `runBench` reads whether it fired. */
function installInterrupt(log: Log, cleanup: () => void): AbortSignal {
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
      cleanup();
      process.exit(130);
    }
    interrupted = true;
    log(`${signal}: stopping (again to force)`);
    abort.abort(new Error(`interrupted by ${signal}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', cleanup);
  return abort.signal;
}

/** Sets the exit status from a benchmark's main: its own, 130 when interrupted, 1 (stack on stderr) on a failure. */
export function runBench(name: string, main: Promise<number>): void {
  main.then(
    (code) => void (process.exitCode = code),
    (err: unknown) => {
      const why = interrupted ? 'interrupted; everything it started is stopped' : err instanceof Error ? (err.stack ?? err.message) : String(err);
      process.stderr.write(`${name}: ${why}\n`);
      process.exitCode = interrupted ? 130 : 1;
    },
  );
}

/** For a bench that polls no AbortSignal (cert-reload, cert-scale): Ctrl-C exits 130 at once, `cleanup` runs on exit. */
export function exitOnInterrupt(cleanup: () => void): void {
  process.on('exit', cleanup);
  process.on('SIGINT', () => process.exit(130));
}

type RunnerOptions = ReturnType<typeof timing>;
type RunEnv = { readonly log: Log; readonly signal: AbortSignal; readonly machine: MachineInfo; readonly started: number };
type Measured<R> = Awaited<ReturnType<typeof runRounds<R>>> & { quietWait: unknown; method: (extra?: Record<string, unknown>) => Record<string, unknown> };

/** A bench's JSON fields and Markdown; `errors` > 0 exits 1 (naming `what` failed); `status`: the exit status otherwise. */
type BenchReport = { json: Record<string, unknown>; markdown: string; errors: number; what: string; status?: number };

export interface MeasuringBench<O extends RunnerOptions, L, S extends Scenario<R>, R> {
  readonly name: string;
  parse(argv: string[]): O | undefined; // undefined after --help
  setup(o: O, env: RunEnv, hold: (lab: L) => void): Promise<L>; // `hold`: the lab to the runner as soon as it exists, for Ctrl-C
  scenarios(lab: L, o: O, env: RunEnv): Promise<S[]>;
  ownPids(lab: L): number[]; // not "other load" for the quiet wait
  plan(o: O, scenarios: readonly S[]): string;
  readonly pad: number; // a progress line: "round N <scenario padded to pad> <line(result)>"
  line(result: R, scenario: string, lab: L): string;
  /** Round options beyond the timing (failSoft is on unless `failSoft: false`). */
  rounds?(o: O, log: Log): Partial<Pick<RoundsOptions<R>, 'extraRounds' | 'rounds'>> & { readonly failSoft?: false };
  /** `measured.method()`: the result JSON's `method` block (timing, round order, thresholds, quiet waits). */
  report(lab: L, o: O, scenarios: readonly S[], measured: Measured<R>, env: RunEnv & { readonly date: string }): Promise<BenchReport>;
  close(lab: L, o: O, log: Log): Promise<void>;
  kill(lab: L, o: O): void; // everything at once (Ctrl-C twice, process exit)
}

async function measuringMain<O extends RunnerOptions, L, S extends Scenario<R>, R>(bench: MeasuringBench<O, L, S, R>): Promise<number> {
  const o = bench.parse(process.argv.slice(2));
  if (o === undefined) return 0;
  const started = Date.now();
  const log: Log = (line) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const machine = describeMachine();
  let lab: L | undefined;
  const signal = installInterrupt(log, () => lab !== undefined && bench.kill(lab, o));
  const env: RunEnv = { log, signal, machine, started };
  try {
    lab = await bench.setup(o, env, (held) => void (lab = held));
    signal.throwIfAborted();
    const scenarios = await bench.scenarios(lab, o, env);
    log(bench.plan(o, scenarios));
    const { failSoft, rounds, ...more } = bench.rounds?.(o, log) ?? {};
    const quiet = quietBeforeRun(o.quietBudgetMs, bench.ownPids(lab), signal, log);
    // A run with no result 60 s past its window (a crashed or hung client) costs that round, logged.
    const onFailure = (f: RoundFailure) => log(`${roundTag(f)}${f.scenario}: FAILED, round skipped: ${f.error}`);
    const soft = failSoft === false ? {} : { failSoft: { deadlineMs: 60_000, onFailure } };
    const onRun = ({ scenario, context, result: r }: { scenario: string; context: RunContext; result: R }) =>
      log(`${roundTag(context)}${scenario.padEnd(bench.pad)} ${bench.line(r, scenario, lab!)}`);
    const { rounds: n, measureMs, warmupMs, rampMs, settleMs } = o;
    const windows = { rounds: rounds ?? n, warmupMs, measureMs, settleMs, signal };
    const result = await runRounds(scenarios, { ...more, ...soft, ...windows, beforeRun: quiet.beforeRun, onRun });
    const quietWait = quiet.record();
    const thresholds = { contendedCores: CONTENDED_CORES, saturatedCores: SATURATED_CORES };
    const method = (extra = {}) => ({ rounds: n, measureMs, warmupMs, rampMs, settleMs, order: result.order, ...thresholds, quietWait, ...extra });
    const date = dateStamp();
    const r = await bench.report(lab, o, scenarios, { ...result, quietWait, method }, { ...env, date });
    const json = { benchmark: bench.name, date, quick: o.quick, machine, ...r.json, durationSeconds: (Date.now() - started) / 1000 };
    publish(o.out, o.quick ? `${bench.name}-quick` : bench.name, json, r.markdown, date, log);
    if (r.errors === 0) return r.status ?? 0;
    log(`${r.errors} ${r.what} failed during measurement: the figures are suspect`);
    return 1;
  } finally {
    if (lab !== undefined) await bench.close(lab, o, log);
  }
}

/** Runs a measuring bench as this process's main (`preempt`: a run that replaces it, e.g. a relaunch). */
export const runMeasuring = <O extends RunnerOptions, L, S extends Scenario<R>, R>(bench: MeasuringBench<O, L, S, R>, preempt?: Promise<number>): void =>
  runBench(bench.name, preempt ?? measuringMain(bench));
