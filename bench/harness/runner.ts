/**
 * The declarative runner of the measuring benches (keyserver-sign, handshake,
 * keepalive): a bench is a `MeasuringBench` (its options, how to set up and
 * tear down its lab, its scenarios, its progress line, its report), and
 * `runMeasuring` does the rest the same way for all: parse the command line,
 * Ctrl-C and cleanup, warm-up and interleaved rounds behind the quiet-machine
 * wait (harness/bench.ts), the result JSON's common fields, `<date>-<name>`
 * (`-quick` under --quick: a quick run never overwrites the day's full
 * results) and the exit status.
 */
import { errorStatus, failSoft, type Log, type MeasureTiming, measureRounds, methodJson, publish, roundTag, stampedLog } from './bench.js';
import { describeMachine, type MachineInfo } from './machine.js';
import { installInterrupt, runBench } from './main.js';
import { dateStamp } from './report.js';
import type { RoundsOptions, RoundsResult, Scenario } from './rounds.js';

export interface RunnerOptions extends MeasureTiming {
  readonly quick: boolean;
  readonly out: string;
}

/** What the runner hands every step. */
export interface RunEnv {
  readonly log: Log;
  readonly signal: AbortSignal;
  readonly machine: MachineInfo;
  readonly started: number;
}

export type Measured<R> = RoundsResult<R> & {
  readonly quietWait: unknown;
  readonly method: (extra?: Record<string, unknown>) => ReturnType<typeof methodJson>;
};

/** One bench's result: its JSON fields (after benchmark, date, quick, machine), its Markdown, its error count. */
export interface BenchReport {
  readonly json: Record<string, unknown>;
  readonly markdown: string;
  /** Errors over the run: anything but 0 exits 1 ("N <what> failed during measurement"). */
  readonly errors: number;
  readonly what: string;
  /** Result file name instead of the bench's (--perf); no -quick suffix. */
  readonly file?: string;
  /** Exit status when the errors are 0 (e.g. a failed check). */
  readonly status?: number;
}

export interface MeasuringBench<O extends RunnerOptions, L, S extends Scenario<R>, R> {
  /** `benchmark` in the JSON and the result file's name. */
  readonly name: string;
  /** The options from argv; undefined after --help. */
  parse(argv: string[]): O | undefined;
  /** Makes and starts the lab; `hold` gives it to the runner as soon as it exists, for Ctrl-C. */
  setup(o: O, env: RunEnv, hold: (lab: L) => void): Promise<L>;
  scenarios(lab: L, o: O, env: RunEnv): Promise<S[]>;
  /** Our own processes (not "other load" for the quiet wait). */
  ownPids(lab: L): number[];
  /** The line logged before the rounds. */
  plan(o: O, scenarios: readonly S[]): string;
  /** The figures of one run in a progress line, after "round N <scenario>" padded to `pad`. */
  readonly pad: number;
  line(result: R, scenario: string, lab: L): string;
  /** Round options beyond the timing (failSoft is on unless `failSoft: false`). */
  rounds?(o: O, log: Log): Partial<Pick<RoundsOptions<R>, 'extraRounds' | 'rounds'>> & { readonly failSoft?: false };
  report(lab: L, o: O, scenarios: readonly S[], measured: Measured<R>, env: RunEnv & { readonly date: string }): Promise<BenchReport>;
  /** Stops everything (normal end and failures). */
  close(lab: L, o: O, log: Log): Promise<void>;
  /** Kills everything at once (Ctrl-C twice, process exit). */
  kill(lab: L, o: O): void;
}

export async function measuringMain<O extends RunnerOptions, L, S extends Scenario<R>, R>(bench: MeasuringBench<O, L, S, R>): Promise<number> {
  const o = bench.parse(process.argv.slice(2));
  if (o === undefined) return 0;
  const started = Date.now();
  const log = stampedLog(started);
  const machine = describeMachine();
  let lab: L | undefined;
  const signal = installInterrupt(log, () => lab !== undefined && bench.kill(lab, o));
  const env: RunEnv = { log, signal, machine, started };
  try {
    lab = await bench.setup(o, env, (l) => {
      lab = l;
    });
    signal.throwIfAborted();
    const scenarios = await bench.scenarios(lab, o, env);
    log(bench.plan(o, scenarios));
    const { failSoft: soft, ...more } = bench.rounds?.(o, log) ?? {};
    const result = await measureRounds(scenarios, o, bench.ownPids(lab), signal, log, {
      ...more,
      ...(soft === false ? {} : { failSoft: failSoft(log) }),
      onRun: ({ scenario, context, result: r }) => log(`${roundTag(context)}${scenario.padEnd(bench.pad)} ${bench.line(r, scenario, lab!)}`),
    });
    const measured = { ...result, method: (extra?: Record<string, unknown>) => methodJson(o, result.order, result.quietWait, extra) };
    const date = dateStamp();
    const r = await bench.report(lab, o, scenarios, measured, { ...env, date });
    const json = { benchmark: bench.name, date, quick: o.quick, machine, ...r.json, durationSeconds: (Date.now() - started) / 1000 };
    publish(o.out, r.file ?? (o.quick ? `${bench.name}-quick` : bench.name), json, r.markdown, date, log);
    const status = errorStatus(r.errors, r.what, log);
    return status === 0 ? (r.status ?? 0) : status;
  } finally {
    if (lab !== undefined) await bench.close(lab, o, log);
  }
}

/** Runs a measuring bench as this process's main (`preempt`: a run that replaces it, e.g. a relaunch). */
export function runMeasuring<O extends RunnerOptions, L, S extends Scenario<R>, R>(bench: MeasuringBench<O, L, S, R>, preempt?: Promise<number>): void {
  runBench(bench.name, preempt ?? measuringMain(bench));
}
