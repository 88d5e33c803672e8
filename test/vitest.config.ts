import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Each test file runs in its own process: pkcs11js binds one PKCS#11 module per
// process and SoftHSM2 reads SOFTHSM2_CONF once, at C_Initialize.
export default defineConfig({
  root: fileURLToPath(new URL('..', import.meta.url)),
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // Two files at a time (vitest's default is cores - 1, one file on CI's 2
    // cores): most files wait on real servers and clients rather than compute,
    // and their timing assertions carry margins for a loaded machine.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
