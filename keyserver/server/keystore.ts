/**
 * The signing keys the key server knows, by key id.
 *
 * Loaded from the token at start; a request for an unknown key id triggers a
 * rescan (at most one per `rescanIntervalMs`) so a key added with
 * `keyedge key generate|import` while the daemon runs is usable without a
 * restart, while a client asking for random ids cannot turn every request into
 * a token scan.
 *
 * A key the token no longer knows (a sign answered CKR_OBJECT_HANDLE_INVALID:
 * deleted, or deleted and imported again under a new handle) makes the store
 * stale: the next lookup of any id scans again, within the same interval.
 * Only unknown ids did before, so a deleted key stayed listed for ever (every
 * sign SIGN_FAILED, blamed on the token, the keys gauge unchanged), and a key
 * imported again was never signed with until a restart or SIGHUP. A scan that
 * finds keys gone logs which, and tells `onSuspect`, as does a scan that
 * fails: the whole token may have been replaced (live-token.ts).
 */
import type { Logger } from '../shared/log.js';
import { listKeys, type TokenKey } from '../token/keys.js';
import type { Token } from '../token/token.js';

export class KeyStore {
  #keys = new Map<string, TokenKey>();
  #lastScan = 0;
  /** A key's handle failed since the last scan: known ids are looked up again too. */
  #stale = false;
  /** Key objects already said to be skipped: said once, not at every scan. */
  readonly #skipped = new Set<string>();
  readonly #token: Token;
  readonly #log: Logger;
  readonly #rescanIntervalMs: number;
  readonly #onScan: (count: number) => void;
  readonly #onSuspect: (cause: string) => void;

  /** `onScan`: the count of keys each scan found. */
  constructor(token: Token, log: Logger, onScan: (count: number) => void = () => {}, rescanIntervalMs = 1000, onSuspect: (cause: string) => void = () => {}) {
    this.#token = token;
    this.#log = log;
    this.#onScan = onScan;
    this.#onSuspect = onSuspect;
    this.#rescanIntervalMs = rescanIntervalMs;
    this.rescan();
  }

  get size(): number {
    return this.#keys.size;
  }

  /** The key, rescanning the token once if it is unknown (or the store stale) and the last scan is old enough. */
  get(keyId: string): TokenKey | undefined {
    const key = this.#keys.get(keyId);
    if (key !== undefined && !this.#stale) return key;
    if (Date.now() - this.#lastScan < this.#rescanIntervalMs) return key;
    try {
      this.rescan();
    } catch (err) {
      // The token failed the scan: the keys known so far keep signing, this id is as it was, and the key
      // server carries on (a throw here would reach the connection's frame loop). Once per interval at most.
      this.#log.error({ err, keyId }, 'token scan failed; the keys already loaded stay in use');
      this.#onSuspect('token scan failed');
      return key;
    }
    return this.#keys.get(keyId);
  }

  /** Forgets what the token said: the next lookup, of any key id, scans again. */
  invalidate(): void {
    this.#lastScan = 0;
    this.#stale = true;
  }

  rescan(): void {
    // Stamped first: a scan that throws still counts, so a failing token is scanned once per interval, not per request.
    this.#lastScan = Date.now();
    const keys = new Map<string, TokenKey>();
    const skipped = (message: string): void => {
      if (this.#skipped.has(message)) return;
      this.#skipped.add(message);
      this.#log.warn(message);
    };
    for (const key of listKeys(this.#token, skipped)) keys.set(key.keyId, key);
    const added = [...keys.keys()].filter((id) => !this.#keys.has(id));
    const removed = [...this.#keys.values()].filter((key) => !keys.has(key.keyId));
    this.#keys = keys;
    this.#stale = false;
    this.#onScan(keys.size);
    if (added.length > 0) {
      this.#log.info({ keys: keys.size, added: added.map((id) => ({ keyId: id, label: keys.get(id)?.label })) }, 'token keys loaded');
    }
    if (removed.length > 0) {
      // Signs with them are UNKNOWN_KEY from now on.
      this.#log.warn({ keys: keys.size, removed: removed.map((key) => ({ keyId: key.keyId, label: key.label })) }, 'token keys no longer found');
      this.#onSuspect('token keys no longer found');
    }
  }
}
