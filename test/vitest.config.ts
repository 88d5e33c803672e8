import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const root = fileURLToPath(new URL('..', import.meta.url));

// The files that take longest, with their seconds in CI's last whole run (3 workers on 2 cores). On a fresh clone
// vitest has no durations of its own and starts the largest files first, where these fall anywhere (proxy-scale, 53 s,
// is the 99th of 139 by size, cli-key the 71st): a long file started late is a tail the other workers do not share.
// Started first, they overlap the many short files, and the run ends with short ones. A file missing here only starts
// later; refresh the figures when a run's slowest files change.
const LONGEST: Readonly<Record<string, number>> = {
  'test/proxy-lifecycle.test.ts': 98,
  'test/abuse-slow.test.ts': 68,
  'test/fleet-etcd.test.ts': 62,
  'test/acme-faults.test.ts': 62,
  'test/fleet-acme.test.ts': 59,
  'test/acme-issue.test.ts': 58,
  'test/proxy-scale.test.ts': 53,
  'test/cli-cert.test.ts': 51,
  'test/keyserver-threads.test.ts': 41,
  'test/acme-on-demand.test.ts': 41,
  'test/acme-renew.test.ts': 38,
  'test/cli-key.test.ts': 35,
};

/** vitest's order (its recorded durations, else the largest files first), with the files in LONGEST ahead of it, longest first. */
class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const seconds = (file: TestSpecification): number => LONGEST[relative(root, file.moduleId).split('\\').join('/')] ?? 0;
    // Array.prototype.sort is stable: the files not listed keep vitest's order.
    return (await super.sort(files)).sort((a, b) => seconds(b) - seconds(a));
  }
}

// Each test file runs in its own process: pkcs11js binds one PKCS#11 module per
// process and SoftHSM2 reads SOFTHSM2_CONF once, at C_Initialize.
export default defineConfig({
  root,
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // Three files at a time on CI's 2 cores (vitest's default is cores - 1:
    // one): most files wait on real servers, clients and timers rather than
    // compute (two at a time kept 1.8 files busy on average and took 805 s,
    // close to the 15-minute bound), and their timing assertions carry margins
    // for a loaded machine (load averages of 10 and more in the fuzz runs).
    maxWorkers: 3,
    sequence: { sequencer: LongestFirst },
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
