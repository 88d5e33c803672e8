import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateStoreError } from '../proxy/certs/errors.js';
import { loadIssuerPool } from '../proxy/certs/issuers.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { VerdictCache } from '../proxy/certs/verdict-cache.js';
import { keepPacked, keptDir, loadKept } from '../proxy/serving/kept.js';
import { writePack } from '../proxy/serving/pack.js';
import { prepareServing, type SeenStat } from '../proxy/serving/prepare.js';
import * as x509 from '../keyserver/shared/x509.js';
import { createCa, type Issued, issue, issueCa, type TestCa } from './helpers/pki.js';

// Reading the store while a writer is still at it: a file is used only once
// two reads agree, and one that keeps changing is left for a later pass.

let dir: string;
let chain: string;
let issued: Issued;
let inter: TestCa;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-prepare-'));
  const root = await createCa('Prepare Root');
  inter = await issueCa(root, 'Prepare Intermediate');
  issued = await issue(inter, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
  chain = `${issued.certPem}\n${inter.certPem}`;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pass(storeDir: string, seen: Map<string, SeenStat>) {
  const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
  return prepareServing({
    config,
    store: new CertificateStore(storeDir),
    previous: new Map(),
    seen,
    // The leaf's own key: this is about reading, not about the key server.
    validation: { now: new Date(), keyserverSpki: async (_keyId, leafSpki) => leafSpki },
  });
}

describe('prepareServing and files being written', () => {
  it('leaves a file that keeps changing for a later pass instead of reading it half-way, then serves it once still', async () => {
    const storeDir = join(dir, 'changing');
    mkdirSync(storeDir, { recursive: true });
    const file = join(storeDir, 'x.pem');
    // A writer that rewrites the file every 40 ms, never whole until it stops.
    let step = 0;
    writeFileSync(file, chain.slice(0, 100));
    const writer = setInterval(() => writeFileSync(file, chain.slice(0, 100 + (++step % 50) * 10)), 40);
    const seen = new Map<string, SeenStat>();
    let busy: Awaited<ReturnType<typeof pass>>;
    try {
      busy = await pass(storeDir, seen);
    } finally {
      clearInterval(writer);
    }
    expect(busy.unsettled).toEqual(['x']);
    expect(busy.refused).toEqual([]);
    expect(busy.records.has('x')).toBe(false);
    expect(busy.warnings).toContainEqual({ name: 'x', message: expect.stringContaining('kept changing') });

    writeFileSync(file, chain);
    const still = await pass(storeDir, seen);
    expect(still.unsettled).toEqual([]);
    expect(still.refused).toEqual([]);
    expect(still.records.get('x')?.serial).toBe(issued.cert.serialNumber);
  });
});

/** A store that counts the entry files it reads. */
class CountingStore extends CertificateStore {
  reads: string[] = [];
  override read(name: string, withMeta?: boolean): ReturnType<CertificateStore['read']> {
    this.reads.push(name);
    return super.read(name, withMeta);
  }
  override readAsync(name: string, withMeta?: boolean): ReturnType<CertificateStore['readAsync']> {
    this.reads.push(name);
    return super.readAsync(name, withMeta);
  }
}

describe('prepareServing, a targeted pass', () => {
  it('looks at the named entries alone and answers for them alone: a removed one goes, the others are neither read nor copied', async () => {
    const storeDir = join(dir, 'targeted');
    mkdirSync(storeDir, { recursive: true });
    for (const name of ['a', 'b', 'c']) writeFileSync(join(storeDir, `${name}.pem`), chain);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const seen = new Map<string, SeenStat>();
    const store = new CountingStore(storeDir);
    const full = await prepareServing({ config, store, previous: new Map(), seen, validation });
    expect([...full.records.keys()].sort()).toEqual(['a', 'b', 'c']);

    // 'b' is removed and 'c' rewritten (unreadable now); only 'b' is named.
    rmSync(join(storeDir, 'b.pem'));
    writeFileSync(join(storeDir, 'c.pem'), 'not a chain');
    store.reads = [];
    const only = { names: new Set(['b']), followed: full.followed };
    const targeted = await prepareServing({ config, store, previous: full.records, seen, validation, only, storeDirId: full.storeDirId });
    expect(targeted.targeted).toBe(true);
    // Nothing for 'b' (gone), nothing about 'a' or 'c' (they carry over as they are: not read, not copied).
    expect([...targeted.records.keys()]).toEqual([]);
    expect([...targeted.present]).toEqual([]);
    expect(store.reads).toEqual([]);
    expect(targeted.refused).toEqual([]);

    // Named, 'c' is read and refused; its previous version keeps serving.
    const named = await prepareServing({
      config,
      store,
      previous: full.records,
      seen,
      validation,
      only: { names: new Set(['c']), followed: targeted.followed },
      storeDirId: full.storeDirId,
    });
    expect(named.refused.map((r) => r.name)).toEqual(['c']);
    expect(named.records.get('c')).toBe(full.records.get('c'));
    expect([...named.present]).toEqual(['c']);
  });
});

describe('prepareServing and a new entry refused as it is', () => {
  it('does not judge it again, nor report it again, until it changes: a fleet pass looks at every entry at each change', async () => {
    const storeDir = join(dir, 'refused-new');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'a.pem'), chain);
    // Its metadata pins a name the leaf does not cover: refused ('names'), whatever the clock or the key server say.
    writeFileSync(join(storeDir, 'bad.pem'), chain);
    writeFileSync(join(storeDir, 'bad.json'), JSON.stringify({ names: ['y.example'] }));
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    let asked = 0;
    const validation = {
      now: new Date(),
      keyserverSpki: async (_keyId: string, leafSpki: Buffer) => {
        asked++;
        return leafSpki;
      },
    };
    const seen = new Map<string, SeenStat>();
    const store = new CountingStore(storeDir);
    const first = await prepareServing({ config, store, previous: new Map(), seen, validation });
    expect(first.refused.map((r) => `${r.name}: ${r.reason}`)).toEqual(['bad: names']);
    expect([...first.records.keys()]).toEqual(['a']);

    // A whole pass (a rescan, any change in a fleet's etcd): neither read nor judged, nor reported, yet still present.
    store.reads = [];
    asked = 0;
    const again = await prepareServing({ config, store, previous: first.records, seen, validation });
    expect(store.reads).toEqual([]);
    expect(asked).toBe(0);
    expect(again.refused).toEqual([]);
    expect([...again.present].sort()).toEqual(['a', 'bad']);
    expect([...again.records.keys()]).toEqual(['a']);

    // Changed: judged again, and served once good.
    writeFileSync(join(storeDir, 'bad.json'), JSON.stringify({ names: ['x.example'] }));
    const fixed = await prepareServing({ config, store, previous: again.records, seen, validation });
    expect(fixed.refused).toEqual([]);
    expect(fixed.changed).toEqual(['bad']);
  });
});

