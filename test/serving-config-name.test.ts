import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { prepareServing, type SeenStat } from '../proxy/serving/prepare.js';
import type { CertificateRecord } from '../proxy/serving/spec.js';
import { createCa, issue } from './helpers/pki.js';

// A store entry refused for having the name of a config certificate is said once per version of its files; once the
// config no longer names that certificate, the entry is judged as any other and served, even when nothing of the
// name served meanwhile (the config's own chain refused too), its files unchanged.

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-config-name-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('a store entry named like a config certificate', () => {
  it('serves once the config no longer names it, its files unchanged', async () => {
    const root = await createCa('Config Name Root');
    const leaf = await issue(root, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
    const storeDir = join(dir, 'store');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'x.pem'), `${leaf.certPem}\n${root.certPem}`);
    const badChain = join(dir, 'bad.pem');
    writeFileSync(badChain, 'not a chain');
    const seen = new Map<string, SeenStat>();
    const pass = (certificates: unknown[], previous: ReadonlyMap<string, CertificateRecord>) =>
      prepareServing({
        config: loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir }, certificates }),
        store: new CertificateStore(storeDir),
        previous,
        seen,
        validation: { now: new Date(), keyserverSpki: async (_keyId, leafSpki) => leafSpki },
      });
    const first = await pass([{ name: 'x', chain: badChain }], new Map());
    expect(first.refused.map((r) => r.reason).sort()).toEqual(['names', 'parse']);
    expect(first.records.has('x')).toBe(false);
    const second = await pass([], first.records);
    expect(second.refused).toEqual([]);
    expect(second.records.get('x')?.from).toBe('store');
  });
});
