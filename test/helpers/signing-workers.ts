/**
 * A temporary SoftHSM2 token with the real SigningWorkers on it, both
 * threads up: for in-process tests of the sign path (what a sign keeps,
 * what goes to a thread). Keys are generated on `lab.env.token` after it.
 */
import { createLogger } from '../../keyserver/shared/log.js';
import { findSoftHsmModule } from '../../keyserver/token/embedded.js';
import { SigningWorkers } from '../../keyserver/token/sign-workers.js';
import { temporaryToken } from './token.js';

export interface SigningLab {
  readonly env: ReturnType<typeof temporaryToken>;
  readonly signers: SigningWorkers;
  close(): Promise<void>;
}

/** `stuckAfterMs`: past any test's own waits, so no thread is ever taken for stuck. */
export async function startSigningWorkers(label: string, stuckAfterMs: number): Promise<SigningLab> {
  const env = temporaryToken();
  const signers = new SigningWorkers(env.token, findSoftHsmModule(), 2, createLogger(label, 'silent'), { stuckAfterMs });
  await signers.ready();
  if (signers.threadsUp !== 2) {
    await signers.close();
    env.cleanup();
    throw new Error(`${signers.threadsUp} of 2 signing threads up`);
  }
  return {
    env,
    signers,
    close: async () => {
      await signers.close();
      env.cleanup();
    },
  };
}
