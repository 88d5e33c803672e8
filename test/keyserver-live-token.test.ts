/**
 * The live token's reopen held by signs the token does not answer, once it
 * ends the process, with stand-ins for the token's parts: the moment between
 * the decision and the process's end (its log is flushed first) cannot be
 * stretched on a real key server. The real case (SoftHSM2, a C_Sign hung on a
 * signing thread, the process SIGKILLed) is in keyserver-threads.test.ts.
 */
import { expect, it } from 'vitest';
import { LiveToken, type TokenParts } from '../keyserver/server/live-token.js';
import { createLogger } from '../keyserver/shared/log.js';
import type { InToken } from '../keyserver/token/sign-workers.js';
import { waitFor } from './helpers/proxy-cluster.js';

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
