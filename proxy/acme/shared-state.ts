/**
 * The issuer's state (state.ts) in the fleet's store, shared by every node:
 *
 *   <prefix>acme/account               {"directory", "keyId", "url"}: the
 *                                      account's key stays in the token; only
 *                                      its id and the account URL are here
 *   <prefix>acme/certificates/<name>   one managed certificate (ManagedState):
 *                                      names, key id, failures, backoff, ARI
 *   <prefix>acme/retired-keys          keys waiting out their grace period
 *
 * One key per managed certificate, so nodes working on different names never
 * write over each other; a name is only ever ordered under its issuance lock
 * (issuance-locks.ts), so its entry has one writer at a time.
 *
 * Callers change `state` in place and `save()`, as with the file; `save`
 * writes only the keys whose JSON differs from the store's, and resolves
 * once etcd has them (failures are logged: the next save writes them again).
 *
 * Every write is conditional, in one etcd transaction (store's `writeIf`):
 * on the key's revision being the one this node last took or wrote, and,
 * for a save made under an issuance lock (`save(lock)`), on the lock still
 * being held (its fence, store/lock.ts). A node whose lock ended (a long
 * pause, a partition) while its successor ordered the name, or that changed
 * an entry taken before another node wrote it, writes nothing over that
 * node's data: the write is refused, logged with its key, and the node
 * takes what the store holds in place of its own change. Never thrown: a
 * save runs on handshakes' paths (on-demand orders). Saves of one node run
 * one after another, so they never refuse each other.
 *
 * The retired keys are one list every node's orders add to (each under its
 * own name's lock) and one node's housekeeping deletes from: two nodes
 * retiring keys at once is normal, and either one's write over the other's
 * lost a key to delete (left in the token for ever). A write of the list
 * refused because another node changed it is merged instead: this node's
 * additions, removals and new grace periods since it last read the list,
 * applied to the list etcd holds now, written on that revision.
 * That list is written without the writer's lock: each change to it is safe
 * from any node at any time (a key is added to wait out its grace, and is
 * deleted only once no stored certificate uses it, housekeeping.ts; a key
 * is removed only once it is gone from the token), whereas a node whose lock
 * ended left the key its order made, or the one its housekeeping deleted,
 * recorded nowhere or listed for ever.
 * `refresh()`, on every change of the store's ACME keys and once an
 * issuance lock is held, takes what other nodes wrote, in place: an object a
 * caller holds keeps its identity. The retired keys taken keep this node's
 * changes not yet written (the same merge), so a refresh between a change
 * and its save, or while the save runs, loses none of them. `forget()` deletes entries' keys (under
 * the name's issuance lock, housekeeping.ts); an entry this node took from the
 * store or wrote there whose key is gone is dropped at the next `refresh()`,
 * so no node writes a forgotten entry back.
 * A value that is not what its key should hold (a broken tool, a hand
 * edit) is logged with its key and ignored: what was held stays.
 */
import type { Logger } from '../../keyserver/shared/log.js';
import type { EtcdStore, WriteRefusal } from '../store/etcd-store.js';
import { ACME } from '../store/layout.js';
import type { HeldLock } from '../store/lock.js';
import type { AccountState, IssuerState, IssuerStateStore, ManagedState } from './state.js';

const ACCOUNT = `${ACME}account`;
const CERTIFICATES = `${ACME}certificates/`;
const RETIRED = `${ACME}retired-keys`;

export class SharedIssuerState implements IssuerStateStore {
  readonly state: IssuerState = { certificates: {}, retiredKeys: [] };
  readonly #store: EtcdStore;
  readonly #log: Logger;
  /** The store revision of each key as last taken or written here. */
  readonly #seen = new Map<string, number>();
  /** The save running now: the next one starts after it, on the revisions it wrote. */
  #saving: Promise<void> = Promise.resolve();
  /** The retired keys (key id → deleteAfter) as last taken or written here: what this node changed since is its own. */
  #retiredBase = new Map<string, string>();

  constructor(store: EtcdStore, log: Logger) {
    this.#store = store;
    this.#log = log;
    this.refresh();
  }

