/**
 * Session copies of the token's signing keys, so a sign does not pay for the
 * token re-reading its stored object.
 *
 * Why: a token object's C_SignInit is dear in SoftHSM2 (the embedded token):
 * before every use it checks the object's file for changes by another process
 * (open, lock, stat, read, close: about 19 syscalls per sign), which measured
 * 93 µs of CPU per ECDSA P-256 sign against 53 µs for the same key as a session
 * object. C_CopyObject with CKA_TOKEN false (PKCS#11 v2.40 §5.7) makes that
 * session object inside the token: the key material never leaves it, and the
 * copy keeps the original's CKA_SENSITIVE / CKA_EXTRACTABLE, which a copy may
 * not weaken (§4.9). It lives as long as the session that made it, which the
 * owner keeps open for the life of the signing workers, and PKCS#11 handles
 * belong to the process (§5.2), so every signing session can use it.
 *
 * Freshness: the token object stays the source of truth. Once per
 * `recheckMs` per key, `handleFor` reads the token object's CKA_SIGN (which
 * makes the token look at its store): a key deleted or no longer allowed to
 * sign drops its copy and is signed with the token's own handle again, whose
 * refusal (CKR_OBJECT_HANDLE_INVALID...) reaches the client and makes the key
 * store rescan as before. A token that refuses the copy (CKA_COPYABLE false,
 * CKR_ACTION_PROHIBITED, no room) is simply used directly; the copy is tried
 * again at the next recheck.
 *
 * Cost: one map lookup per sign. Bounded: at most one copy per key id the
 * token holds (a key id whose token handle changed replaces its copy).
 */
import pkcs11js from 'pkcs11js';
import type { TokenKey } from './keys.js';

interface Entry {
  /** The token object the copy was made from. */
  readonly tokenHandle: pkcs11js.Handle;
  /** The session copy, or undefined while the token refuses one. */
  copy: pkcs11js.Handle | undefined;
  /** performance.now() after which the token object is looked at again. */
  recheckAt: number;
}

const COPY_TEMPLATE: pkcs11js.Template = [{ type: pkcs11js.CKA_TOKEN, value: false }];

export class SessionKeys {
  readonly #pkcs11: pkcs11js.PKCS11;
  readonly #session: pkcs11js.Handle;
  readonly #recheckMs: number;
  readonly #entries = new Map<string, Entry>();

  /** `session` owns the copies (they end with it); the caller keeps it open while signing. */
  constructor(pkcs11: pkcs11js.PKCS11, session: pkcs11js.Handle, recheckMs = 1000) {
    this.#pkcs11 = pkcs11;
    this.#session = session;
    this.#recheckMs = recheckMs;
  }

  /** The handle to sign `key` with: its session copy when there is one, else the token object. */
  handleFor(key: TokenKey, now: number): pkcs11js.Handle {
    let entry = this.#entries.get(key.keyId);
    if (entry !== undefined && entry.tokenHandle !== key.privateHandle && !entry.tokenHandle.equals(key.privateHandle)) {
      // The key id now names another token object (deleted and imported again): its copy is stale.
      this.#drop(key.keyId, entry);
      entry = undefined;
    }
    if (entry === undefined) {
      entry = { tokenHandle: key.privateHandle, copy: this.#copy(key.privateHandle), recheckAt: now + this.#recheckMs };
      this.#entries.set(key.keyId, entry);
    } else if (now >= entry.recheckAt) {
      entry.recheckAt = now + this.#recheckMs;
      if (!this.#maySign(key.privateHandle)) {
        this.#drop(key.keyId, entry);
        return key.privateHandle;
      }
      entry.copy ??= this.#copy(key.privateHandle);
    }
    return entry.copy ?? key.privateHandle;
  }

  /** Destroys every copy (closing the owning session would too). */
  clear(): void {
    for (const [keyId, entry] of this.#entries) this.#drop(keyId, entry);
  }

  #copy(tokenHandle: pkcs11js.Handle): pkcs11js.Handle | undefined {
    try {
      return this.#pkcs11.C_CopyObject(this.#session, tokenHandle, COPY_TEMPLATE);
    } catch {
      // Not copyable here: sign with the token object, which is always correct.
      return undefined;
    }
  }

  #maySign(tokenHandle: pkcs11js.Handle): boolean {
    try {
      const [sign] = this.#pkcs11.C_GetAttributeValue(this.#session, tokenHandle, [{ type: pkcs11js.CKA_SIGN }]);
      return sign?.value instanceof Buffer && sign.value[0] === 1;
    } catch {
      return false;
    }
  }

  #drop(keyId: string, entry: Entry): void {
    this.#entries.delete(keyId);
    if (entry.copy === undefined) return;
    try {
      this.#pkcs11.C_DestroyObject(this.#session, entry.copy);
    } catch {
      // Already gone with its session.
    }
  }
}
