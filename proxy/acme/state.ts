/**
 * What the issuer remembers across restarts: the account (the key id of its
 * key in the token and its URL at the CA, never key material), each managed
 * certificate's names, key and retry state, and the retired keys waiting for
 * their grace period to end before they are deleted.
 *
 * Two homes behind one seam (`IssuerStateStore`): `<stateDir>/acme/state.json`
 * for one node (mode 0600, written whole and renamed into place; this file),
 * or the fleet's etcd prefix when `etcd` is configured (shared-state.ts).
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeAtomic } from '../certs/store-files.js';
import type { HeldLock } from '../store/lock.js';

export interface AccountState {
  readonly directory: string;
  readonly keyId: string;
  readonly url: string;
}

export interface ManagedState {
  domains: string[];
  keyId: string;
  /** Consecutive failed attempts; 0 after a success. */
  failures: number;
  /** No attempt before this (ISO time): the backoff after a failure, or the CA's Retry-After. */
  notBefore?: string | undefined;
  lastError?: { code: string; problem?: string | undefined; message: string; at: string } | undefined;
  lastIssuedAt?: string | undefined;
  /** Made by an on-demand handshake: until its first certificate, a failed order is retried only through the on-demand gate. */
  onDemand?: true | undefined;
  /**
   * The renewal time chosen inside the CA's ARI window (RFC 9773 §4.2), with the window's certificate serial, when it was
   * asked and when to ask again (the answer's Retry-After, §4.3; absent: ARI_RECHECK_MS after checkedAt, maintain.ts).
   */
  ari?: { serial: string; at: string; checkedAt: string; recheckAt?: string | undefined } | undefined;
}

/** An on-demand entry whose first order failed: only its next handshake, through the on-demand gate and its limits, orders it again. */
export function waitsForTheGate(managed: ManagedState): boolean {
  return managed.onDemand === true && managed.lastIssuedAt === undefined && managed.failures > 0;
}

/**
 * Such an entry whose backoff after its last failure (`notBefore`: retryMin × 2^(failures−1), never before the CA's
 * Retry-After) is not over at `now`: its handshakes order nothing until it is.
 */
export function backingOff(managed: ManagedState, now: number): boolean {
  return waitsForTheGate(managed) && managed.notBefore !== undefined && Date.parse(managed.notBefore) > now;
}

export interface IssuerState {
  account?: AccountState | undefined;
  certificates: Record<string, ManagedState>;
  retiredKeys: { keyId: string; deleteAfter: string }[];
}

/**
 * The issuer's state and how it is kept. Callers change `state` in place and
 * then `save()`; the fleet's store writes asynchronously (a caller that must
 * know it landed awaits it), the file synchronously. A caller working under
 * an issuance lock passes it: the fleet's store then writes only while the
 * lock is held (shared-state.ts); one node alone has none.
 */
export interface IssuerStateStore {
  readonly state: IssuerState;
  save(lock?: HeldLock): void | Promise<void>;
  /**
   * Drops the managed entries `names` and writes that (the fleet's store:
   * deletes their keys, only while `lock` is held, and an entry whose delete
   * failed or was refused stays, to be tried again). Resolves with the names
   * dropped.
   */
  forget(names: readonly string[], lock?: HeldLock): string[] | Promise<string[]>;
  /** Brings `state` up to what the other nodes wrote (the fleet); nothing for a file. */
  refresh?(): void;
}

export class StateFile implements IssuerStateStore {
  readonly #dir: string;
  readonly #file: string;
  state: IssuerState;

  constructor(stateDir: string) {
    this.#dir = join(stateDir, 'acme');
    mkdirSync(this.#dir, { recursive: true, mode: 0o700 });
    this.#file = join(this.#dir, 'state.json');
    try {
      this.state = JSON.parse(readFileSync(this.#file, 'utf8')) as IssuerState;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.state = { certificates: {}, retiredKeys: [] };
    }
  }

  forget(names: readonly string[]): string[] {
    const held = names.map((name) => [name, this.state.certificates[name]] as const);
    for (const name of names) delete this.state.certificates[name];
    try {
      this.save();
    } catch (err) {
      // Not written (disk full): the entries stay, as the file has them.
      for (const [name, managed] of held) if (managed !== undefined) this.state.certificates[name] = managed;
      throw err;
    }
    return [...names];
  }

  save(): void {
    // A temp file of its own, created exclusively (store-files.ts): the one named by the pid alone could be left over
    // (a run stopped between the write and the rename; in a container, the pid is the same at every start), and a
    // mode applies only to a file the write creates, so it kept its own (0644) through the rename; a link there was
    // written through.
    writeAtomic(this.#dir, this.#file, `${JSON.stringify(this.state, null, 2)}\n`, 0o600);
  }
}
