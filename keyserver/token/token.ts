/**
 * One logged-in PKCS#11 token.
 *
 * Lifecycle: `Token.open()` loads the module, initialises it with
 * CKF_OS_LOCKING_OK (the signing workers call it from their own threads, so the
 * module must do its own locking, PKCS#11 v2.40 §5.4), finds the token by label
 * or serial and logs the user in once; the login holds for every session of
 * this application (§5.5). `close()` finalises the module; the Token is unusable
 * afterwards.
 *
 * Concurrency: management calls (find, create, attributes) run on the caller's
 * thread through `management`, a session reserved for them; signing uses the
 * signing workers (sign-workers.ts), so a long key listing never holds up a handshake.
 * Every call made through the Token's module instance is marked for the watch
 * over the event loop (loop-watch.ts): one the token never answers holds it.
 *
 * After open, C_GetTokenInfo is called again only by `isSame()`, when
 * something already looks wrong, and nothing else should call it: SoftHSM2
 * reads its token file for it, and a read while another process rewrites the
 * file (every C_Login does) can leave the module failing that call and
 * serving a frozen object list to C_FindObjects until C_Finalize, so keys
 * added later would never be found (seen in a stress run: logins and key
 * creation by other processes next to a C_GetTokenInfo loop). `isSame()`
 * reads such a failure as a lost token; since a check also fails now and
 * then while another process logs in (and passes once it is done), its
 * caller confirms a failure over a second before it reopens the module,
 * which is also the cure for a failure that stays.
 *
 * pkcs11js binds one module instance per process: SoftHSM2 in particular reads
 * SOFTHSM2_CONF once, at C_Initialize. One Token per process.
 */
import pkcs11js from 'pkcs11js';
import { TokenError } from '../shared/errors.js';
import { markCalls } from './loop-watch.js';

export interface TokenSelector {
  readonly label?: string;
  readonly serial?: string;
}

export interface TokenOpenOptions {
  readonly modulePath: string;
  readonly token: TokenSelector;
  /** The user PIN. The caller reads it from an env var or a file; it is never logged or kept here. */
  readonly pin: string;
  /** Where the PIN came from, for error messages (e.g. "env KEYEDGE_TOKEN_PIN"). */
  readonly pinSource: string;
  /** Called with the token found, before the login; a throw aborts the open (a PIN it refused is not tried again). */
  readonly beforeLogin?: (token: { label: string; serial: string }) => void;
}

export class Token {
  readonly pkcs11: pkcs11js.PKCS11;
  readonly slot: pkcs11js.Handle;
  readonly label: string;
  readonly serial: string;
  readonly maxSessions: number;
  readonly management: pkcs11js.Handle;
  #closed = false;

  private constructor(pkcs11: pkcs11js.PKCS11, slot: pkcs11js.Handle, info: pkcs11js.TokenInfo, management: pkcs11js.Handle) {
    this.pkcs11 = pkcs11;
    this.slot = slot;
    this.label = fixedString(info.label);
    this.serial = fixedString(info.serialNumber);
    // 0 and CK_EFFECTIVELY_INFINITE both mean "no limit the token will tell".
    this.maxSessions = info.maxSessionCount > 0 && info.maxSessionCount < 0xffffffff ? info.maxSessionCount : Infinity;
    this.management = management;
  }

  /**
   * Opens the token, starting over (C_Finalize, C_Initialize) when the module
   * answers as it does to a token file read half-written (transientOpenFailure).
   * SoftHSM2 does that when it reads its token file while another process
   * rewrites it (every C_Login there rewrites it), and keeps failing until
   * it is initialised again; the other process's write takes milliseconds.
   */
  static open(options: TokenOpenOptions, attempts = OPEN_ATTEMPTS): Token {
    return openRetrying(() => Token.#openOnce(options), attempts);
  }

  static #openOnce(options: TokenOpenOptions): Token {
    const pkcs11 = loadModule(options.modulePath);
    try {
      const { slot, info } = findToken(pkcs11, options.token, options.modulePath);
      options.beforeLogin?.({ label: fixedString(info.label), serial: fixedString(info.serialNumber) });
      const management = tokenCall('C_OpenSession', () => pkcs11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
      login(pkcs11, management, fixedString(info.label), options.pinSource, options.pin);
      return new Token(pkcs11, slot, info, management);
    } catch (err) {
      finalize(pkcs11);
      throw err;
    }
  }

  /** Opens another session on this token; it shares the login (PKCS#11 §5.5). */
  openSession(): pkcs11js.Handle {
    this.#assertOpen();
    return tokenCall('C_OpenSession', () => this.pkcs11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION));
  }

