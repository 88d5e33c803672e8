/**
 * The management sign (sign.ts `signDigest`, CSRs) on a real SoftHSM2 token whose C_Sign is once given a one-byte
 * signature buffer: SoftHSM2 answers CKR_BUFFER_TOO_SMALL and leaves the sign operation active (PKCS#11 v2.40 §5.2).
 * That sign fails; the session's next ones must not (they were CKR_OPERATION_ACTIVE at C_SignInit for good).
 */
import { createHash } from 'node:crypto';
import type pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { generateKey } from '../keyserver/token/key-generate.js';
import { signDigest } from '../keyserver/token/sign.js';
import { temporaryToken } from './helpers/token.js';

let env: ReturnType<typeof temporaryToken>;
beforeAll(() => {
  env = temporaryToken();
});
afterAll(() => env.cleanup());

it('a C_Sign that leaves its operation active fails that sign only: the next ones on the session sign', async () => {
  const key = generateKey(env.token, 'ec-p256', 'end-sign');
  const session = env.token.openSession();
  const real = env.token.pkcs11;
  let short = true;
  // The module as it is, but for the first C_Sign's room: one byte.
  const pkcs11 = new Proxy(real, {
    get(target, name) {
      if (name === 'C_SignAsync') {
        return (s: pkcs11js.Handle, data: Buffer, out: Buffer) => {
          const room = short ? out.subarray(0, 1) : out;
          short = false;
          return target.C_SignAsync(s, data, room);
        };
      }
      const value = Reflect.get(target, name, target) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const digest = createHash('sha256').update('end-sign').digest();
  const request = { scheme: 'ecdsa', hash: 'sha256', digest } as const;
  await expect(signDigest(pkcs11, session, key, request)).rejects.toThrow(/CKR_BUFFER_TOO_SMALL/);
  const after: string[] = [];
  for (let i = 0; i < 5; i++) {
    after.push(
      await signDigest(pkcs11, session, key, request).then(
        (signature) => `${signature.length} bytes`,
        (err: Error) => err.message.split('\n')[0]!,
      ),
    );
  }
  expect(after).toEqual(Array(5).fill('64 bytes'));
  env.token.closeSession(session);
});
