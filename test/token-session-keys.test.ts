/**
 * Session copies of token keys (keyserver/token/session-keys.ts) on a real
 * SoftHSM2 token: the copy signs as the key, keeps its protection, is never
 * listed as a key, and a key deleted from the token stops signing at the next
 * recheck. Times are passed in, so nothing here waits.
 */
import { createHash, createPublicKey, verify } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKey } from '../keyserver/token/key-generate.js';
import { listKeys, type TokenKey } from '../keyserver/token/keys.js';
import { SessionKeys } from '../keyserver/token/session-keys.js';
import { temporaryToken } from './helpers/token.js';

const RECHECK_MS = 1000;
let env: ReturnType<typeof temporaryToken>;
let session: pkcs11js.Handle;
beforeAll(() => {
  env = temporaryToken();
  session = env.token.openSession();
});
afterAll(() => env.cleanup());

function signRaw(handle: pkcs11js.Handle, digest: Buffer): Buffer {
  env.token.pkcs11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
  return env.token.pkcs11.C_Sign(session, digest, Buffer.alloc(64));
}

function verifies(key: TokenKey, message: Buffer, signature: Buffer): boolean {
  const publicKey = createPublicKey({ key: key.spki, format: 'der', type: 'spki' });
  return verify('sha256', message, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature);
}

/** The handle a sign takes, released at once, as an inline sign's is. */
function handleOf(keys: SessionKeys, key: TokenKey, now: number): pkcs11js.Handle {
  const held = keys.take(key, now);
  keys.release(held);
  return held.handle;
}

describe('session copies of token keys', () => {
  it('sign as the key, stay sensitive and non-extractable, and are not listed as keys', () => {
    const key = generateKey(env.token, 'ec-p256', 'copied');
    const keys = new SessionKeys(env.token.pkcs11, session, RECHECK_MS);
    const handle = handleOf(keys, key, 0);
    expect(handle.equals(key.privateHandle)).toBe(false);
    expect(handleOf(keys, key, 10).equals(handle)).toBe(true);
    const attrs = env.token.pkcs11.C_GetAttributeValue(session, handle, [
      { type: pkcs11js.CKA_TOKEN },
      { type: pkcs11js.CKA_SENSITIVE },
      { type: pkcs11js.CKA_EXTRACTABLE },
    ]);
    expect(attrs.map((a) => (a.value as Buffer)[0])).toEqual([0, 1, 0]);
    const message = Buffer.from('signed through the copy');
    expect(verifies(key, message, signRaw(handle, createHash('sha256').update(message).digest()))).toBe(true);
    const listed = listKeys(env.token).filter((k) => k.keyId === key.keyId);
    expect(listed).toHaveLength(1);
    expect(listed[0]!.privateHandle.equals(key.privateHandle)).toBe(true);
    keys.clear();
  });

  it('a key deleted from the token drops its copy at the next recheck, and signing is refused', () => {
    const key = generateKey(env.token, 'ec-p256', 'deleted');
    const keys = new SessionKeys(env.token.pkcs11, session, RECHECK_MS);
    const copy = handleOf(keys, key, 0);
    env.token.pkcs11.C_DestroyObject(env.token.management, key.privateHandle);
    // Until the recheck the copy still signs; from then on the token's handle is used, and refused.
    expect(handleOf(keys, key, RECHECK_MS - 1).equals(copy)).toBe(true);
    const handle = handleOf(keys, key, RECHECK_MS);
    expect(handle.equals(key.privateHandle)).toBe(true);
    expect(() => signRaw(handle, Buffer.alloc(32, 1))).toThrow(/CKR_(OBJECT|KEY)_HANDLE_INVALID/);
    expect(() => signRaw(copy, Buffer.alloc(32, 1))).toThrow(/CKR_(OBJECT|KEY)_HANDLE_INVALID/);
    expect(handleOf(keys, key, RECHECK_MS + 1).equals(key.privateHandle)).toBe(true);
  });

  it('a key id whose token object changed gets a fresh copy', () => {
    const key = generateKey(env.token, 'ec-p256', 'replaced');
    const keys = new SessionKeys(env.token.pkcs11, session, RECHECK_MS);
    const first = handleOf(keys, key, 0);
    const moved: TokenKey = { ...key, privateHandle: env.token.pkcs11.C_CopyObject(session, key.privateHandle, [{ type: pkcs11js.CKA_TOKEN, value: false }]) };
    const second = handleOf(keys, moved, 1);
    expect(second.equals(first)).toBe(false);
    expect(() => signRaw(first, Buffer.alloc(32, 1))).toThrow(/CKR_(OBJECT|KEY)_HANDLE_INVALID/);
    const message = Buffer.from('signed through the new copy');
    expect(verifies(key, message, signRaw(second, createHash('sha256').update(message).digest()))).toBe(true);
    keys.clear();
  });
});
