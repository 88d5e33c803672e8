import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKey } from '../keyserver/token/key-generate.js';
import { findKey, listKeys, type TokenKey } from '../keyserver/token/keys.js';
import type { Token } from '../keyserver/token/token.js';
import { temporaryToken } from './helpers/token.js';

// A key destroyed by another process (a renewal retiring its old key through
// `keyedge key delete`) while `keyedge key list` or the key server's rescan is
// reading the token: SoftHSM2 hands out the handle in C_FindObjects, the object
// is gone by the time its attributes are read (CKR_OBJECT_HANDLE_INVALID). The
// interleaving is made exact here by destroying the key from a second session
// the moment C_FindObjects returns the chosen handle.
let env: ReturnType<typeof temporaryToken>;
let other: pkcs11js.Handle;
beforeAll(() => {
  env = temporaryToken();
  other = env.token.pkcs11.C_OpenSession(env.token.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
});
afterAll(() => env.cleanup());

const hex = (handle: pkcs11js.Handle): string => Buffer.from(handle).toString('hex');

/** The private key and every object sharing its CKA_ID (the public twin). */
function objectsOf(key: TokenKey): pkcs11js.Handle[] {
  const { pkcs11 } = env.token;
  const [id] = pkcs11.C_GetAttributeValue(other, key.privateHandle, [{ type: pkcs11js.CKA_ID }]);
  pkcs11.C_FindObjectsInit(other, [{ type: pkcs11js.CKA_ID, value: id?.value as Buffer }]);
  const handles = pkcs11.C_FindObjects(other, 64);
  pkcs11.C_FindObjectsFinal(other);
  return handles;
}

/**
 * The token as the listing sees it, except that the first time C_FindObjects
 * returns `trigger`, `victims` are destroyed (private key first, as
 * `keyedge key delete` does) before the listing reads anything.
 */
function racingToken(trigger: pkcs11js.Handle, victims: pkcs11js.Handle[]): Token {
  const real = env.token.pkcs11;
  let fired = false;
  const pkcs11 = new Proxy(real, {
    get(target, prop) {
      if (prop === 'C_FindObjects') {
        return (session: pkcs11js.Handle, max: number) => {
          const batch = target.C_FindObjects(session, max);
          if (!fired && batch.some((h) => hex(h) === hex(trigger))) {
            fired = true;
            for (const victim of victims) target.C_DestroyObject(other, victim);
          }
          return batch;
        };
      }
      const value = Reflect.get(target, prop) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { pkcs11, management: env.token.management, slot: env.token.slot, label: env.token.label } as unknown as Token;
}

describe('listing keys while another process destroys one', () => {
  it.each(['ec-p256', 'rsa-2048'] as const)('a %s key destroyed between C_FindObjects and its read is left out; the others are listed', (type) => {
    const keep = generateKey(env.token, 'ec-p256', `keep-before-${type}`);
    const victim = generateKey(env.token, type, `victim-${type}`);
    const keepToo = generateKey(env.token, 'rsa-2048', `keep-after-${type}`);
    const victims = objectsOf(victim);
    expect(victims).toHaveLength(2);
    const listed = listKeys(racingToken(victim.privateHandle, [victim.privateHandle, ...victims.filter((h) => hex(h) !== hex(victim.privateHandle))]));
    const ids = listed.map((k) => k.keyId);
    expect(ids).toEqual(expect.arrayContaining([keep.keyId, keepToo.keyId]));
    expect(ids).not.toContain(victim.keyId);
    expect(() => findKey(env.token, victim.keyId)).toThrow(/no key with label or key id/);
  });

  it('an EC key destroyed between finding its public twin and reading the twin is left out (no bare PKCS#11 error)', () => {
    const keep = generateKey(env.token, 'ec-p384', 'keep-twin');
    const victim = generateKey(env.token, 'ec-p256', 'victim-twin');
    const objects = objectsOf(victim);
    const twin = objects.find((h) => hex(h) !== hex(victim.privateHandle));
    expect(twin).toBeDefined();
    const listed = listKeys(racingToken(twin!, [victim.privateHandle, twin!]));
    const ids = listed.map((k) => k.keyId);
    expect(ids).toContain(keep.keyId);
    expect(ids).not.toContain(victim.keyId);
  });
});
