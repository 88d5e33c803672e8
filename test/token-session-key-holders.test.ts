/**
 * A key's session copy (keyserver/token/session-keys.ts) is not destroyed under the signs that took its handle: on a
 * real SoftHSM2 token with the real SigningWorkers, signs queued for the threads (and batches already posted to them)
 * carry the copy's handle; a recheck whose C_GetAttributeValue(CKA_SIGN) throws once drops the copy. Every one of
 * those signs must still sign, and verify: destroyed at once, they all failed CKR_OBJECT_HANDLE_INVALID (the client
 * sees SIGN_FAILED, and the key server rescans the token). The clock is moved past the recheck interval, so nothing
 * here waits on time.
 */
import { createHash, createPublicKey, verify } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { generateKey } from '../keyserver/token/key-generate.js';
import type { TokenKey } from '../keyserver/token/keys.js';
import { SessionKeys } from '../keyserver/token/session-keys.js';
import { type SigningLab, startSigningWorkers } from './helpers/signing-workers.js';

/** session-keys.ts's default, the one SigningWorkers uses. */
const RECHECK_MS = 1000;
/** Asked for in one turn of the loop: far past what the inline budget (2 ms of signing) takes. */
const SIGNS = 200;

let lab: SigningLab;
let env: SigningLab['env'];
let signers: SigningLab['signers'];
let rsa: TokenKey;
beforeAll(async () => {
  lab = await startSigningWorkers('session-key-holders-test', 600_000);
  ({ env, signers } = lab);
  rsa = generateKey(env.token, 'rsa-2048', 'holders-rsa');
}, 60_000);
afterAll(async () => {
  await lab?.close();
});

/** Whether a template asks for CKA_SIGN alone (the recheck's read). */
function readsSign(template: pkcs11js.Template): boolean {
  return template.length === 1 && template[0]?.type === pkcs11js.CKA_SIGN;
}

function sign(id: number): { signed: Buffer | Promise<Buffer>; message: string } {
  const message = `message ${id}`;
  const digest = createHash('sha256').update(message).digest();
  return { signed: signers.sign(rsa, { scheme: 'rsa-pkcs1', hash: 'sha256', digest }, Date.now() + 600_000), message };
}

it('signs queued and posted with a copy still sign after a recheck that threw drops it', async () => {
  const publicKey = createPublicKey({ key: rsa.spki, format: 'der', type: 'spki' });
  let offset = 0;
  const realNow = performance.now.bind(performance);
  const clock = vi.spyOn(performance, 'now').mockImplementation(() => realNow() + offset);
  const pkcs11 = env.token.pkcs11;
  const realGet = pkcs11.C_GetAttributeValue.bind(pkcs11);
  let faults = 0;
  const fault = vi.spyOn(pkcs11, 'C_GetAttributeValue').mockImplementation((session, object, template) => {
    if (faults > 0 && readsSign(template)) {
      faults--;
      // As SoftHSM2 answers a read of its object file while another process rewrites it.
      throw new Error('C_GetAttributeValue:6 CKR_FUNCTION_FAILED (injected)');
    }
    return realGet(session, object, template);
  });
  try {
    // The copy is made by the first sign; everything asked for in this turn takes its handle.
    const asked = Array.from({ length: SIGNS }, (_, i) => sign(i));
    const queued = asked.filter(({ signed }) => signed instanceof Promise).length;
    expect(queued, 'signs queued for the threads').toBeGreaterThan(SIGNS / 2);
    // A turn of the loop: the first batches are posted to the threads, the rest wait in the queue.
    await new Promise((resolve) => setImmediate(resolve));
    expect(signers.inFlight).toBeGreaterThan(0);
    // Past the recheck, whose read of CKA_SIGN throws once: the copy is dropped.
    offset += RECHECK_MS + 1;
    faults = 1;
    asked.push(sign(SIGNS));
    expect(faults, 'the recheck read CKA_SIGN').toBe(0);
    asked.push(sign(SIGNS + 1));
    const results = await Promise.allSettled(asked.map(({ signed }) => Promise.resolve(signed)));
    const failed = results.flatMap((r) => (r.status === 'rejected' ? [String((r.reason as Error).message)] : []));
    expect([...new Set(failed)], `${failed.length} of ${results.length} signs failed`).toEqual([]);
    const wrong = results.filter((r, i) => r.status === 'fulfilled' && !verify('sha256', Buffer.from(asked[i]!.message), publicKey, r.value)).length;
    expect(wrong, 'signatures that do not verify').toBe(0);
  } finally {
    fault.mockRestore();
    clock.mockRestore();
  }
}, 60_000);

it('a dropped copy is destroyed once the last sign holding it is released, not before', () => {
  const session = env.token.openSession();
  try {
    const key = generateKey(env.token, 'ec-p256', 'holders-ec');
    const keys = new SessionKeys(env.token.pkcs11, session, RECHECK_MS);
    const held = keys.take(key, 0);
    const copy = held.handle;
    expect(copy.equals(key.privateHandle)).toBe(false);
    // The key loses CKA_SIGN: the next recheck drops the copy, while `held` still signs with it.
    env.token.pkcs11.C_SetAttributeValue(env.token.management, key.privateHandle, [{ type: pkcs11js.CKA_SIGN, value: false }]);
    const after = keys.take(key, RECHECK_MS);
    expect(after.handle.equals(key.privateHandle)).toBe(true);
    keys.release(after);
    const signRaw = (handle: pkcs11js.Handle) => {
      env.token.pkcs11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
      return env.token.pkcs11.C_Sign(session, Buffer.alloc(32, 1), Buffer.alloc(64));
    };
    expect(signRaw(copy)).toHaveLength(64);
    keys.release(held);
    expect(() => signRaw(copy)).toThrow(/CKR_(OBJECT|KEY)_HANDLE_INVALID/);
    keys.clear();
  } finally {
    env.token.closeSession(session);
  }
});
