import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { prepareServing } from '../proxy/serving/prepare.js';
import { applyDelta, EMPTY_STATE } from '../proxy/serving/state.js';
import { selectByName } from '../proxy/tls/names.js';
import { createCa, type Issued, issue, issueCa, type TestCa } from './helpers/pki.js';

// Two store entries claiming one name: the first listed keeps it (the
// config's certificates, then the store's by name), whichever of them the key
// server answered for first, so every start and every node picks the same.

let dir: string;
let inter: TestCa;
const leaves: Record<'a' | 'b', Issued> = {} as never;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-claims-'));
  inter = await issueCa(await createCa('Claims Root'), 'Claims Intermediate');
  for (const name of ['a', 'b'] as const)
    leaves[name] = await issue(inter, { commonName: 'shop.example', dnsNames: ['shop.example'], keyAlgorithm: 'ec-p256' });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function keyIdOf(leaf: Issued): string {
  return createHash('sha256').update(Buffer.from(leaf.cert.publicKey.rawData)).digest('hex');
}

describe('a name two store entries claim', () => {
  it.each(['a', 'b'] as const)('goes to the entry first by name when the key server answers for %s last', async (slow) => {
    const storeDir = join(dir, `store-${slow}`);
    mkdirSync(storeDir, { recursive: true });
    for (const name of ['a', 'b'] as const) writeFileSync(join(storeDir, `${name}.pem`), `${leaves[name].certPem}\n${inter.certPem}\n`);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const prepared = await prepareServing({
      config,
      store: new CertificateStore(storeDir),
      previous: new Map(),
      seen: new Map(),
      validation: {
        now: new Date(),
        keyserverSpki: async (keyId, leafSpki) => {
          if (keyId === keyIdOf(leaves[slow])) await new Promise((resolve) => setTimeout(resolve, 200));
          return leafSpki;
        },
      },
    });
    expect([...prepared.records.keys()]).toEqual(['a', 'b']);
    const conflicts: string[][] = [];
    const { state } = applyDelta(
      EMPTY_STATE,
      { generation: 1, routing: { domains: [], sni: config.sni }, upsert: [...prepared.records.values()], remove: [], whole: true },
      (name, kept, dropped) => conflicts.push([name, kept, dropped]),
    );
    expect(selectByName(state.sni, 'shop.example', undefined)?.value.name).toBe('a');
    expect(conflicts).toEqual([['shop.example', 'a', 'b']]);
  });
});
