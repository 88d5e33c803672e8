/**
 * The live token's reopen held by signs the token does not answer, once it
 * ends the process, with stand-ins for the token's parts: the moment between
 * the decision and the process's end (its log is flushed first) cannot be
 * stretched on a real key server. The real case (SoftHSM2, a C_Sign hung on a
 * signing thread, the process SIGKILLed) is in keyserver-threads.test.ts.
 *
 * Also the signers a reopen builds, on a real SoftHSM2 token that cannot open a session for every signing thread
 * (as a token at its session limit would): the build fails, and is retried about once a second for as long as it does.
 */
import { readdirSync } from 'node:fs';
import { expect, it } from 'vitest';
import { LiveToken, type TokenParts } from '../keyserver/server/live-token.js';
import { TokenError } from '../keyserver/shared/errors.js';
import { createLogger } from '../keyserver/shared/log.js';
import { findSoftHsmModule } from '../keyserver/token/embedded.js';
import { type InToken, SigningWorkers } from '../keyserver/token/sign-workers.js';
import type { Token } from '../keyserver/token/token.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { temporaryToken } from './helpers/token.js';

it('a reopen that ends the process for a hung sign tries nothing more while the process ends (no module initialised under the hung call)', async () => {
  // Typed: a field added to what the signers report must be given here too, or the stand-in reads as no stall at all.
  const hung: InToken = { signs: 1, threads: 1, longestMs: 5_000, longestSignMs: 5_000, longestStartMs: 0, calls: ['C_Sign'] };
  const parts = {
    token: { label: 'keyedge', isSame: () => false, close: () => {} },
    signers: { inToken: () => hung, drained: () => new Promise(() => {}), close: () => new Promise(() => {}) },
    keys: {},
  } as unknown as TokenParts;
  let opens = 0;
  let ends = 0;
  const lines: string[] = [];
  const log = createLogger('live-token-test', 'info', { write: (line: string) => void lines.push(line) });
  const open = (): TokenParts => {
    opens++;
    throw new Error('CKR_CRYPTOKI_ALREADY_INITIALIZED');
  };
  const live = new LiveToken(parts, open, log, () => {}, { afterMs: 1_000, end: () => void ends++ });
  live.suspect('a sign refused: CKR_DEVICE_REMOVED', true);
  await waitFor('the process ended', () => (ends > 0 ? true : undefined), 5_000);
  expect(lines.filter((line) => line.includes('have not come back past limits.tokenStallExitMs'))).toHaveLength(1);
  // Past the one-a-second retry of a token not open: before, it opened the module again under the hung call.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  expect(opens).toBe(0);
  expect(live.parts).toBeUndefined();
});

it('signers built on a token that cannot open a session for every signing thread: the build fails leaving no thread and no session behind', async () => {
  const env = temporaryToken('live-token-sessions');
  try {
    const threads = (): number => readdirSync('/proc/self/task').length;
    let calls = 0;
    let opened = 0;
    let closed = 0;
    // The token's 4th C_OpenSession of a build (the inline session's, then the threads') fails.
    const token = {
      pkcs11: env.token.pkcs11,
      maxSessions: env.token.maxSessions,
      openSession: () => {
        if (++calls === 4) throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', 'C_OpenSession failed: CKR_SESSION_COUNT');
        opened++;
        return env.token.openSession();
      },
      closeSession: (session: Buffer) => {
        closed++;
        env.token.closeSession(session);
      },
    } as unknown as Token;
    const log = createLogger('live-token-test', 'silent');
    const before = threads();
    for (let attempt = 0; attempt < 5; attempt++) {
      calls = 0;
      expect(() => new SigningWorkers(token, findSoftHsmModule(), 8, log, { stuckAfterMs: 60_000 })).toThrow(/CKR_SESSION_COUNT/);
    }
    expect({ opened, closed }).toEqual({ opened: 15, closed: 15 });
    // Before, the threads started before the failing session stayed, signing for nobody: two more per attempt.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(threads(), 'threads of the process').toBeLessThanOrEqual(before);
  } finally {
    env.cleanup();
  }
});
