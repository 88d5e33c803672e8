import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { type EtcdCluster, startEtcdCluster } from './helpers/etcd.js';
import { removeDir, tempDir } from './helpers/keyserver.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// The log of last served versions (serving/last-served.ts) across a period on a fleet: a node that served from etcd
// keeps no such log, so one an earlier run left on the store directory is older than what served since, and goes.

let lab: KeylessLab;
let etcd: EtcdCluster;
let etcdDir: string;
let ca: string;
const running: ClusterProxy[] = [];

const hex = (serial: string | undefined): string => (serial ?? '').toUpperCase().replace(/^0+/, '');
const leaf = (host: string): Promise<Issued> => issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: host, dnsNames: [host] });

beforeAll(async () => {
  etcdDir = tempDir('keyedge-last-served-etcd-');
  [lab, etcd] = await Promise.all([startKeylessLab(), startEtcdCluster(etcdDir, 1)]);
  ca = readFileSync(lab.caFile, 'utf8');
}, 90_000);
afterAll(async () => {
  for (const proxy of running) await proxy.stop();
  await etcd?.close();
  await lab?.close();
  removeDir(etcdDir);
});

describe('a node back on its store directory after a period on a fleet', () => {
  it('does not fall back on the version its store directory served before that period', async () => {
    const state = join(lab.dir, 'node', 'state');
    const start = async (fleet: boolean): Promise<ClusterProxy> => {
      const proxy = await startClusterProxy(lab, 'node', (p) =>
        storeProxyConfig(lab, p, {
          stateDir: state,
          workers: 1,
          certStore: { dir: p.storeDir, rescanSeconds: 3600 },
          ...(fleet ? { etcd: { endpoints: etcd.endpoints, prefix: '/keyedge/last-served/', timeoutMs: 1_000 } } : {}),
        }),
      );
      running.push(proxy);
      return proxy;
    };
    const a1 = await leaf('a.lab.test');
    const storeDir = join(lab.dir, 'node', 'certs');
    const local = await start(false);
    writeFileSync(join(storeDir, 'a.pem'), `${a1.certPem}\n${lab.ca.certPem}`);
    await local.admin('POST', '/reload');
    expect(hex((await nodeGet(local.port, 'a.lab.test', ca)).serial)).toBe(hex(a1.cert.serialNumber));
    await local.stop();
    expect(existsSync(join(state, 'serving', 'served.log'))).toBe(true);

    // On the fleet: a newer version serves, from etcd.
    const fleet = await start(true);
    const a2 = await leaf('a.lab.test');
    expect((await fleet.admin('PUT', '/certs/a', `${a2.certPem}\n${lab.ca.certPem}`)).status).toBe(200);
    expect(hex((await nodeGet(fleet.port, 'a.lab.test', ca)).serial)).toBe(hex(a2.cert.serialNumber));
    await fleet.stop();

    // Back on the store directory, whose entry is now refused: a1 is older than what served last.
    const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
    const bad = await issueForPublicKey(lab.ca, spki, { commonName: 'a.lab.test', dnsNames: ['a.lab.test'] });
    writeFileSync(join(storeDir, 'a.pem'), `${bad.certPem}\n${lab.ca.certPem}`);
    writeFileSync(join(storeDir, 'b.pem'), `${(await leaf('b.lab.test')).certPem}\n${lab.ca.certPem}`);
    const back = await start(false);
    const certs = JSON.parse((await back.admin('GET', '/certs')).text) as { certificates: { name: string; serial: string }[] };
    const a = certs.certificates.find((c) => c.name === 'a');
    expect(a === undefined ? 'not served' : hex(a.serial) === hex(a1.cert.serialNumber) ? 'the version from before the fleet' : a.serial).toBe('not served');
    await back.stop();
  }, 180_000);
});