describe('prepareServing, a store directory another one took the place of', () => {
  it('refuses an empty one while entries serve, takes one holding certificates whole, and the same directory emptied', async () => {
    const storeDir = join(dir, 'replaced');
    mkdirSync(storeDir, { recursive: true });
    for (const name of ['a', 'b']) writeFileSync(join(storeDir, `${name}.pem`), chain);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const store = new CertificateStore(storeDir);
    const pass = (previous: Awaited<ReturnType<typeof prepareServing>>, names?: string[]) =>
      prepareServing({
        config,
        store,
        previous: previous.records,
        seen: new Map(),
        validation,
        storeDirId: previous.storeDirId,
        ...(names === undefined ? {} : { only: { names: new Set(names), followed: [] } }),
      });
    const first = await prepareServing({ config, store, previous: new Map(), seen: new Map(), validation });
    expect([...first.records.keys()]).toEqual(['a', 'b']);

    // `mv certs certs.old && mkdir certs`: refused whole, naming the directory, by a pass over it or one naming an entry.
    renameSync(storeDir, `${storeDir}.old`);
    mkdirSync(storeDir);
    for (const names of [undefined, ['a']]) {
      const refused = await pass(first, names).catch((err: unknown) => err);
      expect(refused).toBeInstanceOf(CertificateStoreError);
      expect(refused).toMatchObject({ code: 'KEYEDGE_ERR_CERT_STORE_GONE' });
      expect((refused as Error).message).toContain(`the certificate store ${storeDir} was replaced by another directory holding no certificate`);
    }

    // A certificate in it: the new directory is the store, looked at whole even by a pass that named one entry.
    writeFileSync(join(storeDir, 'c.pem'), chain);
    const taken = await pass(first, ['c']);
    expect(taken.targeted).toBe(false);
    expect([...taken.records.keys()]).toEqual(['c']);
    expect([...taken.present]).toEqual(['c']);
    expect(taken.storeDirId).not.toBe(first.storeDirId);

    // Its last entry removed in place: an empty store, taken.
    rmSync(join(storeDir, 'c.pem'));
    const emptied = await pass(taken);
    expect([...emptied.records.keys()]).toEqual([]);
  });
});

