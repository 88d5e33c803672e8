import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// A chain file in the store directory whose name is no entry name (a space, a letter outside ASCII, a domain name over
// 64 characters, as a renewal tool writing `<domain>.pem` makes it): it was never served and never mentioned, not in
// the log, not in GET /certs, not in /readyz, at start or when it was dropped in later. The fleet's store refuses such a
// key by name (store/etcd-entries.ts); the directory now does the same, naming the file, and every other entry serves.

let lab: KeylessLab;
let proxy: ClusterProxy;
let root: string;

const LONG = `${'a'.repeat(60)}.lab.test`;

async function leaf(host: string): Promise<Issued> {
  return issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: host, dnsNames: [host] });
}
const chain = (l: Issued): string => `${l.certPem}\n${lab.ca.certPem}`;

/** The refusal line logged for store entry `name`, if any. */
const refusalOf = (name: string) => proxy.lines.find((l) => l.certificate === name && l.code === 'KEYEDGE_ERR_CERTIFICATE');

interface Listing {
  certificates: { name: string }[];
  refused: { name: string; source: string; reason: string; message: string }[];
}
const listing = async (): Promise<Listing> => JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as Listing;

beforeAll(async () => {
  lab = await startKeylessLab();
  root = readFileSync(lab.caFile, 'utf8');
  const [good, spaced, long] = await Promise.all([leaf('good.lab.test'), leaf('spaced.lab.test'), leaf(LONG)]);
  proxy = await startClusterProxy(lab, 'store-misnamed', (p) => {
    writeFileSync(join(p.storeDir, 'good.pem'), chain(good));
    writeFileSync(join(p.storeDir, 'spaced copy.pem'), chain(spaced));
    writeFileSync(join(p.storeDir, `${LONG}.pem`), chain(long));
    // A dot file is a writer's temp file or hidden on purpose: still ignored.
    writeFileSync(join(p.storeDir, '.hidden.pem'), chain(good));
    return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } });
  });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('a store file whose name is no entry name', () => {
  it('is refused at start, naming the file, while the other entries serve', async () => {
    expect((await nodeGet(proxy.port, 'good.lab.test', root)).ok).toBe(true);
    for (const name of ['spaced copy', LONG]) {
      const line = await waitFor(`the refusal of '${name}'`, () => refusalOf(name), 20_000);
      expect(line).toMatchObject({ reason: 'unreadable', source: join(proxy.storeDir, `${name}.pem`) });
      expect(String(line.msg)).toContain('is not a certificate entry name');
    }
    const listed = await listing();
    expect(listed.refused.map((r) => r.name).sort()).toEqual([LONG, 'spaced copy']);
    expect(listed.certificates.map((c) => c.name)).toEqual(['good']);
    expect(proxy.lines.some((l) => l.certificate === 'hidden' || l.certificate === '.hidden')).toBe(false);
    const ready = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
    expect(ready.headers.get('x-keyedge-degraded')).toBe('certificates');
  });

  it('is refused when dropped in later, once, and goes with its file', async () => {
    const late = await leaf('late.lab.test');
    const temp = join(proxy.storeDir, '.late.tmp');
    writeFileSync(temp, chain(late));
    renameSync(temp, join(proxy.storeDir, 'late é.pem'));
    const line = await waitFor('the refusal of the late file', () => refusalOf('late é'), 20_000);
    expect(line.source).toBe(join(proxy.storeDir, 'late é.pem'));
    // An operator's reload does not log it again: the file did not change.
    const answer = JSON.parse((await proxy.admin('POST', '/reload')).text) as { refused: unknown[] };
    expect(answer.refused).toEqual([]);
    expect(proxy.lines.filter((l) => l.certificate === 'late é' && l.code === 'KEYEDGE_ERR_CERTIFICATE')).toHaveLength(1);
    expect((await listing()).refused.map((r) => r.name)).toContain('late é');
    // Renamed to an entry name: served, and the refusal of the old name is gone.
    renameSync(join(proxy.storeDir, 'late é.pem'), join(proxy.storeDir, 'late.pem'));
    await waitFor('the renamed entry served', async () => ((await nodeGet(proxy.port, 'late.lab.test', root)).ok ? true : undefined), 20_000);
    await waitFor('the old name gone from GET /certs', async () => ((await listing()).refused.some((r) => r.name === 'late é') ? undefined : true), 20_000);
  });
});