  refresh(): void {
    this.#take(ACCOUNT, (value) => {
      if (!isAccount(value)) return this.#garbage(ACCOUNT, 'not an ACME account');
      this.state.account = value;
    });
    this.#take(RETIRED, (value) => {
      if (!Array.isArray(value) || !value.every(isRetiredKey)) return this.#garbage(RETIRED, 'not a list of retired keys');
      // What this node changed since its base and has not written yet (or is writing now, its write to be refused) is
      // carried onto the list taken: replacing it lost a key an order had just retired (left in the token for ever), and
      // the merge of a refused write then found nothing of this node's to merge.
      this.state.retiredKeys = mergeRetired(this.#retiredBase, this.state.retiredKeys, value);
      this.#retiredBase = new Map(value.map((r) => [r.keyId, r.deleteAfter]));
    });
    // Another node forgot it (deleted its key): dropped here too. One never in the store (made here, its first write not
    // done yet) is not in #seen and stays.
    for (const name of Object.keys(this.state.certificates)) {
      const key = CERTIFICATES + name;
      if (this.#seen.has(key) && this.#store.item(key) === undefined) {
        delete this.state.certificates[name];
        this.#seen.delete(key);
      }
    }
    for (const name of this.#store.keys(CERTIFICATES)) {
      this.#take(CERTIFICATES + name, (value) => {
        // `null` or `{}` here once stopped every maintenance pass (TypeError) and broke /metrics: the value is checked, and garbage leaves what is held.
        if (!isManaged(value)) return this.#garbage(CERTIFICATES + name, 'not a managed certificate');
        const held = this.state.certificates[name] as unknown as Record<string, unknown> | undefined;
        if (held === undefined) {
          this.state.certificates[name] = value as ManagedState;
          return;
        }
        for (const key of Object.keys(held)) delete held[key];
        Object.assign(held, value);
      });
    }
  }

  async forget(names: readonly string[], lock?: HeldLock): Promise<string[]> {
    const forgotten: string[] = [];
    for (const name of names) {
      const key = CERTIFICATES + name;
      try {
        const done = await this.#store.writeIf(key, undefined, this.#seen.get(key) ?? 0, lock);
        if ('refused' in done) {
          this.#refused(key, done.refused, lock, 'deleted');
          continue;
        }
      } catch (err) {
        this.#log.warn({ storeKey: key, reason: (err as Error).message }, "ACME state not deleted from the fleet's store; tried again later");
        continue;
      }
      delete this.state.certificates[name];
      this.#seen.delete(CERTIFICATES + name);
      forgotten.push(name);
    }
    return forgotten;
  }

  save(lock?: HeldLock): Promise<void> {
    const run = this.#saving.then(() => this.#save(lock));
    this.#saving = run.catch(() => undefined);
    return run;
  }

  async #save(lock: HeldLock | undefined): Promise<void> {
    // Each value with the revision it was made from, taken now: a refresh while an earlier key is written (another node's
    // change, arrived meanwhile) moves #seen past it, and comparing that would let this older value overwrite the newer.
    const writes: [string, string, number][] = [];
    const want = (key: string, value: unknown): void => {
      if (value === undefined) return;
      const text = JSON.stringify(value);
      if (this.#store.item(key)?.value !== text) writes.push([key, text, this.#seen.get(key) ?? 0]);
    };
    want(ACCOUNT, this.state.account);
    want(RETIRED, this.state.retiredKeys);
    for (const [name, managed] of Object.entries(this.state.certificates)) want(CERTIFICATES + name, managed);
    for (const [key, text, from] of writes) {
      try {
        // The retired keys are not fenced by the lock (see the header): only by their revision, and merged when that moved.
        const fence = key === RETIRED ? undefined : lock;
        const done = await this.#store.writeIf(key, text, from, fence);
        if ('revision' in done) this.#wrote(key, text, done.revision);
        else if (!(key === RETIRED && done.refused === 'changed' && (await this.#mergeRetired()))) this.#refused(key, done.refused, fence, 'written');
      } catch (err) {
        this.#log.warn({ storeKey: key, reason: (err as Error).message }, "ACME state not written to the fleet's store; written at the next change");
      }
    }
  }

  #wrote(key: string, text: string, revision: number): void {
    this.#seen.set(key, revision);
    if (key === RETIRED) this.#retiredBase = new Map((JSON.parse(text) as IssuerState['retiredKeys']).map((r) => [r.keyId, r.deleteAfter]));
  }

  /** This node's changes to the retired keys, onto the list etcd holds now; false when that is not a list, or changed again meanwhile. */
  async #mergeRetired(): Promise<boolean> {
    const store = this.#store;
    const range = await store.call(`read ${RETIRED}`, () => store.client.get(store.prefix + RETIRED).exec());
    const kv = range.kvs[0];
    let theirs: unknown = [];
    try {
      if (kv !== undefined) theirs = JSON.parse(kv.value.toString('utf8'));
    } catch {
      return false;
    }
    if (!Array.isArray(theirs) || !theirs.every(isRetiredKey)) return false;
    const merged = mergeRetired(this.#retiredBase, this.state.retiredKeys, theirs);
    const text = JSON.stringify(merged);
    const done = await store.writeIf(RETIRED, text, kv === undefined ? 0 : Number(kv.mod_revision));
    if ('refused' in done) return false;
    this.#wrote(RETIRED, text, done.revision);
    this.state.retiredKeys = merged;
    this.#log.info({ storeKey: RETIRED, count: merged.length }, 'retired keys merged with those another node wrote meanwhile');
    return true;
  }

  /**
   * A conditional write refused: what the store holds is another node's
   * newer data, kept there and taken here over this node's change (from the
   * mirror; when the mirror has not got it yet, its watch brings it).
   */
  #refused(key: string, why: WriteRefusal, lock: HeldLock | undefined, what: 'written' | 'deleted'): void {
    this.#log.warn(
      { storeKey: key, lock: lock?.key, refused: why },
      why === 'lock-lost'
        ? `ACME state not ${what}: this node no longer holds its lock (another node took it, its lease ran out); the state that node wrote is kept`
        : `ACME state not ${what}: another node changed it since this node read it; the state that node wrote is kept`,
    );
    // Taken again below even at a revision already seen: the held object was changed here since.
    if (this.#store.item(key) !== undefined) this.#seen.delete(key);
    this.refresh();
  }

  /** `storeKey`, not `key`: the logger redacts every `key` field, which hid the name of the key at fault. */
  #garbage(key: string, what: string): void {
    this.#log.warn({ storeKey: key }, `ACME state in the fleet's store is ${what}; ignored, the previous state kept`);
  }

  #take(key: string, apply: (value: unknown) => void): void {
    const item = this.#store.item(key);
    if (item === undefined || item.modRevision <= (this.#seen.get(key) ?? 0)) return;
    this.#seen.set(key, item.modRevision);
    try {
      apply(JSON.parse(item.value));
    } catch {
      this.#log.warn({ storeKey: key }, "ACME state in the fleet's store is not valid JSON; ignored");
    }
  }
}

