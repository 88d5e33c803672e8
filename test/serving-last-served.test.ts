import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { VerdictCache } from '../proxy/certs/verdict-cache.js';
import { keepPacked, keptDir, loadKept } from '../proxy/serving/kept.js';
import { LAST_SERVED_FILE, LastServed } from '../proxy/serving/last-served.js';
import { PACK_THRESHOLD, writePack } from '../proxy/serving/pack.js';
import { prepareServing } from '../proxy/serving/prepare.js';
import type { CertificateRecord, ServingDelta } from '../proxy/serving/spec.js';
import { createCa, issue } from './helpers/pki.js';

// The log of last served versions (serving/last-served.ts) over the kept
// state (serving/kept.ts): what a start finds for an entry is the version
// last served, whether the state is small (the log alone) or large (the
// kept pack and the changes since), and nothing when the log cannot be
// trusted (it could name an older version).

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'keyedge-last-served-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

function record(i: number, version = 1, from: CertificateRecord['from'] = 'store'): CertificateRecord {
  return {
    name: `n${i}`,
    from,
    source: `/store/n${i}.pem`,
    chainPem: `-----BEGIN CERTIFICATE-----\nchain ${i} v${version} é\n-----END CERTIFICATE-----\n`,
    names: [`n${i}.example`],
    keyId: 'a'.repeat(64),
    spki: 'AAAA',
    serial: `${i}0${version}`,
    issuer: 'CN=Test',
    notAfter: '2030-01-01T00:00:00.000Z',
    stapled: false,
    loadedAt: '2026-01-01T00:00:00.000Z',
    inputId: `store:${i}:${version}`,
  };
}

function stateDir(name: string): string {
  const dir = join(root, name);
  mkdirSync(keptDir(dir), { recursive: true, mode: 0o700 });
  return dir;
}

/** A whole state of `count` records written as the workers' pack and kept (what the cluster primary does past PACK_THRESHOLD). */
function keepWhole(dir: string, count: number): string {
  const whole: ServingDelta = {
    generation: 1,
    routing: { domains: [], sni: { default: null, onUnknown: 'reject' } },
    upsert: Array.from({ length: count }, (_, i) => record(i)),
    remove: [],
    whole: true,
  };
  const chains = new Float64Array(count * 2);
  const packed = writePack(keptDir(dir), 'snapshot-1.pack', whole, chains);
  expect(
    keepPacked(
      dir,
      packed,
      whole.upsert,
      chains,
      () => undefined,
      () => {},
    ),
  ).toBe(true);
  return packed.file;
}

const chainOf = (found: { chainPem: string } | undefined): string | undefined => found?.chainPem;

