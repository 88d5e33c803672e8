import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { prepareServing } from '../proxy/serving/prepare.js';
import { createCa, type Issued, issue, issueCa } from './helpers/pki.js';

// Reading the store while a writer is still at it: a file is used only once
// two reads agree, and one that keeps changing is left for a later pass.

let dir: string;
let chain: string;
let issued: Issued;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-prepare-'));
  const root = await createCa('Prepare Root');
  const inter = await issueCa(root, 'Prepare Intermediate');
  issued = await issue(inter, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
  chain = `${issued.certPem}\n${inter.certPem}`;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pass(storeDir: string, seen: Map<string, string>) {
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
    const seen = new Map<string, string>();
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

describe('prepareServing, a targeted pass', () => {
  it('looks at the named entries alone: a removed one goes, a changed one is read, the others keep their records unread', async () => {
    const storeDir = join(dir, 'targeted');
    mkdirSync(storeDir, { recursive: true });
    for (const name of ['a', 'b', 'c']) writeFileSync(join(storeDir, `${name}.pem`), chain);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const validation = { now: new Date(), keyserverSpki: async (_keyId: string, leafSpki: Buffer) => leafSpki };
    const seen = new Map<string, string>();
    const store = new CertificateStore(storeDir);
    const full = await prepareServing({ config, store, previous: new Map(), seen, validation });
    expect([...full.records.keys()].sort()).toEqual(['a', 'b', 'c']);

    // 'b' is removed and 'c' rewritten (unreadable now); only 'b' is named.
    rmSync(join(storeDir, 'b.pem'));
    writeFileSync(join(storeDir, 'c.pem'), 'not a chain');
    const only = { names: new Set(['b']), present: full.present, followed: full.followed };
    const targeted = await prepareServing({ config, store, previous: full.records, seen, validation, only });
    expect([...targeted.records.keys()].sort()).toEqual(['a', 'c']);
    // Not named: not read, its record kept as it was.
    expect(targeted.records.get('c')).toBe(full.records.get('c'));
    expect(targeted.refused).toEqual([]);
    expect([...targeted.present].sort()).toEqual(['a', 'c']);

    // Named, 'c' is read and refused; its previous version keeps serving.
    const named = await prepareServing({
      config,
      store,
      previous: targeted.records,
      seen,
      validation,
      only: { names: new Set(['c']), present: targeted.present, followed: targeted.followed },
    });
    expect(named.refused.map((r) => r.name)).toEqual(['c']);
    expect(named.records.get('c')).toBe(full.records.get('c'));
  });
});