/** `theirs` (the list etcd holds) with what `mine` changed since `base`: keys added, removed, or given a new grace period. */
function mergeRetired(base: ReadonlyMap<string, string>, mine: IssuerState['retiredKeys'], theirs: IssuerState['retiredKeys']): IssuerState['retiredKeys'] {
  const own = new Map(mine.map((r) => [r.keyId, r.deleteAfter]));
  const removed = new Set([...base.keys()].filter((id) => !own.has(id)));
  const changed = new Map([...own].filter(([id, after]) => base.get(id) !== after));
  const merged = theirs.filter((r) => !removed.has(r.keyId)).map((r) => ({ keyId: r.keyId, deleteAfter: changed.get(r.keyId) ?? r.deleteAfter }));
  for (const [keyId, deleteAfter] of changed) if (!merged.some((r) => r.keyId === keyId)) merged.push({ keyId, deleteAfter });
  return merged;
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const optionalString = (value: unknown): boolean => value === undefined || typeof value === 'string';

function isAccount(value: unknown): value is AccountState {
  return isObject(value) && typeof value.directory === 'string' && typeof value.keyId === 'string' && typeof value.url === 'string';
}

function isRetiredKey(value: unknown): value is IssuerState['retiredKeys'][number] {
  return isObject(value) && typeof value.keyId === 'string' && typeof value.deleteAfter === 'string';
}

/** The fields the manager reads without looking (state.ts ManagedState). */
function isManaged(value: unknown): value is ManagedState {
  return (
    isObject(value) &&
    Array.isArray(value.domains) &&
    value.domains.length > 0 &&
    value.domains.every((d) => typeof d === 'string') &&
    typeof value.keyId === 'string' &&
    typeof value.failures === 'number' &&
    Number.isInteger(value.failures) &&
    value.failures >= 0 &&
    optionalString(value.notBefore) &&
    optionalString(value.lastIssuedAt) &&
    (value.lastError === undefined || isObject(value.lastError)) &&
    (value.ari === undefined || isObject(value.ari))
  );
}
