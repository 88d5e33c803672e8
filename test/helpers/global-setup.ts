/**
 * The vitest run's global set-up (test/vitest.config.ts): a directory for the
 * keyless lab's token, made once per run and copied by each lab
 * (lab-token.ts), removed when the run ends. Node built-ins only: it runs in
 * vitest's own process, which must never load the PKCS#11 module.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

declare module 'vitest' {
  export interface ProvidedContext {
    /** An empty directory for this run's lab token. */
    keylessLabTemplate: string;
  }
}

export default function setup({ provide }: { provide: (key: 'keylessLabTemplate', value: string) => void }): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'keyedge-lab-template-'));
  provide('keylessLabTemplate', dir);
  return () => rmSync(dir, { recursive: true, force: true });
}
