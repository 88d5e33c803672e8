import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { type EtcdCluster, startEtcdCluster } from './helpers/etcd.js';
import { removeDir, tempDir } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
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

// A fleet node's own log of last served versions (fleet-served.log): one bad write of an entry to etcd followed by a
// restart of the node leaves the version it served serving, not the name down.
describe('a fleet node restarted after a bad version of an entry was written to etcd', () => {
  it('serves the version it served, reports the refusal, and serves a good version written later', async () => {
    const prefix = '/keyedge/fleet-kept/';
    const state = join(lab.dir, 'kept', 'state');
    const start = async (): Promise<ClusterProxy> => {
      const proxy = await startClusterProxy(lab, 'kept', (p) =>
        storeProxyConfig(lab, p, {
          stateDir: state,
          workers: 1,
          certStore: { dir: p.storeDir, rescanSeconds: 3600 },
          etcd: { endpoints: etcd.endpoints, prefix, timeoutMs: 1_000 },
        }),
      );
      running.push(proxy);
      return proxy;
    };
    const view = async (proxy: ClusterProxy): Promise<{ serial: string; reason: string | null } | undefined> => {
      const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as {
        certificates: { name: string; serial: string; refused: { reason: string } | null }[];
      };
      const a = certs.certificates.find((c) => c.name === 'a');
      return a === undefined ? undefined : { serial: hex(a.serial), reason: a.refused?.reason ?? null };
    };
    const served = async (proxy: ClusterProxy): Promise<string> => {
      const got = await nodeGet(proxy.port, 'a.lab.test', ca);
      return got.ok ? hex(got.serial) : `not served: ${got.error ?? ''}`;
    };
    const raw = new Etcd3({ hosts: [...etcd.endpoints] });
    try {
      const a1 = await leaf('a.lab.test');
      const first = await start();
      expect((await first.admin('PUT', '/certs/a', `${a1.certPem}\n${lab.ca.certPem}`)).status).toBe(200);
      // Another entry, so that the node has a certificate serving (and is ready) whatever becomes of 'a'.
      expect((await first.admin('PUT', '/certs/b', `${(await leaf('b.lab.test')).certPem}\n${lab.ca.certPem}`)).status).toBe(200);
      expect(await served(first)).toBe(hex(a1.cert.serialNumber));

      // A bad version written to etcd behind the admin API's back (a broken tool): a chain for a key the key server
      // does not hold. The running node refuses it and keeps serving a1.
      const stored = JSON.parse((await raw.get(`${prefix}certs/a`).string())!) as { chain: string; meta: Record<string, unknown> };
      const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
      const bad = await issueForPublicKey(lab.ca, spki, { commonName: 'a.lab.test', dnsNames: ['a.lab.test'] });
      await raw.put(`${prefix}certs/a`).value(JSON.stringify({ chain: `${bad.certPem}\n${lab.ca.certPem}`, meta: stored.meta }));
      await waitFor('the bad version refused', async () => ((await view(first))?.reason ? true : undefined));
      expect(await served(first)).toBe(hex(a1.cert.serialNumber));
      await first.stop();

      // Restarted: a1 still serves, and the refusal is reported as at any start.
      const second = await start();
      expect(await served(second)).toBe(hex(a1.cert.serialNumber));
      const a = await view(second);
      expect(a?.serial).toBe(hex(a1.cert.serialNumber));
      expect(a?.reason).not.toBeNull();
      expect(second.lines.some((l) => l.certificate === 'a' && l.level === 40 && String(l.msg).includes('the version the last run served'))).toBe(true);
      // A version of it serves: ready, as a store directory's node with the same fallback is (degraded is for an entry
      // with nothing of it serving).
      const ready = await fetch(`http://127.0.0.1:${second.adminPort}/readyz`);
      expect([ready.status, ready.headers.get('x-keyedge-degraded')]).toEqual([200, null]);
      const metrics = (await second.admin('GET', '/metrics')).text;
      expect(/keyedge_proxy_reloads_total\{[^}]*trigger="start"[^}]*result="refused"[^}]*\} 1/.test(metrics)).toBe(true);
      expect(statSync(join(state, 'serving', 'fleet-served.log')).mode & 0o777).toBe(0o600);

      // A good version written to etcd serves at once.
      const a2 = await leaf('a.lab.test');
      expect((await second.admin('PUT', '/certs/a', `${a2.certPem}\n${lab.ca.certPem}`)).status).toBe(200);
      await waitFor('a2 to serve', async () => ((await served(second)) === hex(a2.cert.serialNumber) ? true : undefined));
      expect((await view(second))?.reason).toBeNull();
      await second.stop();

      // Deleted from etcd, then a bad version written under the same name: never the deleted entry's last version.
      await raw.delete().key(`${prefix}certs/a`);
      await raw.put(`${prefix}certs/a`).value(JSON.stringify({ chain: `${bad.certPem}\n${lab.ca.certPem}`, meta: stored.meta }));
      const third = await start();
      expect((await served(third)).startsWith('not served')).toBe(true);
      expect((await view(third))?.reason).not.toBeNull();
      await third.stop();
    } finally {
      raw.close();
    }
  }, 180_000);
});
