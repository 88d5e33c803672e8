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
import { statSync } from 'node:fs';
import { join } from 'node:path';

const FAILED_EXIT_MS = 1000;

/**
 * The CLI as one bundle (dist/bundle/, `npm run bundle`) when it was built after the compiled modules it was made
 * from (config/bundle.mjs): a process loads a few files instead of some hundreds, and a proxy worker's imports
 * cost about half the CPU (README, "Layout"). A bundle older than dist/keyedge.js, or none (`tsc -p .` alone), is not used: the compiled
 * modules are the same code, slower to load.
 */
function entry(): string {
  const mtime = (file: string): number => statSync(join(__dirname, file), { throwIfNoEntry: false })?.mtimeMs ?? Number.NaN;
  return mtime('bundle/keyedge.js') >= mtime('keyedge.js') ? './bundle/keyedge.js' : './keyedge.js';
}

void (import(entry()) as Promise<typeof import('./keyedge.js')>).then(async ({ run }) => {
  const status = await run(process.argv.slice(2));
  process.exitCode = status;
  if (status !== 0) setTimeout(() => process.exit(status), FAILED_EXIT_MS).unref();
});
