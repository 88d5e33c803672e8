import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { PROXY_DEFAULTS } from '../config/proxy-schema.js';
import { CACHE_FILE } from '../proxy/store/cache.js';
import type { EtcdStore, StoreChange } from '../proxy/store/etcd-store.js';
import { acquireLock, fencedPut } from '../proxy/store/lock.js';
import { StoreConflictError, StoreUnavailableError, StoreValueTooLargeError } from '../proxy/store/storage.js';
import { rotateSharedTicketKeys, sharedTicketKeys } from '../proxy/store/tickets.js';
import { TICKET_KEY_BYTES, TICKET_KEYS_KEPT, TicketKeyRing } from '../proxy/tls/tickets.js';
import { CertificateError } from '../proxy/certs/errors.js';
import { loadIssuerPool } from '../proxy/certs/issuers.js';
import { putCertificate } from '../proxy/certs/manage.js';
import { prepareServing, type SeenStat } from '../proxy/serving/prepare.js';
import type { ValidationContext } from '../proxy/certs/validate.js';
import { etcdStoresForFile } from './helpers/etcd-stores.js';
import { createCa, issue } from './helpers/pki.js';
import { waitFor } from './helpers/proxy-cluster.js';

// The fleet store's parts against a real etcd (one member: these are not
// about quorum): the fenced lock, the mirror and its cache, the revision floor,
// two nodes' uploads of one entry at once.
const lab = etcdStoresForFile('/t/', 1_000);
const client = (): Etcd3 => lab().client();
const store = (prefix: string, name: string, changes: StoreChange[] = []): Promise<EtcdStore> => lab().store(prefix, name, changes);

