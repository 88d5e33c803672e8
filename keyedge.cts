#!/usr/bin/env node
/**
 * The `keyedge` executable: a CommonJS entry (it is what package.json's `bin`
 * and every script run) that loads the ES-module CLI (keyedge.ts) and exits with its status.
 * The shebang makes it runnable as installed (`npm install -g` links it onto
 * PATH as is; tsc keeps a leading shebang in the output).
 *
 * A command that failed exits within a second even when something it started
 * (a listener, a cluster worker, a watcher) still holds the event loop: a
 * daemon that could not start must not stay up half-started.
 */
const FAILED_EXIT_MS = 1000;

void import('./keyedge.js').then(async ({ run }) => {
  const status = await run(process.argv.slice(2));
  process.exitCode = status;
  if (status !== 0) setTimeout(() => process.exit(status), FAILED_EXIT_MS).unref();
});
