/**
 * The `keyedge` executable. CommonJS on purpose: it must size libuv's thread
 * pool before anything starts it, and an ES module entry has already read its
 * imports through that pool by the time its first line runs. Each async C_Sign
 * holds one pool thread, so the pool gets one thread per token session (from
 * the key server config's `pkcs11.sessions`), plus the four Node uses for
 * files and DNS.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

function configuredSessions(argv: readonly string[]): number {
  const flag = argv.indexOf('--config');
  const file = flag >= 0 ? argv[flag + 1] : undefined;
  if (file !== undefined) {
    try {
      const sessions = (JSON.parse(readFileSync(file, 'utf8')) as { pkcs11?: { sessions?: unknown } }).pkcs11?.sessions;
      if (typeof sessions === 'number' && Number.isInteger(sessions) && sessions > 0) return sessions;
    } catch {
      // The config loader reports a bad file properly; here the default will do.
    }
  }
  return Math.max(2, availableParallelism());
}

if (process.env.UV_THREADPOOL_SIZE === undefined && process.argv[2] === 'keyserver') {
  process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, configuredSessions(process.argv) + 4));
}

void import('./main.js').then(async ({ run }) => {
  process.exitCode = await run(process.argv.slice(2));
});