  closeSession(session: pkcs11js.Handle): void {
    if (this.#closed) return;
    try {
      this.pkcs11.C_CloseSession(session);
    } catch {
      // A session the token already dropped needs no closing.
    }
  }

  /**
   * Whether the slot still holds the token opened here (same label and
   * serial). False when the module cannot say: a token deleted and created
   * again, even under the same label, is another token in another slot, and
   * SoftHSM2 fails the old slot's C_GetTokenInfo (CKR_GENERAL_ERROR).
   */
  isSame(): boolean {
    if (this.#closed) return false;
    try {
      const info = this.pkcs11.C_GetTokenInfo(this.slot);
      return fixedString(info.label) === this.label && fixedString(info.serialNumber) === this.serial;
    } catch {
      return false;
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    finalize(this.pkcs11);
  }

  #assertOpen(): void {
    if (this.#closed) throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', `token '${this.label}' is closed`);
  }
}

/**
 * PKCS#11 fixed-length text fields are blank-padded (v2.40 §3.2); some writers
 * pad with NULs instead, so both are stripped.
 */
export function fixedString(field: string): string {
  return field.replace(/[\s\0]+$/, '');
}

/** Wraps a PKCS#11 call so a failure carries the function and CKR name, never arguments. */
export function tokenCall<T>(fn: string, call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', `${fn} failed: ${ckrName(err)}`, { cause: err });
  }
}

/** The CKR_* name of a pkcs11js error, or its message for native errors. */
export function ckrName(err: unknown): string {
  if (err instanceof Error) return err.message.split('\n')[0] ?? err.name;
  return String(err);
}

function loadModule(modulePath: string): pkcs11js.PKCS11 {
  // Every call this thread makes into the module is seen by the watch over the event loop (a token may stop answering in any).
  const pkcs11 = markCalls(new pkcs11js.PKCS11());
  try {
    pkcs11.load(modulePath);
  } catch (err) {
    throw new TokenError('KEYEDGE_ERR_TOKEN_MODULE', `cannot load PKCS#11 module ${modulePath}: ${ckrName(err)} (check pkcs11.module in the config)`, {
      cause: err,
    });
  }
  try {
    pkcs11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    throw new TokenError('KEYEDGE_ERR_TOKEN_MODULE', `C_Initialize of ${modulePath} failed: ${ckrName(err)}`, {
      cause: err,
    });
  }
  return pkcs11;
}

/** Attempts at opening the token, and the pause between them, for a module that answers CKR_GENERAL_ERROR. */
const OPEN_ATTEMPTS = 5;
const OPEN_RETRY_PAUSE_MS = 100;

/** Runs `open` until it succeeds, fails otherwise than transiently, or has been tried OPEN_ATTEMPTS times. */
export function openRetrying<T>(open: () => T, attempts = OPEN_ATTEMPTS, pauseMs = OPEN_RETRY_PAUSE_MS): T {
  for (let attempt = 1; ; attempt++) {
    try {
      return open();
    } catch (err) {
      if (attempt >= attempts || !transientOpenFailure(err)) throw err;
      // Synchronous like the PKCS#11 calls around it: opening happens once, at start.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, pauseMs);
    }
  }
}

/**
 * CKR_GENERAL_ERROR from finding the token or logging in, no token at all when
 * the module was initialised on an empty token file, or CKR_USER_PIN_NOT_INITIALIZED
 * from a login on a file read half-written (the user PIN's blob not there
 * yet): what SoftHSM2 shows a process that reads the file as another rewrites
 * it. A token that really is not there, or really has no user PIN, costs the
 * attempts' pauses, then fails the same way.
 */
function transientOpenFailure(err: unknown): boolean {
  if (!(err instanceof TokenError)) return false;
  if (err.code === 'KEYEDGE_ERR_TOKEN_NOT_FOUND') return true;
  const code = (err.cause as { code?: unknown } | undefined)?.code;
  return code === pkcs11js.CKR_GENERAL_ERROR || (err.code === 'KEYEDGE_ERR_TOKEN_LOGIN' && code === pkcs11js.CKR_USER_PIN_NOT_INITIALIZED);
}

function findToken(pkcs11: pkcs11js.PKCS11, selector: TokenSelector, modulePath: string): { slot: pkcs11js.Handle; info: pkcs11js.TokenInfo } {
  const seen: string[] = [];
  for (const slot of tokenCall('C_GetSlotList', () => pkcs11.C_GetSlotList(true))) {
    const info = tokenCall('C_GetTokenInfo', () => pkcs11.C_GetTokenInfo(slot));
    if (!(info.flags & pkcs11js.CKF_TOKEN_INITIALIZED)) continue;
    const label = fixedString(info.label);
    const serial = fixedString(info.serialNumber);
    seen.push(`'${label}' (serial ${serial})`);
    if (selector.label !== undefined && label === selector.label) return { slot, info };
    if (selector.serial !== undefined && serial === selector.serial) return { slot, info };
  }
  const wanted = selector.label !== undefined ? `label '${selector.label}'` : `serial '${selector.serial ?? ''}'`;
  throw new TokenError(
    'KEYEDGE_ERR_TOKEN_NOT_FOUND',
    `no token with ${wanted} in ${modulePath}; tokens present: ${seen.length > 0 ? seen.join(', ') : 'none'}`,
  );
}

function login(pkcs11: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string, pinSource: string, pin: string): void {
  try {
    pkcs11.C_Login(session, pkcs11js.CKU_USER, pin);
  } catch (err) {
    const reason = ckrName(err);
    // Another application of this process already logged in: the login is shared.
    if (reason.startsWith('CKR_USER_ALREADY_LOGGED_IN')) return;
    throw new TokenError('KEYEDGE_ERR_TOKEN_LOGIN', `login to token '${label}' refused: ${reason} (the PIN comes from ${pinSource})`, { cause: err });
  }
}

function finalize(pkcs11: pkcs11js.PKCS11): void {
  try {
    pkcs11.C_Finalize();
  } catch {
    // Finalising a module that failed half-way has nothing left to release.
  }
  try {
    pkcs11.close();
  } catch {
    // As above.
  }
}
