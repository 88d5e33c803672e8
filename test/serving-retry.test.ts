import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { prepareServing, type SeenStat } from '../proxy/serving/prepare.js';
import type { CertificateRecord } from '../proxy/serving/spec.js';
import { createCa, type Issued, issue, issueCa, type TestCa } from './helpers/pki.js';

// A store entry refused for a reason that lifts with no change to its files
// (a key imported at the key server after its chain was written) is judged
// again by the next pass; until then its previous version serves.

let dir: string;
let inter: TestCa;
let first: Issued;
let renewal: Issued;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-retry-'));
  inter = await issueCa(await createCa('Retry Root'), 'Retry Intermediate');
  first = await issue(inter, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
  // A renewal with a new key, written before that key reached the key server.
  renewal = await issue(inter, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('a refusal the key server lifts', () => {
  it('is judged again by the next pass, though the files did not change', async () => {
    const storeDir = join(dir, 'store');
    mkdirSync(storeDir, { recursive: true });
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const held = new Set<string>();
    const seen = new Map<string, SeenStat>();
    let previous: ReadonlyMap<string, CertificateRecord> = new Map();
    const pass = async () => {
      const prepared = await prepareServing({
        config,
        store: new CertificateStore(storeDir),
        previous,
        seen,
        validation: { now: new Date(), keyserverSpki: async (keyId, leafSpki) => (held.has(keyId) ? leafSpki : undefined) },
      });
      previous = prepared.records;
      return prepared;
    };
    const chain = (leaf: Issued): string => `${leaf.certPem}\n${inter.certPem}\n`;

    writeFileSync(join(storeDir, 'x.pem'), chain(first));
    held.add(leafKeyId(first));
    expect((await pass()).records.get('x')?.serial).toBe(first.cert.serialNumber);

    writeFileSync(join(storeDir, 'x.pem'), chain(renewal));
    const refused = await pass();
    expect(refused.refused.map((r) => r.reason)).toEqual(['key_unknown']);
    expect(refused.records.get('x')?.serial).toBe(first.cert.serialNumber);

    held.add(leafKeyId(renewal));
    const again = await pass();
    expect(again.refused).toEqual([]);
    expect(again.records.get('x')?.serial).toBe(renewal.cert.serialNumber);
  });
});

function leafKeyId(leaf: Issued): string {
  return createHash('sha256').update(Buffer.from(leaf.cert.publicKey.rawData)).digest('hex');
}
