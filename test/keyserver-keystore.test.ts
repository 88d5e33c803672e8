/**
 * The key store when the token fails a rescan: the lookup is an unknown key
 * (a throw would reach the connection's frame loop), and the rescan bound
 * holds: a request for an unknown key id scans the token at most once per
 * interval even when every scan throws (a client asking for random ids must
 * never turn each request into a token scan).
 */
import { describe, expect, it, vi } from 'vitest';

const listKeys = vi.fn();
vi.mock('../keyserver/token/keys.js', () => ({ listKeys: (...args: unknown[]) => listKeys(...args) }));

const { KeyStore } = await import('../keyserver/server/keystore.js');
const { createLogger } = await import('../keyserver/shared/log.js');

describe('KeyStore rescans', () => {
  it('a scan that throws is an unknown key, not a throw, and still counts: 100 lookups within the interval scan once', () => {
    listKeys.mockReturnValueOnce([]);
    const store = new KeyStore({} as never, createLogger('keystore-test', 'silent'), () => {}, 60_000);
    store.invalidate();
    listKeys.mockImplementation(() => {
      throw new Error('CKR_GENERAL_ERROR');
    });
    for (let i = 0; i < 100; i++) expect(store.get(`${i}`.padStart(64, '0'))).toBeUndefined();
    expect(listKeys).toHaveBeenCalledTimes(2);
  });
});
