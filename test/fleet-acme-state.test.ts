import { describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { createLogger } from '../keyserver/shared/log.js';
import type { Etcd3, Lease } from 'etcd3';
import { ChallengeBoard } from '../proxy/acme/challenges.js';
import { FleetChallenges } from '../proxy/acme/fleet-challenges.js';
import type { AcmeIssuer, IssueRequest } from '../proxy/acme/issuer.js';
import { fleetLocks } from '../proxy/acme/issuance-locks.js';
import { deleteRetiredKeys } from '../proxy/acme/housekeeping.js';
import { CertificateManager } from '../proxy/acme/maintain.js';
import { OrderRunner } from '../proxy/acme/orders.js';
import { FleetLedger } from '../proxy/acme/on-demand-ledger.js';
import { SharedIssuerState } from '../proxy/acme/shared-state.js';
import type { ManagedState } from '../proxy/acme/state.js';
import { registerAcmeMetrics } from '../proxy/metrics.js';
import { Registry } from 'prom-client';
import { captureLog } from './helpers/keyserver.js';
import type { EtcdStore, StoreChange } from '../proxy/store/etcd-store.js';
import { etcdStoresForFile } from './helpers/etcd-stores.js';
import type { HeldLock } from '../proxy/store/lock.js';
import { StoreUnavailableError } from '../proxy/store/storage.js';
import { waitFor } from './helpers/proxy-cluster.js';

// Issue 15: the ACME issuer's fleet parts against a real etcd (one member:
// these are not about quorum), two stores standing for two nodes. The
// certificate an order writes is fenced by its issuance lock: a holder that
// lost the lock writes nothing. A node that takes the lock after another's
// order sees that order's state. The on-demand hourly limits hold for the
// fleet under concurrent takers, and a refusal on one node is remembered on
// the other. The pebble end to end is test/fleet-acme.test.ts.
const lab = etcdStoresForFile('/', 2_000);
const log = createLogger('fleet-acme-state-test', 'silent', process.stderr);
const CHAIN = '-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n';
const node = (prefix: string, name: string): Promise<EtcdStore> => lab().store(prefix, name);

/** Two nodes on one prefix, each with its issuer state and its issuance locks (which refresh that state). */
async function twoNodes(prefix: string, name: string) {
  const [a, b] = [await node(prefix, `${name}-a`), await node(prefix, `${name}-b`)];
  const [stateA, stateB] = [new SharedIssuerState(a, log), new SharedIssuerState(b, log)];
  return { a, b, stateA, stateB, locksA: fleetLocks(a, () => stateA.refresh()), locksB: fleetLocks(b, () => stateB.refresh()) };
}

/** A node's on-demand ledger on `prefix`, one order per registered domain and two in all per hour. */
async function smallLedger(prefix: string): Promise<{ store: EtcdStore; ledger: FleetLedger }> {
  const onDemand = loadProxyConfig(undefined, {
    acme: { directory: 'https://ca.test/dir', onDemand: { maxOrdersPerDomainPerHour: 1, maxOrdersPerHour: 2 } },
  }).acme!.onDemand!;
  const store = await node(prefix, `ledger${prefix.replaceAll('/', '-')}`);
  return { store, ledger: new FleetLedger(store, onDemand, log) };
}

/** Holds `name` on `locks` until `release()`: `holds` resolves once the lock is held; `then` runs under it after release. */
function holdUntilReleased(locks: ReturnType<typeof fleetLocks>, name: string, then: () => Promise<void> = async () => {}) {
  let release!: () => void;
  let held!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const holds = new Promise<void>((resolve) => (held = resolve));
  const done = locks.hold(name, 5_000, async () => {
    held();
    await released;
    await then();
  });
  return { holds, release, done };
}

/** A certificate manager on `state` and `locks` whose CA answers with `issue` (by default: none here). */
function managerOn(
  state: SharedIssuerState,
  locks: ReturnType<typeof fleetLocks>,
  issue: (request: { name: string }) => Promise<unknown> = () => Promise.reject(new Error('no CA here')),
): CertificateManager {
  return new CertificateManager({
    config: loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir' } }).acme!,
    state,
    issuer: { issue } as unknown as AcmeIssuer,
    keys: { generate: () => Promise.reject(new Error('unused')), remove: async () => undefined },
    records: () => new Map(),
    metrics: registerAcmeMetrics(new Registry(), () => 0),
    log,
    locks,
    renewalWindow: async () => undefined,
  });
}

describe('ACME state shared on etcd', () => {
  it('writes an order’s certificate only while its issuance lock is held', async () => {
    const a = await node('/acme-fence/', 'a');
    const b = await node('/acme-fence/', 'b');
    const first = await a.lock('acme/issue/site.test', { ttlSeconds: 10, waitMs: 0 });
    expect(first).toBeDefined();
    await a.fenced(first!).write('site.test', CHAIN, { names: ['site.test'], keyId: 'a'.repeat(64) });
    // The lock goes (released here; a lease that ran out during a pause does the same) and node B takes it.
    await first!.release();
    const second = await b.lock('acme/issue/site.test', { ttlSeconds: 10, waitMs: 5_000 });
    expect(second).toBeDefined();
    await b.fenced(second!).write('site.test', CHAIN, { names: ['site.test'], keyId: 'b'.repeat(64) });
    // Node A's late result is refused in the transaction, and node B's stays.
    const stale = await Promise.resolve(a.fenced(first!).write('site.test', CHAIN, { names: ['site.test'], keyId: 'c'.repeat(64) })).catch(
      (err: unknown) => err,
    );
    expect(stale).toBeInstanceOf(StoreUnavailableError);
    expect((stale as Error).message).toMatch(/lock .* was lost/);
    await waitFor('node A to mirror node B’s write', () => (a.read('site.test').meta.keyId === 'b'.repeat(64) ? true : undefined));
    await second!.release();
  });

  it('shows a node that takes the lock what the previous holder wrote under it', async () => {
    const { stateA, stateB, locksA, locksB } = await twoNodes('/acme-state/', 'state');
    stateA.state.certificates['www.test'] = { domains: ['www.test'], keyId: '', failures: 0 };
    await stateA.save();
    await waitFor('node B to see the managed entry', () => {
      stateB.refresh();
      return stateB.state.certificates['www.test'];
    });
    const entryOnB = stateB.state.certificates['www.test']!;
    const orderOnA = holdUntilReleased(locksA, 'acme/issue/www.test', async () => {
      Object.assign(stateA.state.certificates['www.test']!, { keyId: 'k'.repeat(64), lastIssuedAt: new Date().toISOString() });
      stateA.state.account = { directory: 'https://ca.test/dir', keyId: 'acct', url: 'https://ca.test/acct/1' };
      await stateA.save();
    });
    await orderOnA.holds;
    const onB = locksB.hold('acme/issue/www.test', 10_000, async () => ({ ...stateB.state.certificates['www.test']! }));
    orderOnA.release();
    await orderOnA.done;
    const seen = await onB;
    // What A wrote before releasing, B sees once its lock is held; the object B held kept its identity.
    expect(seen?.value.keyId).toBe('k'.repeat(64));
    expect(seen?.value.lastIssuedAt).toBeDefined();
    expect(stateB.state.certificates['www.test']).toBe(entryOnB);
    expect(stateB.state.account).toEqual({ directory: 'https://ca.test/dir', keyId: 'acct', url: 'https://ca.test/acct/1' });
  });

  it('writes nothing of a node whose issuance lock ended over the state its successor wrote, and says so', async () => {
    const a = await node('/acme-save-fence/', 'save-fence-a');
    const b = await node('/acme-save-fence/', 'save-fence-b');
    const logs = captureLog('warn');
    const [stateA, stateB] = [new SharedIssuerState(a, logs.logger), new SharedIssuerState(b, log)];
    const KEY = 'acme/certificates/late.test';
    stateA.state.certificates['late.test'] = { domains: ['late.test'], keyId: '', failures: 0 };
    await stateA.save();
    // Node A orders under the name's lock, and pauses before it saves; its lock ends (released here; a lease that ran
    // out during the pause does the same).
    const lockA = (await a.lock('acme/issue/late.test', { ttlSeconds: 10, waitMs: 0 }))!;
    Object.assign(stateA.state.certificates['late.test']!, { keyId: 'a'.repeat(64), lastIssuedAt: new Date().toISOString() });
    await lockA.release();
    // Node B takes the lock and orders the name: its result is the entry's.
    const lockB = (await b.lock('acme/issue/late.test', { ttlSeconds: 10, waitMs: 5_000 }))!;
    expect(await b.reached(Number(lockB.fence), 5_000)).toBe(true);
    stateB.refresh();
    Object.assign(stateB.state.certificates['late.test']!, { keyId: 'b'.repeat(64), lastIssuedAt: new Date().toISOString() });
    await stateB.save(lockB);
    const written = b.item(KEY)!;
    const byB = (value = a.item(KEY)?.value): string | undefined => (value === undefined ? undefined : JSON.parse(value).keyId);
    await waitFor('node A to mirror node B’s write', () => (a.item(KEY)?.modRevision === written.modRevision ? true : undefined));

    // A resumes and saves its result from before B's: refused, B's stays, and A takes it.
    await stateA.save(lockA);
    // A saves what it changed on B's entry after taking it (a failure counted): refused by the fence alone.
    stateA.refresh();
    expect(stateA.state.certificates['late.test']?.keyId).toBe('b'.repeat(64));
    Object.assign(stateA.state.certificates['late.test']!, { failures: 1, lastError: { code: 'KEYEDGE_ERR_STORE_UNAVAILABLE', message: 'lock lost', at: '' } });
    await stateA.save(lockA);
    // Nor may it forget the entry under its ended lock.
    expect(await stateA.forget(['late.test'], lockA)).toEqual([]);

    const now = await a.call('read', () => a.client.get(`/acme-save-fence/${KEY}`).exec());
    expect(Number(now.kvs[0]?.mod_revision)).toBe(written.modRevision);
    expect(byB(now.kvs[0]?.value.toString())).toBe('b'.repeat(64));
    expect(stateA.state.certificates['late.test']).toMatchObject({ keyId: 'b'.repeat(64), failures: 0 });
    const refused = logs.find(/ACME state not (written|deleted): this node no longer holds its lock/);
    expect(refused.map((l) => [l.storeKey, l.lock])).toEqual(Array(3).fill([KEY, lockA.key]));
    // B, which still holds the lock, writes on.
    stateB.state.certificates['late.test']!.failures = 0;
    stateB.state.certificates['late.test']!.notBefore = new Date().toISOString();
    await stateB.save(lockB);
    expect(b.item(KEY)!.modRevision).toBeGreaterThan(written.modRevision);
    await lockB.release();
  });

  it('does not write a value made before another node’s change that arrived while the save ran', async () => {
    const { a, b, stateA, stateB } = await twoNodes('/acme-save-race/', 'save-race');
    const KEY = 'acme/certificates/race.test';
    stateA.state.certificates['race.test'] = { domains: ['race.test'], keyId: '', failures: 0 };
    await stateA.save();
    await waitFor('node B to see the entry', () => {
      stateB.refresh();
      return stateB.state.certificates['race.test'];
    });
    // Node B issues the name; its write reaches node A's mirror, not yet its state.
    Object.assign(stateB.state.certificates['race.test']!, { keyId: 'b'.repeat(64), lastIssuedAt: new Date().toISOString() });
    await stateB.save();
    const written = b.item(KEY)!.modRevision;
    await waitFor('node A to mirror it', () => (a.item(KEY)?.modRevision === written ? true : undefined));
    // Node A saves a change of its older entry (and the retired keys, written first); B's change is taken while it runs.
    stateA.state.certificates['race.test']!.failures = 1;
    stateA.state.retiredKeys.push({ keyId: 'k9', deleteAfter: '2030-01-01T00:00:00.000Z' });
    const saving = stateA.save();
    for (let i = 0; i < 3; i++) await Promise.resolve();
    stateA.refresh();
    await saving;
    const now = await a.call('read', () => a.client.get(`/acme-save-race/${KEY}`).string());
    expect(JSON.parse(now!)).toMatchObject({ keyId: 'b'.repeat(64), failures: 0 });
  });

  it('merges the retired keys two nodes change at once: no key to delete is lost, none deleted comes back', async () => {
    const { a, stateA, stateB } = await twoNodes('/acme-retired/', 'retired');
    const [t0, t1, t2] = ['2030-01-01T00:00:00.000Z', '2030-02-01T00:00:00.000Z', '2030-03-01T00:00:00.000Z'];
    stateA.state.retiredKeys.push({ keyId: 'k0', deleteAfter: t0 }, { keyId: 'k1', deleteAfter: t0 });
    await stateA.save();
    await waitFor('node B to see the retired keys', () => {
      stateB.refresh();
      return stateB.state.retiredKeys.length === 2 ? true : undefined;
    });
    // At once: node A's order retires k2; node B's housekeeping deleted k0, and its order retires k3 and k1 again.
    stateA.state.retiredKeys.push({ keyId: 'k2', deleteAfter: t1 });
    stateB.state.retiredKeys = [
      { keyId: 'k1', deleteAfter: t2 },
      { keyId: 'k3', deleteAfter: t1 },
    ];
    await stateA.save();
    await stateB.save();
    const want = [
      { keyId: 'k1', deleteAfter: t2 },
      { keyId: 'k2', deleteAfter: t1 },
      { keyId: 'k3', deleteAfter: t1 },
    ];
    const byId = (list: { keyId: string }[]) => [...list].sort((x, y) => x.keyId.localeCompare(y.keyId));
    const stored = await a.call('read', () => a.client.get('/acme-retired/acme/retired-keys').string());
    expect(byId(JSON.parse(stored!))).toEqual(want);
    expect(byId(stateB.state.retiredKeys)).toEqual(want);
    await waitFor('node A to take the merged list', () => {
      stateA.refresh();
      return stateA.state.retiredKeys.length === 3 ? true : undefined;
    });
    expect(byId(stateA.state.retiredKeys)).toEqual(want);
  });

  it('keeps a key this node retired when another node’s change to the list is taken before its save, or while it runs', async () => {
    const { a, b, stateA, stateB } = await twoNodes('/acme-retired-refresh/', 'retired-refresh');
    const RETIRED = 'acme/retired-keys';
    const later = '2030-01-01T00:00:00.000Z';
    stateA.state.retiredKeys.push({ keyId: 'k0', deleteAfter: later });
    await stateA.save();
    await waitFor('node B to see the retired keys', () => {
      stateB.refresh();
      return stateB.state.retiredKeys.length === 1 ? true : undefined;
    });
    /** Node B's order retires `keyId`; its write reaches node A's mirror, not yet A's state (the watch's refresh comes next). */
    const retiredOnB = async (keyId: string) => {
      stateB.state.retiredKeys.push({ keyId, deleteAfter: later });
      await stateB.save();
      const written = b.item(RETIRED)!.modRevision;
      await waitFor('node A to mirror node B’s list', () => (a.item(RETIRED)?.modRevision === written ? true : undefined));
    };
    // Node A's order retires kA1, and node B's change is taken before A's save runs.
    stateA.state.retiredKeys.push({ keyId: 'kA1', deleteAfter: later });
    await retiredOnB('kB1');
    stateA.refresh();
    await stateA.save();
    // Node A's order retires kA2 and saves from the list before B's next change, taken while that write is on its way (refused).
    await retiredOnB('kB2');
    stateA.state.retiredKeys.push({ keyId: 'kA2', deleteAfter: later });
    const saving = stateA.save();
    for (let i = 0; i < 3; i++) await Promise.resolve();
    stateA.refresh();
    await saving;
    const stored = await a.call('read', () => a.client.get(`/acme-retired-refresh/${RETIRED}`).string());
    const ids = (list: { keyId: string }[]) => list.map((r) => r.keyId).sort();
    expect(ids(JSON.parse(stored!))).toEqual(['k0', 'kA1', 'kA2', 'kB1', 'kB2']);
    expect(ids(stateA.state.retiredKeys)).toEqual(['k0', 'kA1', 'kA2', 'kB1', 'kB2']);
  });

  it('removes only the keys a housekeeping pass deleted: keys retired while it ran stay listed', async () => {
    const { a, b, stateA, stateB, locksA } = await twoNodes('/acme-retired-pass/', 'retired-pass');
    const RETIRED = 'acme/retired-keys';
    const later = '2030-01-01T00:00:00.000Z';
    stateA.state.retiredKeys.push({ keyId: 'old', deleteAfter: '2020-01-01T00:00:00.000Z' });
    await stateA.save();
    await waitFor('node B to see the retired keys', () => {
      stateB.refresh();
      return stateB.state.retiredKeys.length === 1 ? true : undefined;
    });
    const removed: string[] = [];
    const keys = {
      generate: () => Promise.reject(new Error('unused')),
      // While the pass deletes `old` (a child process, a second or so): an order on node A retires kA, and node B's
      // order retires kB, which node A takes.
      remove: async (keyId: string) => {
        removed.push(keyId);
        stateA.state.retiredKeys.push({ keyId: 'kA', deleteAfter: later });
        await stateA.save();
        stateB.state.retiredKeys.push({ keyId: 'kB', deleteAfter: later });
        await stateB.save();
        const written = b.item(RETIRED)!.modRevision;
        await waitFor('node A to mirror node B’s list', () => (a.item(RETIRED)?.modRevision === written ? true : undefined));
        stateA.refresh();
      },
    };
    const metrics = registerAcmeMetrics(new Registry(), () => 0);
    await deleteRetiredKeys({ state: stateA, keys, records: () => new Map(), metrics, log, locks: locksA }, Date.now());
    expect(removed).toEqual(['old']);
    const stored = await a.call('read', () => a.client.get(`/acme-retired-pass/${RETIRED}`).string());
    expect(
      JSON.parse(stored!)
        .map((r: { keyId: string }) => r.keyId)
        .sort(),
    ).toEqual(['kA', 'kB']);
  });

  it('retires the key of an order whose chain was stored but whose lock ended before its state was saved', async () => {
    const { a, stateA } = await twoNodes('/acme-orphan/', 'orphan');
    const [OLD, NEW] = ['o'.repeat(64), 'n'.repeat(64)];
    stateA.state.certificates['orphan.test'] = { domains: ['orphan.test'], keyId: OLD, failures: 0 };
    await stateA.save();
    const issuer = {
      // The chain stored with a new key, then the lock ends (released here; a lease that ran out during a pause does the same).
      issue: async (request: IssueRequest) => {
        await request.lock!.release();
        return { keyId: NEW, chainPem: CHAIN, newKey: true };
      },
    } as unknown as AcmeIssuer;
    const config = loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir' } }).acme!;
    const metrics = registerAcmeMetrics(new Registry(), () => 0);
    const locks = fleetLocks(a, () => stateA.refresh());
    await new OrderRunner({ config, state: stateA, issuer, records: () => new Map(), metrics, log, locks }).run('orphan.test');
    // The entry's state was refused (the store's stays); the new key is recorded to delete once nothing uses it.
    const read = async (key: string) => JSON.parse((await a.call('read', () => a.client.get(`/acme-orphan/${key}`).string()))!);
    expect((await read('acme/certificates/orphan.test')).keyId).toBe(OLD);
    expect((await read('acme/retired-keys')).map((r: { keyId: string }) => r.keyId)).toContain(NEW);
  });

  it('removes the record of a retired key deleted under a lock that ended meanwhile', async () => {
    const { a, stateA, locksA } = await twoNodes('/acme-retired-lost/', 'retired-lost');
    stateA.state.retiredKeys.push({ keyId: 'gone', deleteAfter: '2020-01-01T00:00:00.000Z' });
    await stateA.save();
    let held: HeldLock | undefined;
    const locks: typeof locksA = {
      hold: (name, waitMs, work) =>
        locksA.hold(name, waitMs, (lock) => {
          held = lock;
          return work(lock);
        }),
    };
    const removed: string[] = [];
    const keys = {
      generate: () => Promise.reject(new Error('unused')),
      // Deleted from the token, then the lock ends before the list is written.
      remove: async (keyId: string) => {
        removed.push(keyId);
        await held!.release();
      },
    };
    const metrics = registerAcmeMetrics(new Registry(), () => 0);
    await deleteRetiredKeys({ state: stateA, keys, records: () => new Map(), metrics, log, locks }, Date.now());
    expect(removed).toEqual(['gone']);
    const stored = await a.call('read', () => a.client.get('/acme-retired-lost/acme/retired-keys').string());
    expect(JSON.parse(stored!)).toEqual([]);
    expect(stateA.state.retiredKeys).toEqual([]);
  });

  it('deletes no more retired keys once its lock is lost: another node’s pass may run by then, and it is said once', async () => {
    const logs = captureLog('warn');
    const a = await lab().store('/acme-retired-lock-lost/', 'retired-lock-lost', [], lab().client(), { log: logs.logger });
    const stateA = new SharedIssuerState(a, log);
    const due = '2020-01-01T00:00:00.000Z';
    stateA.state.retiredKeys.push({ keyId: 'first', deleteAfter: due }, { keyId: 'second', deleteAfter: due });
    await stateA.save();
    let held: HeldLock | undefined;
    const locks = fleetLocks(a, () => stateA.refresh());
    const removed: string[] = [];
    const keys = {
      generate: () => Promise.reject(new Error('unused')),
      // While the first key is deleted, the pass's lock lease ends in etcd (as it does when etcd stalls past its TTL;
      // revoked here, not to wait for it), and the holder learns it from its next keepalive (every third of the TTL).
      remove: async (keyId: string) => {
        removed.push(keyId);
        if (removed.length > 1) return;
        const [kv] = (await a.client.get(held!.key).exec()).kvs;
        await a.client.leaseClient.leaseRevoke({ ID: kv!.lease });
        await waitFor('the holder to learn its lock is lost', () => (held!.lost?.aborted ? true : undefined), 8_000).catch(() => undefined);
      },
    };
    const metrics = registerAcmeMetrics(new Registry(), () => 0);
    await deleteRetiredKeys(
      {
        state: stateA,
        keys,
        records: () => new Map(),
        metrics,
        log,
        locks: { hold: (name, waitMs, work) => locks.hold(name, waitMs, (lock) => work((held = lock))) },
      },
      Date.now(),
    );
    // The second key is left for the next pass: deleted under the lost lock, it was deleted by two nodes at once.
    expect(removed).toEqual(['first']);
    expect(stateA.state.retiredKeys.map((r) => r.keyId)).toEqual(['second']);
    const said = logs.find(/a fleet lock was lost/);
    expect(said.map((l) => l.lock)).toEqual([held!.key]);
  });

  it('holds the on-demand hourly limits for the fleet, and a refusal on one node for the other', async () => {
    const onDemand = loadProxyConfig(undefined, {
      acme: { directory: 'https://ca.test/dir', onDemand: { maxOrdersPerDomainPerHour: 2, maxOrdersPerHour: 3, refusedSeconds: 60 } },
    }).acme!.onDemand!;
    const a = await node('/acme-ondemand/', 'od-a');
    const b = await node('/acme-ondemand/', 'od-b');
    const ledgers = [new FleetLedger(a, onDemand, log), new FleetLedger(b, onDemand, log)];
    // Eight takers at once, four per node, for one registered domain: two slots in all.
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => ledgers[i % 2]!.takeOrderSlot('example.test')));
    expect(answers.filter((x) => x === 'taken')).toHaveLength(2);
    expect(answers.filter((x) => x === 'rate_limited')).toHaveLength(6);
    // The fleet's hourly total (3): one more domain gets one slot, the next none.
    expect(await ledgers[1]!.takeOrderSlot('other.test')).toBe('taken');
    expect(await ledgers[0]!.takeOrderSlot('third.test')).toBe('rate_limited');

    ledgers[0]!.rememberRefusal('bad.example.test', 'the ask endpoint answered 403');
    await waitFor('node B to know the refusal', () => (ledgers[1]!.refused('bad.example.test') ? true : undefined));
    expect(ledgers[1]!.refused('good.example.test')).toBe(false);
  });

  it('makes no node take the issuer state or rebuild its challenge board for on-demand refusals, their expiry, or the order counters', async () => {
    // The primary takes the issuer state and rebuilds the board on each 'acme' change (cluster.ts): a client sending
    // random names that get refused made every node's primary do both, a walk of the whole mirror each, per refusal
    // written and again per refusal etcd deleted when its lease ended.
    const onDemand = loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir', onDemand: { refusedSeconds: 1 } } }).acme!.onDemand!;
    const prefix = '/acme-ondemand-storm/';
    const writer = new FleetLedger(await node(prefix, 'storm-a'), onDemand, log);
    const changes: StoreChange[] = [];
    const watcher = await lab().store(prefix, 'storm-b', changes);
    const refusals = 100;
    for (let i = 0; i < refusals; i++) writer.rememberRefusal(`r${i}.storm.test`, 'the ask endpoint answered 403');
    expect(await writer.takeOrderSlot('storm.test')).toBe('taken');
    const refused = () => watcher.keys('acme/on-demand/refused/').length;
    await waitFor('the refusals on the other node', () => (refused() === refusals ? true : undefined));
    await waitFor('etcd to forget the refusals', () => (refused() === 0 ? true : undefined));
    // A change of the issuer's state still tells the node, once; the watch gives it after every event above.
    await watcher.client.put(`${prefix}acme/certificates/storm.test`).value('{}');
    await waitFor('the issuer state change', () => (changes.includes('acme') ? true : undefined));
    expect(changes.filter((c) => c === 'acme')).toHaveLength(1);
  });

  it('answers a limit read full without asking etcd again until an order it counts leaves the hour', async () => {
    const { store, ledger } = await smallLedger('/acme-ondemand-full/');
    const client = store.client as { get: (key: string) => unknown };
    const get = client.get.bind(store.client);
    let reads = 0;
    client.get = (key) => {
      reads++;
      return get(key);
    };
    expect(await ledger.takeOrderSlot('example.test')).toBe('taken');
    // Names the ask endpoint allows under one registered domain, then under others once the fleet's limit is reached.
    const before = reads;
    for (let i = 0; i < 20; i++) expect(await ledger.takeOrderSlot('example.test')).toBe('rate_limited');
    expect(reads - before).toBeLessThanOrEqual(2);
    expect(await ledger.takeOrderSlot('other.test')).toBe('taken');
    const full = reads;
    for (let i = 0; i < 20; i++) expect(await ledger.takeOrderSlot(`d${i}.test`)).toBe('rate_limited');
    expect(reads - full).toBeLessThanOrEqual(2);
  });

  it('counts no order time past the next hour (a node whose clock is far ahead), and lets etcd forget a counter an hour on', async () => {
    const { store, ledger } = await smallLedger('/acme-ondemand-clock/');
    const key = (rest: string) => `/acme-ondemand-clock/acme/on-demand/${rest}`;
    // A year ahead, for the domain and for the fleet.
    const ahead = JSON.stringify([Date.now() + 365 * 86_400_000, Date.now() + 365 * 86_400_000]);
    await store.client.put(key('orders/example.test')).value(ahead);
    await store.client.put(key('orders-all')).value(ahead);
    expect(await ledger.takeOrderSlot('example.test')).toBe('taken');
    expect(await ledger.takeOrderSlot('example.test')).toBe('rate_limited');
    // The counters are under a lease of an hour: a domain not ordered since leaves nothing in etcd or any mirror.
    for (const rest of ['orders/example.test', 'orders-all']) {
      const [kv] = (await store.client.get(key(rest)).exec()).kvs;
      expect(JSON.parse(kv!.value.toString())).toHaveLength(1);
      expect(kv!.lease).not.toBe('0');
      const ttl = await store.client.leaseClient.leaseTimeToLive({ ID: kv!.lease });
      expect(Number(ttl.TTL)).toBeGreaterThan(3_000);
      expect(Number(ttl.TTL)).toBeLessThanOrEqual(3_600);
    }
  });

  it('forgets a failed on-demand entry for the fleet, but not while another node holds its issuance lock', async () => {
    const { a, b, stateA, stateB, locksA, locksB } = await twoNodes('/acme-forget/', 'forget');
    const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000).toISOString();
    const failed = (name: string): ManagedState => ({
      domains: [name],
      keyId: '',
      failures: 1,
      onDemand: true,
      notBefore: twoDaysAgo,
      lastError: { code: 'KEYEDGE_ERR_ACME', message: 'validation failed', at: twoDaysAgo },
    });
    stateA.state.certificates['old.test'] = failed('old.test');
    stateA.state.certificates['busy.test'] = failed('busy.test');
    await stateA.save();
    await waitFor('node B to see both entries', () => {
      stateB.refresh();
      return stateB.state.certificates['old.test'] !== undefined && stateB.state.certificates['busy.test'] !== undefined ? true : undefined;
    });
    const manager = managerOn(stateA, locksA);
    // Node B orders busy.test (its name came back through B's gate): it holds the name's lock while A's pass runs.
    const orderOnB = holdUntilReleased(locksB, 'acme/issue/busy.test');
    await orderOnB.holds;
    await manager.tick();
    orderOnB.release();
    await orderOnB.done;
    expect(Object.keys(stateA.state.certificates)).toEqual(['busy.test']);
    expect(a.item('acme/certificates/old.test')).toBeUndefined();
    expect(a.item('acme/certificates/busy.test')).toBeDefined();
    await waitFor('node B to forget it too', () => {
      stateB.refresh();
      return stateB.state.certificates['old.test'] === undefined ? true : undefined;
    });
    expect(stateB.state.certificates['busy.test']).toBeDefined();
    // Node B's next save does not write back what A forgot.
    await stateB.save();
    expect(b.item('acme/certificates/old.test')).toBeUndefined();
  });

  it('keeps a failed on-demand entry whose name a handshake orders while the pass forgets it: the order runs', async () => {
    const a = await node('/acme-forget-race/', 'forget-race-a');
    const stateA = new SharedIssuerState(a, log);
    const locksA = fleetLocks(a, () => stateA.refresh());
    const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000).toISOString();
    stateA.state.certificates['again.test'] = {
      domains: ['again.test'],
      keyId: '',
      failures: 1,
      onDemand: true,
      notBefore: twoDaysAgo,
      lastError: { code: 'KEYEDGE_ERR_ACME', message: 'validation failed', at: twoDaysAgo },
    };
    await stateA.save();
    const ordered: string[] = [];
    const manager = managerOn(stateA, locksA, (request) => {
      ordered.push(request.name);
      return Promise.reject(new Error('no CA here'));
    });
    // The name's handshake comes through the gate while the pass deletes the entry's key (an etcd round trip).
    let order: Promise<unknown> | undefined;
    const forget = stateA.forget.bind(stateA);
    stateA.forget = (names, lock) => {
      order = manager.issue(['again.test'], undefined, true).catch((err: unknown) => err);
      return forget(names, lock);
    };
    await manager.tick();
    expect(order).toBeDefined();
    const outcome = await order;
    // The order went to the CA (and failed there): not KEYEDGE_ERR_CERT_NOT_FOUND before it, its entry gone under it.
    expect((outcome as { code?: string }).code).not.toBe('KEYEDGE_ERR_CERT_NOT_FOUND');
    expect(ordered).toEqual(['again.test']);
    expect(stateA.state.certificates['again.test']?.failures).toBe(2);
    await waitFor('its failure written to the fleet', () => a.item('acme/certificates/again.test'));
  });

  it('ignores garbage in a managed certificate key, naming it, and keeps renewing the others', async () => {
    const a = await node('/acme-garbage/', 'garbage-a');
    const logs = captureLog('warn');
    // Garbage written first (a broken tool, a hand edit): JSON, but not a managed certificate.
    await a.put('acme/certificates/aaa-null', 'null');
    await a.put('acme/certificates/aaa-empty', '{}');
    await a.put('acme/certificates/aaa-domains', '{"domains":"x.test","keyId":"","failures":0}');
    await a.put('acme/certificates/aaa-text', 'not json');
    await a.put('acme/certificates/www.test', JSON.stringify({ domains: ['www.test'], keyId: '', failures: 0 }));
    await waitFor('the store to mirror the keys', () => (a.keys('acme/certificates/').length === 5 ? true : undefined));
    const state = new SharedIssuerState(a, logs.logger);
    const orders: IssueRequest[] = [];
    const issuer = {
      issue: async (request: IssueRequest) => {
        orders.push(request);
        throw new Error('no CA here');
      },
    } as unknown as AcmeIssuer;
    let manager: CertificateManager | undefined;
    const metrics = registerAcmeMetrics(new Registry(), () => manager?.failing ?? 0);
    manager = new CertificateManager({
      config: loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir' } }).acme!,
      state,
      issuer,
      keys: { generate: () => Promise.reject(new Error('unused')), remove: async () => undefined },
      records: () => new Map(),
      metrics,
      log: logs.logger,
      renewalWindow: async () => undefined,
    });
    // The maintenance pass neither throws nor orders garbage; the valid entry is ordered.
    await manager.tick();
    await waitFor('the valid entry to be ordered', () => (orders.length > 0 ? true : undefined));
    expect(orders.map((o) => o.name)).toEqual(['www.test']);
    expect(manager.failing).toBeGreaterThanOrEqual(0);
    const warned = logs.find(/not a managed certificate/).map((l) => l.storeKey);
    expect(warned).toEqual(expect.arrayContaining(['acme/certificates/aaa-null', 'acme/certificates/aaa-empty', 'acme/certificates/aaa-domains']));
    expect(logs.find(/not valid JSON/).map((l) => l.storeKey)).toEqual(['acme/certificates/aaa-text']);
  });

  it('keeps using its lease after a report that it answers the challenges failed, never leaving one alive unused, and tries it again', async () => {
    const prefix = '/answer-lost/';
    const writer = lab().client();
    // The next report this node makes under its lease is sent, but its answer is lost (a deadline passed); or refused
    // before it is sent (etcd away).
    let loseNext = false;
    let refuseNext = false;
    const losing = new Proxy(lab().client(), {
      get(target, property) {
        if (property === 'lease') {
          return (...args: Parameters<Etcd3['lease']>): Lease => {
            const lease = target.lease(...args);
            const put = lease.put.bind(lease);
            lease.put = (key) => {
              const builder = put(key);
              const exec = builder.exec.bind(builder);
              builder.exec = async () => {
                if (refuseNext && key.toString().includes('/answering/')) {
                  refuseNext = false;
                  throw new Error('test: etcd is unreachable');
                }
                const result = await exec();
                if (loseNext && key.toString().includes('/answering/')) {
                  loseNext = false;
                  throw new Error('test: no answer within the deadline');
                }
                return result;
              };
              return builder;
            };
            return lease;
          };
        }
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const a = await lab().store(prefix, 'answer-lost', [], losing);
    const fleet = new FleetChallenges(a, new ChallengeBoard(async () => undefined), log, 5_000);
    const challenge = async (token: string): Promise<number> => {
      const entry = { kind: 'http-01', token, name: 'lost.test', keyAuthorization: `${token}.auth` };
      const revision = Number((await writer.put(`${prefix}acme/challenges/${token}`).value(JSON.stringify(entry)).exec()).header.revision);
      await waitFor(`challenge ${token} mirrored`, () => a.item(`acme/challenges/${token}`));
      fleet.changed();
      return revision;
    };
    /** The lease of this node's report, once it says it serves up to `revision`. */
    const reportLease = async (revision: number): Promise<string> => {
      const node = await waitFor('the report', () => a.keys('acme/answering/').find((n) => Number(a.item(`acme/answering/${n}`)?.value) >= revision));
      return (await writer.get(`${prefix}acme/answering/${node}`).exec()).kvs[0]!.lease;
    };
    try {
      fleet.start();
      const first = await reportLease(a.health.revision);
      loseNext = true;
      await challenge('one');
      await waitFor('the lost report', () => (loseNext ? undefined : true));
      const second = await reportLease(await challenge('two'));
      // Its lease is the one the node keeps alive; a lease it dropped (its keepalive running, never revoked) stayed in
      // etcd as long as the node lived, with every key written under it.
      const alive = await writer.leaseClient.leaseTimeToLive({ ID: first });
      expect({ second, firstTtl: second === first ? 'in use' : alive.TTL }).toEqual({ second: first, firstTtl: 'in use' });
      // A report that did not reach etcd is tried again by itself: it waited for the next change of the board, and other
      // nodes' orders meanwhile waited for this node, which served their challenges but had not said so.
      refuseNext = true;
      const third = await challenge('three');
      await waitFor('the refused report', () => (refuseNext ? undefined : true));
      expect(await reportLease(third)).toBe(first);
    } finally {
      fleet.stop();
    }
  });

  it('reports again at once when its report’s lease is lost: the other nodes wait for it again', async () => {
    const prefix = '/answer-lease-lost/';
    const reader = lab().client();
    const a = await node(prefix, 'answer-lease-lost');
    const fleet = new FleetChallenges(a, new ChallengeBoard(async () => undefined), log, 5_000);
    const report = async () => (await reader.getAll().prefix(`${prefix}acme/answering/`).exec()).kvs[0];
    try {
      fleet.start();
      const first = await waitFor('the report', report);
      // Its lease ends in etcd (as it does when etcd stalls past its TTL; revoked here, not to wait 10 s): its key goes,
      // and the node learns it from its next keepalive (within a third of the TTL).
      await reader.leaseClient.leaseRevoke({ ID: first.lease });
      // Written again, under a new lease, with no change of the board: it stayed away until the next challenge, and
      // meanwhile no other node waited for this one to serve theirs.
      const again = await waitFor('the report again', report, 10_000);
      expect(again.lease).not.toBe(first.lease);
      expect(again.value.toString()).toBe(first.value.toString());
    } finally {
      fleet.stop();
    }
  });

  it('leaves the wait at once when it stops: the store closes its client only once the report’s lease is revoked', async () => {
    const prefix = '/answer-closed/';
    const a = await node(prefix, 'answer-closed');
    const reader = lab().client();
    const fleet = new FleetChallenges(a, new ChallengeBoard(async () => undefined), log, 5_000);
    const reports = () => reader.getAll().prefix(`${prefix}acme/answering/`).keys();
    fleet.start();
    await waitFor('the report', async () => ((await reports()).length === 1 ? true : undefined));
    // The node stops as the primary does (cluster.ts): its ACME part, then its store at once.
    fleet.stop();
    await a.close();
    // Left in etcd, it kept every other node's order waiting for this node, gone, until the lease's 10 s ran out.
    expect(await reports()).toEqual([]);
  });

  it('reports nothing once stopped: a report under way at the stop takes no new lease, and the node leaves the wait', async () => {
    const prefix = '/answer-stopped/';
    const a = await node(prefix, 'answer-stopped');
    // The workers take their time to apply the board (the primary waits for each): the report waits with them.
    let applied!: () => void;
    const workers = new Promise<void>((resolve) => (applied = resolve));
    const fleet = new FleetChallenges(a, new ChallengeBoard(() => workers), log, 5_000);
    fleet.start();
    fleet.stop();
    applied();
    // Well after the report would have been written.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const answering = await lab().client().getAll().prefix(`${prefix}acme/answering/`).keys();
    // A report made after the stop took a new lease, kept alive while the process lived: every other node's order
    // waited for this node, gone, to serve its challenge.
    expect(answering).toEqual([]);
  });
});
