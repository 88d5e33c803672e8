/**
 * Ctrl-C for a benchmark process: the first SIGINT/SIGTERM aborts `signal`, so the bench stops what it started and
 * exits 130; a second one cleans up and exits at once. `cleanup` also runs when the process exits.
 *
 * One per process (a benchmark's main): `runBench` reads whether it fired.
 */
let fired = false;

export function installInterrupt(log: (line: string) => void, cleanup: () => void): AbortSignal {
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      cleanup();
      process.exit(130);
    }
    fired = true;
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
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      if (fired) {
        process.stderr.write(`${name}: interrupted; everything it started is stopped\n`);
        process.exitCode = 130;
        return;
      }
      process.stderr.write(`${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

/** For a bench that polls no AbortSignal (cert-reload, cert-scale): Ctrl-C exits 130 at once, `cleanup` runs on exit. */
export function exitOnInterrupt(cleanup: () => void): void {
  process.on('exit', cleanup);
  process.on('SIGINT', () => process.exit(130));
}