describe('the fenced etcd lock', () => {
  it('blocks a second taker until the first releases, with a larger fencing token, and refuses a stale holder', async () => {
    const etcdA = client();
    const etcdB = client();
    const first = await acquireLock(etcdA, '/t/locks/issue/example.com', { ttlSeconds: 10, waitMs: 0 });
    expect(first).toBeDefined();
    // A try finds it held.
    expect(await acquireLock(etcdB, '/t/locks/issue/example.com', { ttlSeconds: 10, waitMs: 0 })).toBeUndefined();
    const started = Date.now();
    const second = acquireLock(etcdB, '/t/locks/issue/example.com', { ttlSeconds: 10, waitMs: 20_000 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await fencedPut(etcdA, first!, '/t/owner', 'a')).toBeGreaterThan(0);
    await first!.release();
    const held = await second;
    expect(held).toBeDefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(BigInt(held!.fence)).toBeGreaterThan(BigInt(first!.fence));
    // The first holder's token no longer fences anything.
    expect(await fencedPut(etcdA, first!, '/t/owner', 'stale')).toBeUndefined();
    expect(await fencedPut(etcdB, held!, '/t/owner', 'b')).toBeGreaterThan(0);
    expect(await etcdA.get('/t/owner').string()).toBe('b');
    await held!.release();
  });
});

describe('the fleet store mirror', () => {
  it('follows writes of other nodes in order, caches certificates and routes but never the ticket keys', async () => {
    const changes: StoreChange[] = [];
    const a = await store('/fleet-a/', 'a', changes);
    const b = await store('/fleet-a/', 'b');
    expect(a.health.up).toBe(true);
    await b.write('site', '-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n', { names: ['site.test'] });
    await waitFor('the write to reach the other store', () => (a.has('site') ? true : undefined));
    expect(a.read('site').meta).toEqual({ names: ['site.test'] });
    expect(a.list().map((r) => r.name)).toEqual(['site']);
    expect(changes).toContain('certificates');
    expect(await rotateSharedTicketKeys(b, { force: false, periodMs: 3_600_000, waitMs: 5_000 })).toBe('rotated');
    await waitFor('the ring to reach the other store', () => sharedTicketKeys(a));
    expect(sharedTicketKeys(a)!.keys).toHaveLength(1);
    // Not due again within the period: one rotation per period, whichever node asks.
    expect(await rotateSharedTicketKeys(a, { force: false, periodMs: 3_600_000, waitMs: 5_000 })).toBe('not-due');
    const cache = await waitFor('the cache file', () => {
      try {
        return readFileSync(join(lab().dir, 'a', CACHE_FILE), 'utf8');
      } catch {
        return undefined;
      }
    });
    expect(cache).toContain('certs/site');
    expect(cache).not.toContain('tickets');
    const key = sharedTicketKeys(a)!.keys[0]!.toString('base64');
    expect(cache).not.toContain(key);

    // The per-name lock behind the store (certificate orders): one node at a time, never in the mirror.
    const held = await a.lock('issue/site.test', { ttlSeconds: 10, waitMs: 0 });
    expect(held).toBeDefined();
    expect(await b.lock('issue/site.test', { ttlSeconds: 10, waitMs: 0 })).toBeUndefined();
    expect(a.keys('locks/')).toEqual([]);
    await held!.release();
    const next = await b.lock('issue/site.test', { ttlSeconds: 10, waitMs: 5_000 });
    expect(next).toBeDefined();
    await next!.release();
  });

  it('writes its cache within seconds of a change though changes keep coming faster than its debounce', async () => {
    const cacheFile = join(lab().dir, 'storm', CACHE_FILE);
    await store('/fleet-storm/', 'storm');
    const writer = client();
    // A writer rewriting one entry every 100 ms (a broken node in a loop): each change came before the debounce ran out.
    let n = 0;
    let writing = true;
    const storm = (async () => {
      while (writing) {
        await writer.put('/fleet-storm/certs/busy').value(JSON.stringify({ chain: `v${n++}`, meta: {} }));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    try {
      const cached = await waitFor(
        'the cache file while the storm lasts',
        () => {
          try {
            return readFileSync(cacheFile, 'utf8');
          } catch {
            return undefined;
          }
        },
        6_000,
      ).catch(() => 'not written');
      expect(cached === 'not written' ? cached : cached.includes('certs/busy')).toBe(true);
    } finally {
      writing = false;
      await storm;
    }
  });

  it('rotates a ticket key ring dated far ahead of its clock (written under a clock that was off); one seconds ahead is recent', async () => {
    const node = await store('/fleet-ring/', 'ring');
    const raw = client();
    const old = randomBytes(TICKET_KEY_BYTES);
    const ring = (aheadMs: number): string => JSON.stringify({ keys: [old.toString('base64')], rotatedAt: new Date(Date.now() + aheadMs).toISOString() });
    // Within the skew of a fleet's clocks: recent.
    await raw.put('/fleet-ring/tickets').value(ring(30_000));
    expect(await rotateSharedTicketKeys(node, { force: false, periodMs: 3_600_000, waitMs: 5_000 })).toBe('not-due');
    // A year ahead (a node booted with a bad RTC): due now, else no node would rotate for a year.
    await raw.put('/fleet-ring/tickets').value(ring(365 * 86_400_000));
    expect(await rotateSharedTicketKeys(node, { force: false, periodMs: 3_600_000, waitMs: 5_000 })).toBe('rotated');
    const now = sharedTicketKeys(node)!;
    expect(now.keys.length === 2 && now.keys[1]!.equals(old) && Math.abs(now.rotatedAt - Date.now()) < 60_000).toBe(true);
  });

  it('takes the newest keys of a ring longer than a ring holds (written by hand), as a ring every node can use', async () => {
    const node = await store('/fleet-long-ring/', 'long');
    const raw = client();
    const keys = Array.from({ length: 17 }, () => randomBytes(TICKET_KEY_BYTES));
    await raw.put('/fleet-long-ring/tickets').value(JSON.stringify({ keys: keys.map((k) => k.toString('base64')), rotatedAt: new Date().toISOString() }));
    expect(await rotateSharedTicketKeys(node, { force: false, periodMs: 3_600_000, waitMs: 5_000 })).toBe('not-due');
    const ring = sharedTicketKeys(node)!;
    // Taken whole, it was more keys than a ring takes: the primary's replace threw, at start (no node started) and
    // from the watch (an unhandled rejection: every node of the fleet stopped).
    const mine = new TicketKeyRing();
    expect(() => mine.replace(ring.keys)).not.toThrow();
    expect(ring.keys).toHaveLength(TICKET_KEYS_KEPT);
    expect(ring.keys[0]!.equals(keys[0]!)).toBe(true);
  });

  it('drops a change older than what it holds', async () => {
    const a = await store('/fleet-b/', 'order');
    a.applyLocal('certs/x', 'new', 1_000_000);
    a.applyLocal('certs/x', 'old', 999_999);
    expect(a.item('certs/x')?.value).toBe('new');
  });

  it('refuses an etcd state older than one it served, keeps serving its own and refuses writes', async () => {
    const cacheFile = join(lab().dir, 'ahead', CACHE_FILE);
    const entry = JSON.stringify({ chain: 'cached chain', meta: {} });
    // A cache from a revision etcd has not reached (etcd restored from an older backup, say).
    mkdirSync(join(lab().dir, 'ahead'), { recursive: true });
    writeFileSync(
      cacheFile,
      JSON.stringify({
        prefix: '/fleet-c/',
        revision: 1_000_000_000,
        entries: {
          'certs/kept': { value: entry, modRevision: 999_999_999 },
          // Hand-edited entries that are not a value with its revision: left out, not served, no reload throws on them.
          'certs/number': 5,
          'certs/null': null,
          'certs/no-value': { modRevision: 3 },
          'routes/number-value': { value: 3, modRevision: 4 },
        },
      }),
      { flag: 'w' },
    );
    const ahead = await store('/fleet-c/', 'ahead');
    expect(ahead.health.up).toBe(false);
    expect(ahead.health.reason).toMatch(/older than revision 1000000000 this node already served/);
    expect(ahead.read('kept').chainText).toBe('cached chain');
    expect(ahead.list().map((r) => r.name)).toEqual(['kept']);
    expect(ahead.keys('routes/')).toEqual([]);
    const refused = await ahead.write('other', 'x', {}).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(StoreUnavailableError);
    expect((refused as StoreUnavailableError).code).toBe('KEYEDGE_ERR_STORE_UNAVAILABLE');
  });
});

describe('two nodes uploading one entry at once', () => {
  it('stores the write that lands first; the other, validated against the entry before it, is refused and writes nothing', async () => {
    const a = await store('/fleet-race/', 'race-a');
    const b = await store('/fleet-race/', 'race-b');
    const ca = await createCa('Race CA');
    const caFile = join(lab().dir, 'race-ca.pem');
    writeFileSync(caFile, ca.certPem);
    const both = await issue(ca, { commonName: 'race.test', dnsNames: ['race.test', 'www.race.test'], keyAlgorithm: 'ec-p256' });
    const narrow = await issue(ca, { commonName: 'race.test', dnsNames: ['race.test'], keyAlgorithm: 'ec-p256' });
    // A key server holding every key; `gate`, when given, holds the validation until it resolves.
    const context = (gate?: { entered: () => void; release: Promise<void> }): ValidationContext => ({
      now: new Date(),
      issuers: loadIssuerPool(caFile, 'proxy.json'),
      keyserverSpki: async (_keyId, leafSpki) => {
        gate?.entered();
        await gate?.release;
        return leafSpki;
      },
    });
    const upload = (on: EtcdStore, chainText: string, ctx: ValidationContext, mode: 'add' | 'replace' = 'add') =>
      putCertificate(on, { mode, name: 'race', chainText, source: 'admin API' }, ctx);

    // Node B's upload (a new entry for race.test alone) is validated against the entry's absence...
    let entered!: () => void;
    const validating = new Promise<void>((resolve) => {
      entered = resolve;
    });
    let release!: () => void;
    const fromB = upload(b, narrow.certPem, context({ entered, release: new Promise<void>((resolve) => (release = resolve)) })).catch((err: unknown) => err);
    await validating;
    // ...then node A's (both names) is stored, and node B's mirror sees it, before node B writes.
    await upload(a, both.certPem, context());
    await waitFor('node B to mirror node A’s write', () => (b.has('race') ? true : undefined));
    release();
    const refused = await fromB;
    expect(refused).toBeInstanceOf(StoreConflictError);
    expect((refused as StoreConflictError).code).toBe('KEYEDGE_ERR_STORE_CONFLICT');
    expect((refused as Error).message).toMatch(/'race' changed .*another node wrote it/);
    // The entry holds node A's chain and the names it pinned, on both nodes and in etcd.
    const stored = JSON.parse((await lab().client().get('/fleet-race/certs/race').string())!) as { chain: string; meta: { names: string[] } };
    expect(new X509Certificate(stored.chain).fingerprint256).toBe(new X509Certificate(both.certPem).fingerprint256);
    expect(stored.meta.names).toEqual(['race.test', 'www.race.test']);
    expect(b.read('race').chainText).toBe(stored.chain);
    expect(b.read('race').meta.names).toEqual(['race.test', 'www.race.test']);
    // Retried, node B's upload is judged against what node A pinned: it drops a name, so it is refused for that.
    const retried = await upload(b, narrow.certPem, context(), 'replace').catch((err: unknown) => err);
    expect(retried).toBeInstanceOf(CertificateError);
    expect((retried as CertificateError).reason).toBe('names');

    // An issuance-locked (ACME) write is conditional too: another node's upload in between refuses it, not as a lost lock.
    const lock = await b.lock('acme/issue/race.test', { ttlSeconds: 10, waitMs: 0 });
    const read = b.version('race');
    await upload(a, both.certPem, context(), 'replace');
    const renewal = await Promise.resolve(b.fenced(lock!).write('race', narrow.certPem, { names: ['race.test'] }, read)).catch((err: unknown) => err);
    expect(renewal).toBeInstanceOf(StoreConflictError);
    await lock!.release();
    // A lost lock still refuses it as one, whatever the revision.
    const late = await Promise.resolve(b.fenced(lock!).write('race', narrow.certPem, { names: ['race.test'] }, a.version('race'))).catch((err: unknown) => err);
    expect(late).toBeInstanceOf(StoreUnavailableError);
    expect((late as Error).message).toMatch(/lock .* was lost/);
    expect(JSON.parse((await lab().client().get('/fleet-race/certs/race').string())!).meta.names).toEqual(['race.test', 'www.race.test']);
  });
});

describe('keys below certs/ written by hand or by a broken node', () => {
  it('are each refused once, named with where they are, whatever their name: not left out unsaid, nor read again by every pass', async () => {
    const raw = client();
    const long = `www.${'long-'.repeat(13)}example.com`;
    const entry = JSON.stringify({ chain: '-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n', meta: {} });
    await raw.put(`/fleet-names/certs/${long}`).value(entry);
    await raw.put('/fleet-names/certs/nested/entry').value(entry);
    await raw.put('/fleet-names/certs/garbage').value(Buffer.from([0xff, 0xfe, 0x00, 0x7b]));
    const fleet = await store('/fleet-names/', 'names');
    const config = loadProxyConfig(undefined, { stateDir: join(lab().dir, 'names-state') });
    const seen = new Map<string, SeenStat>();
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const first = await prepareServing({ config, store: fleet, previous: new Map(), seen, validation });
    const said = Object.fromEntries(first.refused.map((r) => [r.name, `${r.source}: ${r.message}`]));
    expect(Object.keys(said).sort()).toEqual(['garbage', 'nested/entry', long].sort());
    expect(said[long]).toContain(
      `etcd:/fleet-names/certs/${long}: certificate '${long}' (etcd:/fleet-names/certs/${long}): "${long}" is not a certificate entry name`,
    );
    expect(said['nested/entry']).toContain('"nested/entry" is not a certificate entry name');
    expect(said.garbage).toContain('etcd:/fleet-names/certs/garbage');

    // The next pass (any change anywhere in the fleet's etcd): nothing new to say about them.
    const again = await prepareServing({ config, store: fleet, previous: first.records, seen, validation });
    expect(again.refused).toEqual([]);
    expect([...again.present].sort()).toEqual(['garbage', 'nested/entry', long].sort());
  });

  it('refuse a chain past the store directory’s 1 MiB unread, as a chain file is: etcd’s 1.5 MiB let it be judged', async () => {
    const ca = await createCa('Huge CA');
    const leaf = await issue(ca, { commonName: 'huge.test', dnsNames: ['huge.test'], keyAlgorithm: 'ec-p256' });
    // A valid chain, then 1.1 MB of junk: served as its chain, and by every node, though no file of it would be read.
    const value = JSON.stringify({ chain: `${leaf.certPem}\n${ca.certPem}\n${'x'.repeat(1_100_000)}`, meta: {} });
    await client().put('/fleet-huge/certs/huge').value(value);
    const fleet = await store('/fleet-huge/', 'huge');
    const config = loadProxyConfig(undefined, { stateDir: join(lab().dir, 'huge-state') });
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const pass = await prepareServing({ config, store: fleet, previous: new Map(), seen: new Map(), validation });
    expect(pass.records.has('huge')).toBe(false);
    expect(pass.refused.map((r) => r.message)).toEqual([
      expect.stringMatching(/\(etcd:\/fleet-huge\/certs\/huge\): the chain is 11\d{5} bytes; a chain holds at most 1048576/),
    ]);
  });
});

describe('a value past etcd’s request limit', () => {
  it('is refused before it is sent, naming its key and size, and the store stays up', async () => {
    const a = await store('/fleet-big-value/', 'big-value');
    const huge = 'x'.repeat(2 * 1024 * 1024);
    const refusals = [
      await a.put('acme/huge', huge).catch((err: unknown) => err),
      await a.write('site', huge, { names: ['site.test'] }).catch((err: unknown) => err),
      await a.writeIf('acme/huge', huge, 0).catch((err: unknown) => err),
    ];
    for (const [err, key] of [
      [refusals[0], 'acme/huge'],
      [refusals[1], 'certs/site'],
      [refusals[2], 'acme/huge'],
    ] as const) {
      expect(err).toBeInstanceOf(StoreValueTooLargeError);
      expect((err as StoreValueTooLargeError).code).toBe('KEYEDGE_ERR_STORE_TOO_LARGE');
      expect((err as Error).message).toContain(`the value for ${key} is `);
      expect((err as Error).message).toMatch(/is 2097\d{3} bytes \(2\.00 MiB\), more than one etcd request may carry \(1\.50 MiB/);
    }
    // A request etcd itself refuses as too large (a transaction of several values, say) is told as such, not as etcd away.
    const byEtcd = await a
      .call('write acme/raw', () => a.client.put('/fleet-big-value/acme/raw').value(huge.slice(0, 1_600_000)).exec())
      .catch((e: unknown) => e);
    expect(byEtcd).toBeInstanceOf(StoreValueTooLargeError);
    expect((byEtcd as Error).message).toMatch(/refused to write acme\/raw: the request is larger than etcd accepts/);
    expect(a.health.up).toBe(true);
    expect(a.item('acme/huge')).toBeUndefined();
    expect(a.has('site')).toBe(false);
    expect(await a.put('acme/small', 'fits')).toBeGreaterThan(0);
  });

  it('is the config’s etcd.maxRequestBytes: a cluster run with a lower one has a value refused before it is sent, named', async () => {
    const settings = loadProxyConfig(undefined, { etcd: { endpoints: lab().etcd.endpoints, maxRequestBytes: 65_536 } }).etcd!;
    const small = await lab().store('/fleet-small-limit/', 'small-limit', [], lab().client(), { maxRequestBytes: settings.maxRequestBytes });
    const value = 'x'.repeat(100_000);
    const refused = await small.put('acme/value', value).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(StoreValueTooLargeError);
    expect((refused as Error).message).toMatch(/the value for acme\/value is 100\d{3} bytes .*\(0\.06 MiB, etcd\.maxRequestBytes/);
    expect(small.item('acme/value')).toBeUndefined();
    // The same value fits the default (etcd's own default, 1.5 MiB).
    expect(await (await store('/fleet-small-limit/', 'default-limit')).put('acme/value', value)).toBeGreaterThan(0);
  });
});

describe('the etcd config', () => {
  it('is off by default and resolved with its defaults when set', () => {
    expect(loadProxyConfig(undefined, {}).etcd).toBeNull();
    const config = loadProxyConfig(undefined, { etcd: { endpoints: ['http://127.0.0.1:2379/'] } });
    expect(config.etcd).toEqual({
      endpoints: ['http://127.0.0.1:2379'],
      prefix: '/keyedge/default/',
      tls: null,
      auth: null,
      timeoutMs: 2_000,
      maxRequestBytes: PROXY_DEFAULTS.etcdSettings.maxRequestBytes,
    });
    expect(PROXY_DEFAULTS.etcdSettings.maxRequestBytes).toBe(1.5 * 1024 * 1024);
    const raised = loadProxyConfig(undefined, { etcd: { endpoints: ['http://127.0.0.1:2379/'], maxRequestBytes: 10 * 1024 * 1024 } });
    expect(raised.etcd?.maxRequestBytes).toBe(10 * 1024 * 1024);
  });

  it('refuses a bad prefix, an https endpoint without a CA, and a client certificate without its key', () => {
    expect(() => loadProxyConfig(undefined, { etcd: { endpoints: ['http://e:2379'], prefix: 'keyedge' } })).toThrow(/etcd\.prefix.*starts and ends with "\/"/s);
    expect(() => loadProxyConfig(undefined, { etcd: { endpoints: ['https://e:2379'] } })).toThrow(/etcd\.tls.*need "tls"/s);
    expect(() => loadProxyConfig(undefined, { etcd: { endpoints: ['http://e:2379'], tls: { ca: 'ca.pem', cert: 'c.pem' } } })).toThrow(/both "cert" and "key"/);
    expect(() => loadProxyConfig(undefined, { etcd: { endpoints: ['ftp://e'] } })).toThrow(/etcd endpoint URL/);
    for (const bad of [0, 1024, 1.5, '1572864', 128 * 1024 * 1024]) {
      expect(() => loadProxyConfig(undefined, { etcd: { endpoints: ['http://e:2379'], maxRequestBytes: bad } })).toThrow(
        /etcd\.maxRequestBytes.*expected an integer from 65536 to 67108864/s,
      );
    }
  });
});
