/**
 * A load client run as its own process (ab, autocannon, h2load): pinned with taskset (which execs it, so the pid is
 * the client's and /proc gives its CPU), its output collected, its report parsed once it exits.
 *
 * Every wait is bounded: a client can crash mid-run (ab once died of `malloc(): invalid size`) or hang (ab against
 * nginx + p11-kit). `stop()` sends the client's report signal (ab: SIGINT) or none (autocannon and h2load run for a
 * fixed time), waits `graceMs` for it to exit, then SIGKILLs it; `done` then rejects, and harness/rounds.ts records
 * that round of that scenario as failed instead of ending the run.
 */
import { spawn } from 'node:child_process';

export interface ClientProcess<T> {
  readonly pid: number;
  readonly command: readonly string[];
  exited(): boolean;
  /** `signal` (if any), then SIGKILL after `graceMs`; resolves with the report or rejects saying why there is none. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<T>;
  /** SIGKILL now (cleanup). */
  kill(): void;
  /** The report once the client exited on its own or was stopped; rejects when it could not be parsed. */
  readonly done: Promise<T>;
}

/** What `parse` gets: stdout, stderr lines (the first 20 and their count), how the client exited. */
export interface ClientOutput {
  readonly stdout: string;
  readonly stderr: readonly string[];
  readonly stderrLines: number;
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
}

export function startClient<T>(
  name: string,
  command: readonly string[],
  cpus: string | undefined,
  parse: (out: ClientOutput) => T,
  env: NodeJS.ProcessEnv = process.env,
): ClientProcess<T> {
  const full = cpus === undefined ? [...command] : ['taskset', '-c', cpus, ...command];
  const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  const stderr: string[] = [];
  let stderrLines = 0;
  let killedAfterMs: number | undefined;
  child.stdout!.setEncoding('utf8').on('data', (t: string) => (stdout = (stdout + t).slice(-200_000)));
  child.stderr!.setEncoding('utf8').on('data', (t: string) => {
    for (const line of t.split('\n').filter(Boolean)) if (stderrLines++ < 20) stderr.push(line);
  });
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  const kill = () => {
    if (!exited()) child.kill('SIGKILL');
  };
  // 'close' once the pipes are drained; a grandchild holding them open does not hold us past 'exit' for long.
  const exit = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.once('exit', () => setTimeout(resolve, 1000).unref());
  });
  const done = new Promise<T>((resolve, reject) => {
    child.once('error', reject);
    void exit.then(() => {
      const how = child.signalCode ?? `status ${child.exitCode}`;
      const why = killedAfterMs === undefined ? `exited with ${how}` : `did not exit within ${killedAfterMs / 1000} s of being stopped: killed`;
      try {
        resolve(parse({ stdout, stderr, stderrLines, exitCode: child.exitCode, signal: child.signalCode }));
      } catch (err) {
        reject(new Error(`${name} ${why}: ${(err as Error).message}\n--- ${name} output ---\n${stdout.slice(-2000)}\n${stderr.join('\n')}`));
      }
    });
  });
  done.catch(() => undefined); // observed by whoever awaits it; never an unhandled rejection
  return {
    pid: child.pid ?? -1,
    command: full,
    exited,
    kill,
    done,
    async stop(signal, graceMs = 10_000) {
      if (!exited() && signal !== undefined) child.kill(signal);
      const timer = setTimeout(() => {
        if (exited()) return;
        killedAfterMs = graceMs;
        kill();
      }, graceMs);
      await exit;
      clearTimeout(timer);
      return done;
    },
  };
}

/** A parse step that refuses a client that did not exit cleanly (autocannon, h2load: status 0 or no report). */
export function exitedCleanly(out: ClientOutput): void {
  if (out.exitCode !== 0) throw new Error(`exit ${out.signal ?? `status ${out.exitCode}`}`);
}

/** A client's command line as a report shows it: taskset when pinned, spaced arguments quoted, per-run parts as placeholders. */
export function shownCommand(cpus: string | undefined, program: string, args: readonly string[], placeholders: readonly [RegExp, string][]): string {
  const line = [...(cpus === undefined ? [] : ['taskset', '-c', cpus]), program, ...args.map((a) => (a.includes(' ') ? `'${a}'` : a))].join(' ');
  return placeholders.reduce((text, [pattern, with_]) => text.replace(pattern, with_), line);
}
