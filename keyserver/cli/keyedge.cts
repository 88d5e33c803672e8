/**
 * The `keyedge` executable: a CommonJS entry (it is what package.json's `bin`
 * and every script run) that loads the ES-module CLI and exits with its status.
 */
void import('./main.js').then(async ({ run }) => {
  process.exitCode = await run(process.argv.slice(2));
});
