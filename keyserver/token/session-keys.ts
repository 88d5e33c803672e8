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
 * `recheckMs` per key, `take` reads the token object's CKA_SIGN (which
 * makes the token look at its store): a key deleted or no longer allowed to
 * sign drops its copy and is signed with the token's own handle again, whose
 * refusal (CKR_OBJECT_HANDLE_INVALID...) reaches the client and makes the key
 * store rescan as before. A token that refuses the copy (CKA_COPYABLE false,
 * CKR_ACTION_PROHIBITED, no room) is simply used directly; the copy is tried
 * again at the next recheck.
 *
 * Holders: a sign takes its handle when it is asked for and may use it much
 * later (queued for a signing thread, or in a batch posted to one), so each
 * sign holds what it took (`take`) until it settles (`release`). A copy
 * dropped while signs hold it is destroyed by the last release, not at once:
 * destroyed under them, every such sign failed CKR_OBJECT_HANDLE_INVALID (the
 * client saw SIGN_FAILED and the key store rescanned the token), and on a
 * token that reuses handle numbers a later copy of another key could take the
 * number and sign their input. A sign that never comes back from the token
 * keeps its copy (a session object, gone with the session).
 *
 * Cost: one map lookup and a count per sign. Bounded: at most one copy per key
 * id the token holds (a key id whose token handle changed replaces its copy),
 * plus copies dropped and still held by signs in flight.
 */
import pkcs11js from 'pkcs11js';
import type { TokenKey } from './keys.js';

/** A handle to sign with, and the signs holding it (taken, not yet released). */
export class HeldKey {
  holders = 0;
  /** Dropped while held: the last release destroys it. */
  dropped = false;
  constructor(
    readonly handle: pkcs11js.Handle,
    /** A session copy (destroyed when dropped), not the token object. */
    readonly copied: boolean,
  ) {}
}

interface Entry {
  /** The token object the copy was made from, held as signed with when there is no copy. */
  readonly token: HeldKey;
  /** The session copy, or undefined while the token refuses one. */
  copy: HeldKey | undefined;
  /** performance.now() after which the token object is looked at again. */
  recheckAt: number;
}

const COPY_TEMPLATE: pkcs11js.Template = [{ type: pkcs11js.CKA_TOKEN, value: false }];

export class SessionKeys {
  readonly #pkcs11: pkcs11js.PKCS11;
  readonly #session: pkcs11js.Handle;
  readonly #recheckMs: number;
  readonly #entries = new Map<string, Entry>();
  /** Copies dropped while signs held them: destroyed by their last release, or by `clear()`. */
  readonly #draining = new Set<HeldKey>();

  /** `session` owns the copies (they end with it); the caller keeps it open while signing. */
  constructor(pkcs11: pkcs11js.PKCS11, session: pkcs11js.Handle, recheckMs = 1000) {
    this.#pkcs11 = pkcs11;
    this.#session = session;
    this.#recheckMs = recheckMs;
  }

  /**
   * The handle to sign `key` with (its session copy when there is one, else the token object), held until
   * `release()`: call it once the sign has settled, whatever its outcome.
   */
  take(key: TokenKey, now: number): HeldKey {
    const held = this.#handleFor(key, now);
    held.holders++;
    return held;
  }

  /** A sign done with what `take()` gave it; a dropped copy goes with its last holder. */
  release(held: HeldKey): void {
    if (--held.holders > 0 || !held.dropped) return;
    this.#draining.delete(held);
    this.#destroy(held);
  }

  /** Destroys every copy, held or not (closing the owning session would too): only once no sign is in flight. */
  clear(): void {
    for (const [keyId, entry] of this.#entries) this.#drop(keyId, entry);
    for (const held of this.#draining) {
      // A release after this (none is expected: the owner drains first) must not destroy the handle number again.
      held.dropped = false;
      this.#destroy(held);
    }
    this.#draining.clear();
  }

  #handleFor(key: TokenKey, now: number): HeldKey {
    let entry = this.#entries.get(key.keyId);
    const tokenHandle = entry?.token.handle;
    if (entry !== undefined && tokenHandle !== key.privateHandle && !tokenHandle!.equals(key.privateHandle)) {
      // The key id now names another token object (deleted and imported again): its copy is stale.
      this.#drop(key.keyId, entry);
      entry = undefined;
    }
    if (entry === undefined) {
      entry = { token: new HeldKey(key.privateHandle, false), copy: this.#copy(key.privateHandle), recheckAt: now + this.#recheckMs };
      this.#entries.set(key.keyId, entry);
    } else if (now >= entry.recheckAt) {
      entry.recheckAt = now + this.#recheckMs;
      if (!this.#maySign(key.privateHandle)) {
        this.#drop(key.keyId, entry);
        return entry.token;
      }
      entry.copy ??= this.#copy(key.privateHandle);
    }
    return entry.copy ?? entry.token;
  }

  #copy(tokenHandle: pkcs11js.Handle): HeldKey | undefined {
    try {
      return new HeldKey(this.#pkcs11.C_CopyObject(this.#session, tokenHandle, COPY_TEMPLATE), true);
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

  /** Forgets the key's entry; its copy is destroyed now if no sign holds it, else by the last release. */
  #drop(keyId: string, entry: Entry): void {
    this.#entries.delete(keyId);
    const copy = entry.copy;
    if (copy === undefined) return;
    entry.copy = undefined;
    copy.dropped = true;
    if (copy.holders > 0) this.#draining.add(copy);
    else this.#destroy(copy);
  }

  #destroy(held: HeldKey): void {
    if (!held.copied) return;
    try {
      this.#pkcs11.C_DestroyObject(this.#session, held.handle);
    } catch {
      // Already gone with its session.
    }
  }
}
