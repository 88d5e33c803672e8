/**
 * The pid of the in-memory comparison server's first worker (inmemory.ts), read
 * from the primary's `in-memory ready` log line: the profiling benches
 * (layers, threads, h2-threads) measure that worker, not the primary.
 */
import { readFileSync } from 'node:fs';
import { type ManagedProcess, waitFor } from '../harness/spawn.js';

export async function inMemoryWorkerPid(proc: ManagedProcess, timeoutMs = 600_000): Promise<number> {
  let pid: number | undefined;
  await waitFor(
    'in-memory ready',
    () => {
      const line = readFileSync(proc.logFile, 'utf8')
        .split('\n')
        .find((l) => l.includes('"in-memory ready"'));
      if (line !== undefined) pid = (JSON.parse(line.slice(line.indexOf('{'))) as { workers: number[] }).workers[0];
      return pid !== undefined;
    },
    timeoutMs,
    proc,
  );
  return pid!;
}
