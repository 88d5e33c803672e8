/**
 * The `keyedge` command line run in the test process: keyedge.ts's own
 * dispatch (the command, its usage and failure reports, the exit status it
 * returns) with what it writes to stdout and stderr captured, as runCli gives
 * them from the built CLI, without a node start: a `keyedge cert` run's
 * module loading alone is 0.6 s of CPU.
 *
 * For a set-up step whose command line is not what the case tests, or a check
 * the file already makes once through the built CLI, repeated for another
 * action or entry. Not for what depends on the process being another one: its
 * pid (a store writer's side files are told apart by it), its exit, its
 * environment. One run at a time (it takes over process.stdout.write and
 * process.stderr.write while it runs).
 */
import { run } from '../../keyedge.js';

export async function runInProcess(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const capture =
    (into: string[]): typeof process.stdout.write =>
    (chunk: string | Uint8Array, ...rest: unknown[]) => {
      into.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      const done = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      done?.();
      return true;
    };
  const writeOut = process.stdout.write;
  const writeErr = process.stderr.write;
  process.stdout.write = capture(stdout);
  process.stderr.write = capture(stderr);
  try {
    const code = await run(args);
    return { code, stdout: stdout.join(''), stderr: stderr.join('') };
  } finally {
    process.stdout.write = writeOut;
    process.stderr.write = writeErr;
  }
}
