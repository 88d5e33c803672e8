import { createServer, type Socket } from 'node:net';
import type { Etcd3, Lock } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { PROXY_DEFAULTS } from '../config/proxy-schema.js';
import { fleetLocks } from '../proxy/acme/issuance-locks.js';
import { etcdCall } from '../proxy/store/etcd-calls.js';
import { etcdClient } from '../proxy/store/etcd-client.js';
import type { EtcdStore, StoreChange } from '../proxy/store/etcd-store.js';
import { acquireLock, fencedPut } from '../proxy/store/lock.js';
import { StoreUnavailableError } from '../proxy/store/storage.js';
import { rotateSharedTicketKeys, sharedTicketKeys } from '../proxy/store/tickets.js';
import { etcdStoresForFile } from './helpers/etcd-stores.js';
import { captureLog } from './helpers/keyserver.js';
import { waitFor } from './helpers/proxy-cluster.js';

// The fleet store under faults, against a real etcd (one member): a lock
// holder paused past its lease, a watch whose revision was compacted away.
const lab = etcdStoresForFile('/f/', 2_000);
const client = (): Etcd3 => lab().client();
const store = (prefix: string, name: string, changes: StoreChange[] = []): Promise<EtcdStore> => lab().store(prefix, name, changes);

/** `real`, whose locks run `pause` right after their acquisition transaction succeeded (before the holder reads its fence). */
function pausingAfterAcquire(real: Etcd3, pause: (lock: Lock) => Promise<void>): Etcd3 {
  return new Proxy(real, {
    get(target, property) {
      if (property === 'lock') {
        return (key: string) => {
          const lock = target.lock(key);
          const acquire = lock.acquire.bind(lock);
          lock.acquire = async () => {
            const got = await acquire();
            await pause(lock);
            return got;
          };
          return lock;
        };
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

describe('a lock holder paused past its lease', () => {
  it('does not take the fence of the node that took the lock meanwhile', async () => {
    const etcdA = client();
    const etcdB = client();
    const key = '/f/locks/issue/paused.example';
    let other: Awaited<ReturnType<typeof acquireLock>>;
    // A's lease ends right after its transaction (as a pause longer than the TTL would), and B takes the lock.
    const pausedA = pausingAfterAcquire(etcdA, async (lock) => {
      await lock.release();
      other = await acquireLock(etcdB, key, { ttlSeconds: 10, waitMs: 0 });
    });
    const mine = await acquireLock(pausedA, key, { ttlSeconds: 10, waitMs: 0 });
    expect(other!).toBeDefined();
    // A does not hold it: B does, and only B's writes pass the fence.
    expect(mine).toBeUndefined();
    expect(await fencedPut(etcdB, other!, '/f/owner', 'b')).toBeGreaterThan(0);
    expect(await etcdA.get('/f/owner').string()).toBe('b');
    await other!.release();
  });
});

describe('a watch whose revision was compacted away', () => {
  it('is replaced from a fresh snapshot: the node keeps following etcd', async () => {
    const changes: StoreChange[] = [];
    const node = await store('/c/', 'compacted', changes);
    const writer = client();
    await writer.put('/c/acme/before').value('1').exec();
    await waitFor('the first write', () => node.item('acme/before'), 10_000);
    // Writes elsewhere in etcd, then a compaction, pass the revision this
    // node's watch would resume from (a watch on the prefix sees nothing of
    // them). Then the watch stream drops (a network blip): etcd3 re-creates
    // the watch from that revision, and etcd answers "created" and
    // "canceled" at once (compacted).
    await writer.put('/elsewhere/x').value('1').exec();
    const put = await writer.put('/elsewhere/x').value('2').exec();
    await writer.kv.compact({ revision: put.header.revision, physical: true });
    // Meanwhile this node waits for a lock another node holds (lock.ts watches its key on the same client).
    const waiting = await node.client.watch().key('/c/locks/issue/held.example').create();
    const manager = (node.client as unknown as { watchManager: { handleError(err: Error): void } }).watchManager;
    manager.handleError(new Error('test: the watch stream dropped'));
    // Well after the re-created watch was cancelled and a probe resynced.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    await writer.put('/c/acme/after').value('3').exec();
    await waitFor('a write after the compaction', () => node.item('acme/after'), 10_000);
    expect(node.health.up).toBe(true);
    void waiting.cancel().catch(() => undefined);
  }, 30_000);
});

describe('a lock whose acquisition’s answer is lost, and one released while etcd stalls', () => {
  it('are freed well before their leases would end: the revocations are tried again once etcd answers', async () => {
    const member = lab().etcd.members[0]!;
    const key = '/f/locks/issue/stalled.example';
    const releasedKey = '/f/locks/issue/released.example';
    const node = lab().client(300);
    const holder = await acquireLock(node, releasedKey, { ttlSeconds: 60, waitMs: 0 });
    expect(holder).toBeDefined();
    // etcd stalls right after the acquisition's transaction took the key (a GC pause, a stalled disk): the holder's read
    // of its fence gets no answer within the deadline (short here: etcd3 tries a call several times), and the
    // acquisition fails. Its revocation, sent at once, fails too: etcd is stalled. So does the release of a lock the
    // node held, done meanwhile.
    const stalling = pausingAfterAcquire(node, async () => member.stall());
    let failed: unknown;
    try {
      failed = await acquireLock(stalling, key, { ttlSeconds: 60, waitMs: 0 }).catch((err: unknown) => err);
      // Callers never let a release fail them (issuance-locks.ts, tickets.ts).
      await holder!.release().catch(() => undefined);
    } finally {
      member.resume();
    }
    expect(failed).toBeInstanceOf(Error);
    // Nobody holds a lock that failed to be taken, or was released: another node takes each long before the leases' 60 s
    // run out (it waited that long when a revocation was tried once). The failed one's keepalive, left running, once
    // renewed it for as long as the process lived.
    const started = Date.now();
    const others = await Promise.all([key, releasedKey].map((k) => acquireLock(client(), k, { ttlSeconds: 10, waitMs: 20_000 })));
    expect(others.map((other) => other !== undefined)).toEqual([true, true]);
    expect(Date.now() - started).toBeLessThan(20_000);
    for (const other of others) await other!.release();
  }, 40_000);
});

describe('etcd back after a stall that failed calls past their deadline', () => {
  it('takes the next call at once, not after the etcd client’s pause on the member', async () => {
    const member = lab().etcd.members[0]!;
    const node = lab().client(300);
    await node.put('/f/breaker').value('before').exec();
    // The put is tried three times by etcd3, each past its deadline: three failures in a row on the only member. Its
    // own key: the member takes those puts once it resumes, each on its own goroutine, so one of them may land after
    // the first put sent after it (seen once in CI, under load).
    member.stall();
    try {
      await node
        .put('/f/breaker-stalled')
        .value('during')
        .exec()
        .catch(() => undefined);
    } finally {
      member.resume();
    }
    const resumed = performance.now();
    await waitFor(
      'a write to go through',
      () =>
        node
          .put('/f/breaker')
          .value('after')
          .exec()
          .then(
            () => true,
            () => undefined,
          ),
      10_000,
    );
    const ms = Math.round(performance.now() - resumed);
    console.log(`a write went through ${ms} ms after etcd resumed`);
    // Before: etcd3's circuit breaker refused every call to the member for 5 s after the third failure (measured 3.6 s
    // after a 2 s stall ended); no other member could take them.
    expect(ms).toBeLessThan(2_500);
    expect(await node.get('/f/breaker').string()).toBe('after');
  }, 20_000);
});

describe('a member that takes connections and never answers, beside one that answers', () => {
  it('is skipped after its calls failed: the calls go to the member that answers', async () => {
    // A member partitioned away, or stalled: its calls end at their deadline, and the store's caller with them.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const endpoints = [`http://127.0.0.1:${(silent.address() as { port: number }).port}`, ...lab().etcd.endpoints];
    const { maxRequestBytes } = PROXY_DEFAULTS.etcdSettings;
    // A deadline no write to the member that answers comes near, loaded machine or not.
    const timeoutMs = 1_000;
    const node = etcdClient({ endpoints, prefix: '/f/', tls: null, auth: null, timeoutMs, maxRequestBytes }, 'test');
    // With two members a try has half the deadline, and a call whose try the silent member let run out goes on to the
    // member that answers in time (the store's call would succeed): given one try's time, a write shows where it went.
    const write = (i: number): Promise<boolean> =>
      etcdCall('write', timeoutMs / 2, () => node.put('/f/two-members').value(String(i)).exec()).then(
        () => true,
        () => false,
      );
    try {
      // etcd3 picks a member at random for each call: those sent to the silent one fail at their deadline, until it has
      // failed three times in a row.
      let failed = 0;
      let i = 0;
      while (failed < 3 && i < 60) if (!(await write(i++))) failed++;
      expect(failed).toBe(3);
      // Its third failure is counted when etcd3's deadline ends the call, a moment after the store's own.
      await new Promise((resolve) => setTimeout(resolve, 100));
      const outcomes: boolean[] = [];
      for (let n = 0; n < 10; n++) outcomes.push(await write(i++));
      // Skipped (5 s): every write goes to the member that answers. With no breaker, about half of them failed.
      expect(outcomes).toEqual(Array(10).fill(true));
    } finally {
      node.close();
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  }, 20_000);
});

describe('a lock whose lease ends while etcd stalls past its TTL', () => {
  it('says so to its holder, once, whose fenced write is then refused without asking etcd; another node takes the lock', async () => {
    const member = lab().etcd.members[0]!;
    const key = '/f/locks/issue/lost.example';
    const logs = captureLog('warn');
    const mine = await acquireLock(lab().client(300), key, { ttlSeconds: 2, waitMs: 0 }, logs.logger);
    expect(mine).toBeDefined();
    // etcd stalls past the lease's TTL (a GC pause, a stalled disk): the keepalives get no answer, and once etcd runs
    // again its lease has run out; the holder's next keepalive is answered that it is gone.
    member.stall();
    try {
      await new Promise((resolve) => setTimeout(resolve, 3_000));
    } finally {
      member.resume();
    }
    await waitFor('the holder to learn it lost the lock', () => (mine!.lost?.aborted ? true : undefined), 10_000);
    expect(mine!.lost.reason).toBeInstanceOf(StoreUnavailableError);
    expect((mine!.lost.reason as Error).message).toContain(key);
    expect(logs.find(/a fleet lock was lost/).map((l) => l.lock)).toEqual([key]);
    // Nothing listened: the holder carried on, its work outside etcd done while another node held the lock.
    const other = await acquireLock(client(), key, { ttlSeconds: 10, waitMs: 5_000 });
    expect(other).toBeDefined();
    expect(await fencedPut(client(), mine!, '/f/lost-owner', 'a')).toBeUndefined();
    await other!.release();
  }, 30_000);
});

describe('a write whose answer is lost (etcd stalls as it is sent)', () => {
  it('does not say nothing was written: the stalled member takes it once it runs again', async () => {
    const member = lab().etcd.members[0]!;
    const node = await store('/lost-answer/', 'lost-answer');
    member.stall();
    let err: unknown;
    try {
      err = await node.write('late', 'a chain', {}, 0).catch((e: unknown) => e);
    } finally {
      member.resume();
    }
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as Error).message).toMatch(/could not write certs\/late: no answer within 2000 ms; its answer was lost, so etcd may have taken it/);
    // And so it did: every node (this one's watch included) gets it once etcd answers.
    await waitFor('the write to reach the mirror', () => (node.has('late') ? true : undefined), 15_000);
    // A change refused while etcd is known to be away was never sent: its refusal says nothing of the kind.
    member.stall();
    try {
      await waitFor('the store to see etcd away', () => (node.health.up ? undefined : true), 15_000);
      const refused = await node.write('never', 'a chain', {}, 0).catch((e: unknown) => e);
      expect((refused as Error).message).not.toContain('may have taken it');
    } finally {
      member.resume();
    }
    await waitFor('the store to see etcd back', () => (node.health.up ? true : undefined), 15_000);
  }, 60_000);
});

describe('a wait for a lock while etcd stalls', () => {
  it('ends within its bound: the waiter is not held by etcd’s silence', async () => {
    const member = lab().etcd.members[0]!;
    const key = '/f/locks/issue/waited.example';
    const holder = await acquireLock(client(), key, { ttlSeconds: 10, waitMs: 0 });
    expect(holder).toBeDefined();
    // The waiter's watch on the lock key is set up, then etcd stalls (a GC pause, a stalled disk) while it waits.
    let watching!: () => void;
    const watches = new Promise<void>((resolve) => (watching = resolve));
    const waiter = new Proxy(lab().client(300), {
      get(target, property) {
        if (property === 'watch') {
          watching();
          return () => target.watch();
        }
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const started = Date.now();
    const waited = acquireLock(waiter, key, { ttlSeconds: 10, waitMs: 1_000 }).then(
      (lock) => ({ lock }),
      (err: unknown) => ({ err }),
    );
    await watches;
    await new Promise((resolve) => setTimeout(resolve, 200));
    member.stall();
    try {
      const outcome = await Promise.race([waited, new Promise((resolve) => setTimeout(() => resolve('still waiting'), 8_000))]);
      // Not held (etcd answers nothing): refused, within the wait and a few call deadlines.
      expect(outcome).not.toBe('still waiting');
      expect(outcome).not.toHaveProperty('lock.fence');
      expect(Date.now() - started).toBeLessThan(8_000);
    } finally {
      member.resume();
    }
    await lab().etcd.healthy(30_000);
    await holder!.release();
  }, 30_000);
});

describe('a large fleet state', () => {
  it('is read whole at start past gRPC’s 4 MiB default answer size', async () => {
    const writer = client();
    // 48 entries of 100 KB (under etcd's 1.5 MiB request limit each): 4.8 MB in one range read.
    const big = 'x'.repeat(100_000);
    for (let i = 0; i < 48; i++) await writer.put(`/big/acme/entry-${i}`).value(big).exec();
    const node = await store('/big/', 'big');
    expect(node.health.reason).toBeUndefined();
    expect(node.health.up).toBe(true);
    expect(node.keys('acme/')).toHaveLength(48);
  }, 60_000);
});

describe('an issuance lock taken on a mirror that does not catch up', () => {
  // A node's watch that brings nothing (a watch that stopped delivering): its mirror misses other nodes' writes.
  const deafClient = (): Etcd3 =>
    new Proxy(client(), {
      get(target, property) {
        if (property === 'watch') {
          return () => {
            const builder = target.watch();
            return new Proxy(builder, {
              get(b, p) {
                if (p === 'prefix') return () => b.prefix('/nowhere/');
                const value = Reflect.get(b, p, b) as unknown;
                return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(b) : value;
              },
            });
          };
        }
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });

  it('refuses the work instead of running it on an older state', async () => {
    const writer = client();
    const nodeA = await lab().store('/l/', 'deaf', [], deafClient());
    // Node B registers the account under the lock, and releases it.
    const lockB = await acquireLock(writer, '/l/locks/acme/account', { ttlSeconds: 10, waitMs: 0 });
    await writer.put('/l/acme/account').value('{"registered":"by B"}').exec();
    await lockB!.release();
    let ran = false;
    const held = fleetLocks(nodeA, () => undefined).hold('acme/account', 0, async () => {
      ran = true;
      return nodeA.item('acme/account');
    });
    await expect(held).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(ran).toBe(false);
    // The lock was released: node B takes it again at once.
    const again = await acquireLock(writer, '/l/locks/acme/account', { ttlSeconds: 10, waitMs: 0 });
    expect(again).toBeDefined();
    await again!.release();
  }, 30_000);

  it('is not taken for caught up by a write of its own: the writes of other nodes before it are still missing', async () => {
    const writer = client();
    const nodeA = await lab().store('/l2/', 'deaf-own', [], deafClient());
    // Node B stores the account; then node A writes something of its own (a challenge of another order, say).
    const other = await writer.put('/l2/acme/account').value('{"registered":"by B"}').exec();
    const own = await nodeA.put('routes/a.example', JSON.stringify({ name: 'a.example', origin: 'http://127.0.0.1:1' }));
    expect(own).toBeGreaterThan(Number(other.header.revision));
    // What a new lock holder asks before it works (issuance-locks.ts): the mirror holds node A's write, not node B's before it.
    expect(nodeA.item('acme/account')).toBeUndefined();
    expect(await nodeA.reached(Number(other.header.revision), 300)).toBe(false);
  }, 30_000);
});

describe('a ticket-key rotation when etcd goes away under it', () => {
  it('fails with the store’s own error, naming what it did and no key', async () => {
    let killEtcd = false;
    // etcd dies right after the rotation lock is taken, before the store's probe can notice.
    const dying = pausingAfterAcquire(client(), async () => {
      if (killEtcd) await lab().etcd.members[0]!.kill();
    });
    const node = await lab().store('/tickets-gone/', 'tickets-gone', [], dying);
    expect(await rotateSharedTicketKeys(node, { force: true, periodMs: 0, waitMs: 0 })).toBe('rotated');
    const ring = sharedTicketKeys(node)!.keys.map((k) => k.toString('base64'));
    killEtcd = true;
    try {
      const err = await rotateSharedTicketKeys(node, { force: true, periodMs: 0, waitMs: 0 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StoreUnavailableError);
      expect((err as Error).message).toMatch(
        /^the fleet's store \(etcd\) could not (lock ticket-rotation|read the session-ticket key ring|write the session-ticket key ring): /,
      );
      for (const key of ring) expect(JSON.stringify({ message: (err as Error).message, cause: String((err as Error).cause) })).not.toContain(key);
    } finally {
      lab().etcd.members[0]!.start();
      await lab().etcd.healthy(30_000);
    }
  }, 60_000);
});
