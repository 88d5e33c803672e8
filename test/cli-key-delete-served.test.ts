/**
 * `keyedge key delete` and the version of a store entry the proxy last served: an entry whose files were replaced by a
 * chain the proxy refuses (here for a key the key server does not hold) goes on serving its previous version, with its
 * key, and a proxy started again falls back on it (serving/last-served.ts). Its files no longer name that key, so only
 * the proxy's log of last served versions says the key is in use: deleted, the entry's handshakes would fail at the next
 * sign. Real processes: the lab's key server and token, `keyedge proxy` with one worker, the built CLI.
 */
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CLI } from './helpers/basics.js';
import { nodeGet } from './helpers/clients.js';
import { startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { issueForPublicKey } from './helpers/pki.js';

/** A loaded machine's proxy start takes seconds; this bounds a stuck one (proxy-last-served.test.ts's reason). */
const START_READY_MS = 75_000;
const HOST = 'shop.lab.test';

let lab: KeylessLab;

beforeAll(async () => {
  lab = await startKeylessLab();
}, 60_000);

afterAll(async () => {
  await lab?.close();
});

function keyedge(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: lab.dir });
}

function labels(): string[] {
  const list = keyedge('key', 'list', '--config', join(lab.dir, 'keyserver.json'), '--json');
  expect(list.status, list.stderr).toBe(0);
  return (JSON.parse(list.stdout) as { label: string }[]).map((k) => k.label);
}

it("refuses a key an entry's version last served uses, though the entry's files now name another key; --force deletes it", async () => {
  const storeDir = join(lab.dir, 'served', 'certs');
  const stateDir = join(lab.dir, 'served', 'state');
  mkdirSync(storeDir, { recursive: true });
  const chain = (certPem: string): string => `${certPem}\n${lab.ca.certPem}`;
  const rsaLeaf = await issueForPublicKey(lab.ca, lab.keys.rsa.spki, { commonName: HOST, dnsNames: [HOST] });
  writeFileSync(join(storeDir, 'shop.pem'), chain(rsaLeaf.certPem));

  const proxy = await startClusterProxy(lab, 'served', (p) => storeProxyConfig(lab, p, { workers: 1, stateDir }), {}, START_READY_MS);
  try {
    const ca = readFileSync(lab.caFile, 'utf8');
    await waitFor(`${HOST} to serve`, async () => ((await nodeGet(proxy.port, HOST, ca)).ok ? true : undefined), 15_000, 200);
  } finally {
    await proxy.stop();
  }
  // Replaced while the proxy is down by a chain for a key the key server does not hold: refused at the next start,
  // which serves the logged version, with lab-rsa.
  const unknownKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  writeFileSync(join(storeDir, 'shop.pem'), chain((await issueForPublicKey(lab.ca, unknownKey, { commonName: HOST, dnsNames: [HOST] })).certPem));

  const ksConfig = join(lab.dir, 'keyserver.json');
  const refused = keyedge('key', 'delete', '--config', ksConfig, '--key', 'lab-rsa', '--proxy-config', proxy.configFile);
  expect(refused.status, refused.stdout).toBe(1);
  expect(refused.stderr).toBe(
    `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'lab-rsa' (key id ${lab.keys.rsa.keyId}) is used by 1 certificate of the certificate store ${storeDir}: ` +
      `'shop' (its version last served, in ${join(stateDir, 'serving', 'served.log')}: the version the proxy serves while its files are refused); ` +
      'deleting it fails every handshake for them at their next sign. Nothing was deleted: remove or replace them first (keyedge cert), or give --force\n',
  );
  expect(labels()).toContain('lab-rsa');

  // The other key is used by nothing, served or stored.
  const free = keyedge('key', 'delete', '--config', ksConfig, '--key', 'lab-ec', '--proxy-config', proxy.configFile);
  expect(free.status, free.stderr).toBe(0);
  expect(free.stderr).toBe('');

  const forced = keyedge('key', 'delete', '--config', ksConfig, '--key', 'lab-rsa', '--proxy-config', proxy.configFile, '--force');
  expect(forced.status, forced.stderr).toBe(0);
  expect(labels()).not.toContain('lab-rsa');
}, 180_000);