describe('the log of last served versions', () => {
  it('small state: written whole, then changes appended; removals and config certificates leave no version', () => {
    const dir = stateDir('small');
    const log = new LastServed(keptDir(dir), '/store', () => {});
    log.rewrite(null, [record(1), record(2), record(3), record(4, 1, 'config')]);
    log.append([record(1, 2), record(3, 1, 'config')], ['n2']);
    expect(log.lines).toBe(6);
    const warnings: string[] = [];
    const read = new LastServed(keptDir(dir), '/store', (m) => warnings.push(m)).reader(loadKept(dir, () => {}));
    expect(chainOf(read('n1'))).toBe(record(1, 2).chainPem);
    expect(read('n1')?.inputId).toBe('store:1:2');
    expect(read('n2')).toBeUndefined();
    expect(read('n3')).toBeUndefined();
    expect(read('n4')).toBeUndefined();
    expect(warnings).toEqual([]);
  });

  it(`large state (${PACK_THRESHOLD + 20}): the kept pack's rows, overridden by the changes since it`, () => {
    const dir = stateDir('large');
    const pack = keepWhole(dir, PACK_THRESHOLD + 20);
    const log = new LastServed(keptDir(dir), '/store', () => {});
    log.rewrite(pack, []);
    log.append([record(5, 2)], ['n6']);
    const read = new LastServed(keptDir(dir), '/store', () => {}).reader(loadKept(dir, () => {}));
    expect(chainOf(read('n5'))).toBe(record(5, 2).chainPem);
    expect(read('n6')).toBeUndefined();
    expect(chainOf(read('n7'))).toBe(record(7).chainPem);
    expect(read('n7')).toMatchObject({ names: ['n7.example'], keyId: 'a'.repeat(64), inputId: 'store:7:1' });
    expect(read('n99999')).toBeUndefined();
  });

  it('is not used when it cannot be trusted: based on another pack, torn, altered, or missing beside a kept pack', () => {
    const dir = stateDir('distrust');
    const pack = keepWhole(dir, PACK_THRESHOLD + 1);
    const file = join(keptDir(dir), LAST_SERVED_FILE);
    const lookup = (): { found: boolean; warned: boolean } => {
      const warnings: string[] = [];
      const found = new LastServed(keptDir(dir), '/store', (m) => warnings.push(m)).reader(loadKept(dir, () => {}))('n3');
      return { found: found !== undefined, warned: warnings.length > 0 };
    };
    const log = new LastServed(keptDir(dir), '/store', () => {});
    log.rewrite(pack, []);
    log.append([record(3, 2)], []);
    expect(lookup()).toEqual({ found: true, warned: false });

    const whole = readFileSync(file, 'utf8');
    // A crash in the middle of an append: the version after it is not known, so no version is.
    appendFileSync(file, '0123abcd ["n3","store:3:3"');
    expect(lookup()).toEqual({ found: false, warned: true });
    writeFileSync(file, whole.replace('chain 3 v2', 'chain 3 v9'));
    expect(lookup()).toEqual({ found: false, warned: true });
    writeFileSync(file, whole.replace(/"base":"[^"]+"/, '"base":"snapshot-0.pack"'));
    expect(lookup()).toEqual({ found: false, warned: true });
    // The kept pack alone may be older than what served last: no log, no version.
    rmSync(file);
    expect(lookup()).toEqual({ found: false, warned: false });
  });

  it('holds chains, names, key ids and input ids only, in a file only its owner reads', () => {
    const dir = stateDir('private');
    new LastServed(keptDir(dir), '/store', () => {}).rewrite(null, [record(1)]);
    const file = join(keptDir(dir), LAST_SERVED_FILE);
    expect(statSync(file).mode & 0o077).toBe(0);
    expect(readFileSync(file, 'utf8')).not.toContain('AAAA');
  });
});

describe('prepareServing at start, an entry whose files are refused', () => {
  let storeDir: string;
  let good: string;
  let notAfter: Date;
  let ca: Awaited<ReturnType<typeof createCa>>;

  const pass = (lastServed: Map<string, CertificateRecord>, options: { now?: Date; keyGone?: boolean } = {}) =>
    prepareServing({
      config: loadProxyConfig(undefined, { stateDir: join(root, 'prepare-state'), certStore: { dir: storeDir } }),
      store: new CertificateStore(storeDir),
      previous: new Map(),
      seen: new Map(),
      verdicts: new VerdictCache({ file: null, warn: () => {} }),
      lastServed: (name) => lastServed.get(name),
      // The key server holds the leaf's key, or (keyGone) no longer does.
      validation: { now: options.now ?? new Date(), keyserverSpki: async (_keyId, leafSpki) => (options.keyGone === true ? undefined : leafSpki) },
    });

  beforeAll(async () => {
    storeDir = join(root, 'prepare-store');
    mkdirSync(storeDir, { recursive: true });
    ca = await createCa('Last Served Root');
    const leaf = await issue(ca, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
    notAfter = leaf.cert.notAfter;
    good = `${leaf.certPem}\n${ca.certPem}`;
  });

  /** What the last run served for x: the good chain, as a pass over it made it. */
  async function servedBefore(): Promise<Map<string, CertificateRecord>> {
    writeFileSync(join(storeDir, 'x.pem'), good);
    const first = await pass(new Map());
    expect(first.refused).toEqual([]);
    writeFileSync(join(storeDir, 'x.pem'), '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
    return new Map([...first.records].filter(([name]) => name === 'x'));
  }

  it('serves the last served version judged again, and still reports the refusal with a warning', async () => {
    const last = await servedBefore();
    const next = await pass(last);
    expect(next.refused.map((r) => r.name)).toEqual(['x']);
    expect(next.records.get('x')?.serial).toBe(last.get('x')?.serial);
    expect(next.records.get('x')?.chainPem).toBe(last.get('x')?.chainPem);
    expect(next.warnings).toContainEqual({ name: 'x', message: expect.stringContaining('the version the last run served') });
  });

  it('serves it for a refusal of its names too: a renewal that drops a name the entry pins', async () => {
    writeFileSync(join(storeDir, 'x.json'), JSON.stringify({ names: ['x.example'] }));
    try {
      const last = await servedBefore();
      const renewal = await issue(ca, { commonName: 'y.example', dnsNames: ['y.example'], keyAlgorithm: 'ec-p256' });
      writeFileSync(join(storeDir, 'x.pem'), `${renewal.certPem}\n${ca.certPem}`);
      const next = await pass(last);
      expect(next.refused).toEqual([expect.objectContaining({ name: 'x', reason: 'names' })]);
      expect(next.records.get('x')?.serial).toBe(last.get('x')?.serial);
      expect(next.records.get('x')?.names).toEqual(['x.example']);
    } finally {
      rmSync(join(storeDir, 'x.json'));
    }
  });

  it('does not serve it once its key is gone from the key server, or it has expired', async () => {
    const last = await servedBefore();
    const keyGone = await pass(last, { keyGone: true });
    expect(keyGone.records.has('x')).toBe(false);
    expect(keyGone.refused.map((r) => r.name)).toEqual(['x']);
    const expired = await pass(last, { now: new Date(notAfter.getTime() + 60_000) });
    expect(expired.records.has('x')).toBe(false);
  });

  it('does not bring back an entry gone from the store', async () => {
    const last = await servedBefore();
    rmSync(join(storeDir, 'x.pem'));
    const next = await pass(last);
    expect(next.records.has('x')).toBe(false);
    expect(next.refused).toEqual([]);
  });
});
