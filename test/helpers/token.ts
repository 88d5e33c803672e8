import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareEmbeddedToken, readPinFile } from '../../keyserver/token/embedded.js';
import { Token } from '../../keyserver/token/token.js';

/**
 * A fresh SoftHSM2 token in a temporary state directory, one per test file
 * (SoftHSM2 reads its configuration once per process). `cleanup()` closes the
 * token and removes the directory.
 */
export function temporaryToken(label = 'keyedge-test'): { stateDir: string; token: Token; cleanup(): void } {
  const stateDir = mkdtempSync(join(tmpdir(), 'keyedge-token-'));
  const embedded = prepareEmbeddedToken(stateDir, label);
  const token = Token.open({
    modulePath: embedded.modulePath,
    token: { label },
    pin: readPinFile(embedded.pinFile),
    pinSource: `file ${embedded.pinFile}`,
  });
  return {
    stateDir,
    token,
    cleanup() {
      token.close();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
