import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import LongestFirst from './helpers/sequencer.js';

// Each test file runs in its own process: pkcs11js binds one PKCS#11 module per
// process and SoftHSM2 reads SOFTHSM2_CONF once, at C_Initialize.
export default defineConfig({
  root: fileURLToPath(new URL('..', import.meta.url)),
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // The keyless lab's token is made once per run (helpers/lab-token.ts): without this, inject() gives each lab
    // nothing and every lab makes its own, two CLI runs and an RSA key generation (3.6 s, 2.3 s of CPU) in each
    // of some sixty files.
    globalSetup: ['test/helpers/global-setup.ts'],
    // Three files at a time on CI's 2 cores (vitest's default is cores - 1:
    // one): most files wait on real servers, clients and timers rather than
    // compute (two at a time kept 1.8 files busy on average and took 805 s,
    // close to the 15-minute bound), and their timing assertions carry margins
    // for a loaded machine (load averages of 10 and more in the fuzz runs).
    maxWorkers: 3,
    // Longest files first, by the last CI run's times (helpers/sequencer.ts).
    sequence: { sequencer: LongestFirst },
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