describe('prepareServing and the issuer pool', () => {
  it('judges a renewal refused incomplete_chain again once certStore.intermediates completes it, while the old version serves', async () => {
    const storeDir = join(dir, 'pool-store');
    mkdirSync(storeDir, { recursive: true });
    const poolFile = join(dir, 'pool-intermediates.pem');
    const unrelated = await issueCa(await createCa('Pool Other Root'), 'Pool Other Intermediate');
    writeFileSync(poolFile, unrelated.certPem);
    writeFileSync(join(storeDir, 'a.pem'), chain);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const store = new CertificateStore(storeDir);
    const validation = () => ({
      now: new Date(),
      keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki,
      issuers: loadIssuerPool(poolFile, 'proxy.json'),
    });
    const seen = new Map<string, SeenStat>();
    const first = await prepareServing({ config, store, previous: new Map(), seen, validation: validation() });
    expect(first.records.get('a')?.serial).toBe(issued.cert.serialNumber);

    // The renewal written as the leaf alone (cert.pem for fullchain.pem): refused, the old version serves.
    const renewal = await issue(inter, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
    writeFileSync(join(storeDir, 'a.pem'), renewal.certPem);
    await sleep(1_100);
    const refused = await prepareServing({ config, store, previous: first.records, seen, validation: validation(), storeDirId: first.storeDirId });
    expect(refused.refused.map((r) => r.reason)).toEqual(['incomplete_chain']);
    expect(refused.records.get('a')?.serial).toBe(issued.cert.serialNumber);

    // The same files, the same pool: the old version serves on, the renewal is neither judged nor said again.
    const same = await prepareServing({
      config,
      store,
      previous: refused.records,
      seen,
      validation: validation(),
      storeDirId: refused.storeDirId,
      verify: true,
    });
    expect(same.refused).toEqual([]);
    expect(same.records.get('a')).toBe(refused.records.get('a'));

    // The operator adds the intermediate to certStore.intermediates and reloads (SIGHUP): the renewal serves.
    writeFileSync(poolFile, `${unrelated.certPem}\n${inter.certPem}`);
    const completed = await prepareServing({
      config,
      store,
      previous: same.records,
      seen,
      validation: validation(),
      storeDirId: same.storeDirId,
      verify: true,
    });
    expect(completed.refused).toEqual([]);
    expect(completed.records.get('a')?.serial).toBe(renewal.cert.serialNumber);
  });
});

describe('prepareServing without reading unchanged entries', () => {
  const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };

  it('a verifying pass (SIGHUP, POST /reload) reads only the entries whose stat identity is not settled', async () => {
    const storeDir = join(dir, 'verify');
    mkdirSync(storeDir, { recursive: true });
    for (const name of ['a', 'b']) writeFileSync(join(storeDir, `${name}.pem`), chain);
    // Settled: read more than a second after the files last changed.
    await sleep(1_100);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const seen = new Map<string, SeenStat>();
    const store = new CountingStore(storeDir);
    const full = await prepareServing({ config, store, previous: new Map(), seen, validation });
    expect(store.reads.sort()).toEqual(['a', 'b']);
    expect(seen.get('a')?.settled).toBe(true);

    writeFileSync(join(storeDir, 'c.pem'), chain);
    store.reads = [];
    const added = await prepareServing({ config, store, previous: full.records, seen, validation, verify: true });
    // (Read twice: a file changed within the last second must read the same twice.)
    expect([...new Set(store.reads)]).toEqual(['c']);
    expect(added.records.get('a')).toBe(full.records.get('a'));
    // Read within a second of its change: not settled, so the next verifying pass compares its content again.
    expect(seen.get('c')?.settled).toBe(false);
    store.reads = [];
    const again = await prepareServing({ config, store, previous: added.records, seen, validation, verify: true });
    // (Read twice: a file changed within the last second must read the same twice.)
    expect([...new Set(store.reads)]).toEqual(['c']);
    expect(again.changed).toEqual([]);
    expect(again.records.get('c')).toBe(added.records.get('c'));
  });

  it('a start with the kept state reads no unchanged entry, serves their chains from the kept pack, and reads a changed one', async () => {
    const storeDir = join(dir, 'kept-store');
    const stateDir = join(dir, 'kept-state');
    mkdirSync(storeDir, { recursive: true });
    mkdirSync(keptDir(stateDir), { recursive: true });
    const config = loadProxyConfig(undefined, { stateDir, certStore: { dir: storeDir } });
    // The chain as validation writes it: a verdict then holds no copy of its own (verdicts.ts), the pack does.
    writeFileSync(join(storeDir, 'a.pem'), chain);
    const normal = (await prepareServing({ config, store: new CertificateStore(storeDir), previous: new Map(), seen: new Map(), validation })).records.get(
      'a',
    )!.chainPem;
    for (const name of ['a', 'b', 'c']) writeFileSync(join(storeDir, `${name}.pem`), normal);
    await sleep(1_100);
    const verdicts = new VerdictCache({ file: null, warn: () => {} });
    const seen = new Map<string, SeenStat>();
    const first = await prepareServing({ config, store: new CertificateStore(storeDir), previous: new Map(), seen, validation, verdicts });
    const upsert = [...first.records.values()];
    const chains = new Float64Array(upsert.length * 2);
    const whole = { generation: 1, routing: { domains: config.domains, sni: config.sni }, upsert, remove: [], whole: true };
    const packed = writePack(keptDir(stateDir), 'kept.pack', whole, chains);
    const statOf = (r: { name: string; inputId: string }): string | undefined => {
      const s = seen.get(r.name);
      return s?.settled && s.inputId === r.inputId ? s.statId : undefined;
    };
    keepPacked(stateDir, packed, upsert, chains, statOf, (m) => expect.fail(m));

    // 'b' is rewritten while the proxy is down.
    writeFileSync(join(storeDir, 'b.pem'), chain);
    const warnings: string[] = [];
    const kept = loadKept(stateDir, (m) => warnings.push(m));
    expect(warnings).toEqual([]);
    expect(kept?.rows.size).toBe(3);
    const store = new CountingStore(storeDir);
    const restart = new Map<string, SeenStat>();
    const next = await prepareServing({ config, store, previous: new Map(), seen: restart, validation, verdicts, ...(kept === undefined ? {} : { kept }) });
    expect([...new Set(store.reads)]).toEqual(['b']);
    expect([...next.records.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect(next.refused).toEqual([]);
    const a = next.records.get('a');
    expect(a?.serial).toBe(first.records.get('a')?.serial);
    expect(a?.names).toEqual(['x.example']);
    // Read from the pack on use, not held.
    expect(Object.getOwnPropertyDescriptor(a, 'chainPem')?.get).toBeTypeOf('function');
    expect(a?.chainPem).toBe(first.records.get('a')?.chainPem);
    expect(restart.get('a')?.settled).toBe(true);
  });

  it('ignores a kept state that does not match its checksum, with a warning', () => {
    const stateDir = join(dir, 'kept-broken');
    mkdirSync(keptDir(stateDir), { recursive: true });
    writeFileSync(join(keptDir(stateDir), 'kept.json'), '{"sha256":"00"}\n{}');
    const warnings: string[] = [];
    expect(loadKept(stateDir, (m) => warnings.push(m))).toBeUndefined();
    expect(warnings).toEqual([expect.stringContaining('does not match its checksum')]);
  });
});

describe('prepareServing and an entry that cannot be looked at', () => {
  it('refuses a chain that is a symlink loop by its name and path, and serves the entries beside it', async () => {
    const storeDir = join(dir, 'loop');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'x.pem'), chain);
    symlinkSync('loop.pem', join(storeDir, 'loop.pem'));
    const prepared = await pass(storeDir, new Map());
    expect(prepared.records.get('x')?.serial).toBe(issued.cert.serialNumber);
    expect(prepared.refused).toEqual([
      expect.objectContaining({ name: 'loop', source: join(storeDir, 'loop.pem'), message: expect.stringContaining('ELOOP') }),
    ]);
  });

  it('refuses an entry whose metadata link lost its target, and the version it served serves on with its pinned names', async () => {
    const storeDir = join(dir, 'dangling-meta');
    const outside = join(dir, 'dangling-meta-target');
    mkdirSync(storeDir, { recursive: true });
    mkdirSync(outside, { recursive: true });
    const both = await issue(inter, { commonName: 'a.example', dnsNames: ['a.example', 'b.example'], keyAlgorithm: 'ec-p256' });
    writeFileSync(join(storeDir, 'a.pem'), `${both.certPem}\n${inter.certPem}`);
    writeFileSync(join(outside, 'a.json'), JSON.stringify({ names: ['a.example'] }));
    symlinkSync(join(outside, 'a.json'), join(storeDir, 'a.json'));
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const store = new CertificateStore(storeDir);
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const seen = new Map<string, SeenStat>();
    const first = await prepareServing({ config, store, previous: new Map(), seen, validation });
    expect(first.records.get('a')?.names).toEqual(['a.example']);
    // The link's target goes (a ConfigMap key removed, say): not "no metadata", which served a for b.example too.
    rmSync(join(outside, 'a.json'));
    await sleep(1_100);
    const next = await prepareServing({ config, store, previous: first.records, seen, validation, storeDirId: first.storeDirId });
    expect(next.refused).toEqual([
      expect.objectContaining({
        name: 'a',
        reason: 'unreadable',
        source: join(storeDir, 'a.pem'),
        message: `certificate 'a' (${join(storeDir, 'a.json')}): the metadata is a symbolic link whose target is missing`,
      }),
    ]);
    expect(next.records.get('a')).toBe(first.records.get('a'));
  });

  it("refuses a FIFO put in a served chain's place by its name and path, and the version it served serves on, in a full and a targeted pass", async () => {
    const storeDir = join(dir, 'fifo');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'x.pem'), chain);
    writeFileSync(join(storeDir, 'y.pem'), chain);
    const seen = new Map<string, SeenStat>();
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const store = new CertificateStore(storeDir);
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const first = await prepareServing({ config, store, previous: new Map(), seen, validation });
    expect([...first.records.keys()].sort()).toEqual(['x', 'y']);
    rmSync(join(storeDir, 'x.pem'));
    execFileSync('mkfifo', [join(storeDir, 'x.pem')]);
    const refusedFifo = [
      expect.objectContaining({ name: 'x', source: join(storeDir, 'x.pem'), message: expect.stringContaining('not a file but a special file') }),
    ];
    for (const only of [undefined, { names: new Set(['x']), followed: first.followed }]) {
      const next = await prepareServing({ config, store, previous: first.records, seen: new Map(seen), validation, storeDirId: first.storeDirId, only });
      expect(next.refused).toEqual(refusedFifo);
      expect(next.records.get('x')).toBe(first.records.get('x'));
    }
  });

  it('refuses a chain with an extension that does not decode by its name, and serves the entries beside it, at every pass', async () => {
    const storeDir = join(dir, 'bad-extension');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'x.pem'), chain);
    // A subjectAltName whose content is not GeneralNames: the library decodes it only when first read.
    const badSan = new x509.Extension('2.5.29.17', false, new Uint8Array([0x04, 0x02, 0xff, 0xff]));
    const bad = await issue(inter, { commonName: 'bad.example', keyAlgorithm: 'ec-p256', extraExtensions: [badSan] });
    writeFileSync(join(storeDir, 'bad.pem'), `${bad.certPem}\n${inter.certPem}`);
    const refusedBad = expect.objectContaining({
      name: 'bad',
      reason: 'parse',
      message: expect.stringMatching(/^certificate 'bad' .*: certificate 1 does not decode as X\.509/),
    });
    const first = await pass(storeDir, new Map());
    expect(first.records.get('x')?.serial).toBe(issued.cert.serialNumber);
    expect(first.refused).toEqual([refusedBad]);
    // Judged again (a fresh pass: the certificate is parsed once per process), it is refused the same way.
    const again = await pass(storeDir, new Map());
    expect(again.records.get('x')?.serial).toBe(issued.cert.serialNumber);
    expect(again.refused).toEqual([refusedBad]);
  });
});
