/**
 * Preloaded (`node --import`) into the process that serves, by threads.ts: V8's sampling heap profiler through an
 * in-process inspector session, with the objects that minor and major GCs collected kept in the profile, so the
 * profile is every sampled allocation of the window (what the scavenges of a handshake are made of), not only what is
 * still alive at its end. SIGUSR2 starts it, the next SIGUSR2 writes `<HEAP_SAMPLE_DIR>/<pid>.heapprofile`. Off
 * unless HEAP_SAMPLE_DIR is set (a cluster's primary listens too; threads.ts signals the worker). Cost: one stack
 * walk per sampled allocation (every HEAP_SAMPLE_INTERVAL bytes on average, 4 KiB unless set); the window is measured
 * apart from it.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.HEAP_SAMPLE_DIR;
if (dir !== undefined) {
  const session = new Session();
  session.connect();
  let on = false;
  process.on('SIGUSR2', () => {
    if (!on) {
      on = true;
      const params = {
        samplingInterval: Number(process.env.HEAP_SAMPLE_INTERVAL ?? 4096),
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      };
      session.post('HeapProfiler.startSampling', params as never);
      return;
    }
    on = false;
    session.post('HeapProfiler.stopSampling', (err, result) => {
      if (err === null) writeFileSync(join(dir, `${process.pid}.heapprofile`), JSON.stringify(result.profile));
      else process.stderr.write(`heap sampler: ${err.message}\n`);
    });
  });
}
