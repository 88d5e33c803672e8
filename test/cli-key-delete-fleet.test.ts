import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Etcd3, type IOptions } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, removeDir, tempDir } from './helpers/basics.js';
import { type EtcdCluster, startEtcdCluster } from './helpers/etcd.js';
import { createCa, issue, issueForPublicKey, type TestCa, writeIssued, writePem } from './helpers/pki.js';
import { refusedPort } from './helpers/proxy-lab.js';

// `keyedge key delete --proxy-config` (the built CLI, a SoftHSM2 token in a temporary directory) with a fleet's proxy
// config: its certificate store is etcd's `<prefix>certs/<name>` entries (a real etcd member, Debian's etcd-server).
// A key a fleet entry uses was deleted after a warning that etcd had not been looked at, and every node then failed
// every handshake for that certificate at its next sign.

let dir: string;
let ksConfig: string;
let ca: TestCa;
let etcd: EtcdCluster;
const clients: Etcd3[] = [];
/** How the delete names the hand-written entry that is no store entry. */
const BROKEN = "'broken' (certificate 'broken' (etcd:/fleet/certs/broken): the stored entry is not valid JSON)";

function keyedge(...args: string[]): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: dir, timeout: 60_000 });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** A key made in the token: its key id and SPKI. */
function generate(label: string): { keyId: string; spki: Buffer } {
  const made = keyedge('key', 'generate', '--config', ksConfig, '--type', 'ec-p256', '--label', label, '--json');
  expect(made.status, made.stderr).toBe(0);
  const out = JSON.parse(made.stdout) as { keyId: string; spki: string };
  return { keyId: out.keyId, spki: Buffer.from(out.spki, 'base64') };
}

/** A fleet entry's value as `PUT /certs/:name` stores it: the chain (leaf for `spki`, then the CA) and its metadata. */
async function entryFor(spki: Buffer, name: string, meta: Record<string, unknown> = {}): Promise<string> {
  const leaf = await issueForPublicKey(ca, spki, { commonName: name, dnsNames: [name] });
  return JSON.stringify({ chain: `${leaf.certPem}\n${ca.certPem}\n`, meta });
}

function labels(): string[] {
  const list = keyedge('key', 'list', '--config', ksConfig, '--json');
  expect(list.status, list.stderr).toBe(0);
  return (JSON.parse(list.stdout) as { label: string }[]).map((k) => k.label);
}

function client(options: IOptions): Etcd3 {
  const made = new Etcd3(options);
  clients.push(made);
  return made;
}

/** A fleet node's proxy config naming `etcd`; its certStore.dir is not there (a fleet does not read it). */
function fleetConfig(name: string, etcdSection: Record<string, unknown>): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ stateDir: './state', admin: null, certStore: { dir: './no-such-store' }, etcd: etcdSection }));
  return file;
}

beforeAll(async () => {
  dir = tempDir('keyedge-key-delete-fleet-');
  ksConfig = join(dir, 'keyserver.json');
  writeFileSync(ksConfig, JSON.stringify({ stateDir: './state', admin: null }));
  ca = await createCa('key delete fleet test CA');
  etcd = await startEtcdCluster(join(dir, 'etcd'), 1);
}, 60_000);
afterAll(async () => {
  for (const c of clients) c.close();
  await etcd?.close();
  removeDir(dir);
});

describe('keyedge key delete with a fleet config (etcd)', () => {
  it("refuses a key a fleet entry uses (its chain's leaf, or its pin), naming each entry; deletes one no entry uses; --force deletes without looking", async () => {
    const shop = generate('shop-key');
    const other = generate('other-key');
    const free = generate('free-key');
    const elsewhere = generate('elsewhere-key');
    const kv = client({ hosts: [...etcd.endpoints] });
    await kv.put('/fleet/certs/shop').value(await entryFor(shop.spki, 'shop.example'));
    // Its chain is another key's: refused at the reload, and what it served for the pinned key keeps serving.
    await kv.put('/fleet/certs/shop-old').value(await entryFor(other.spki, 'old.shop.example', { keyId: shop.keyId }));
    await kv.put('/fleet/certs/other').value(await entryFor(other.spki, 'other.example'));
    // Written by hand: not an entry, said, and the key it cannot name is not kept for it.
    await kv.put('/fleet/certs/broken').value('not json');
    // Another fleet's prefix: not this config's certificates.
    await kv.put('/other-fleet/certs/elsewhere').value(await entryFor(elsewhere.spki, 'elsewhere.example'));
    const endpoint = etcd.endpoints[0]!;
    const proxyConfig = fleetConfig('fleet.json', { endpoints: [endpoint], prefix: '/fleet/', timeoutMs: 5_000 });

    const refused = keyedge('key', 'delete', '--config', ksConfig, '--key', 'shop-key', '--proxy-config', proxyConfig);
    expect(refused.status, refused.stderr).toBe(1);
    expect(refused.stderr).toContain(
      `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'shop-key' (key id ${shop.keyId}) is used by 2 certificates of the fleet's certificate store etcd:/fleet/ (etcd at ${endpoint}): ` +
        `'shop' (etcd:/fleet/certs/shop), 'shop-old' (etcd:/fleet/certs/shop-old: pinned); deleting it fails every handshake for them at their next sign. ` +
        `Not read, so not known: ${BROKEN}. ` +
        "Nothing was deleted: remove or replace them first (a fleet's entries: through a node's admin API (PUT /certs/:name) or in etcd), or give --force\n",
    );
    expect(labels()).toContain('shop-key');

    // By key id too; the config's own certificates still count (none here).
    const byId = keyedge('key', 'delete', '--config', ksConfig, '--key', other.keyId, '--proxy-config', proxyConfig);
    expect(byId.status, byId.stderr).toBe(1);
    expect(byId.stderr).toContain(
      `is used by 2 certificates of the fleet's certificate store etcd:/fleet/ (etcd at ${endpoint}): 'other' (etcd:/fleet/certs/other), 'shop-old' (etcd:/fleet/certs/shop-old); `,
    );
    expect(labels()).toContain('other-key');

    // An entry no key can be read from may use any key (and a node may serve what it was before it broke): refused.
    const unknown = keyedge('key', 'delete', '--config', ksConfig, '--key', 'free-key', '--proxy-config', proxyConfig);
    expect(unknown.status, unknown.stderr).toBe(1);
    expect(unknown.stderr).toBe(
      `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'free-key' (key id ${free.keyId}) may be used by a store entry of the fleet's certificate store ` +
        `etcd:/fleet/ (etcd at ${endpoint}) that could not be read: ${BROKEN}; a node may still serve the version it had before, with this key. ` +
        "Nothing was deleted: repair or remove it first (a fleet's entries: through a node's admin API (PUT /certs/:name) or in etcd), or give --force\n",
    );
    expect(labels()).toContain('free-key');

    await kv.delete().key('/fleet/certs/broken');
    for (const label of ['free-key', 'elsewhere-key']) {
      const deleted = keyedge('key', 'delete', '--config', ksConfig, '--key', label, '--proxy-config', proxyConfig);
      expect(deleted.status, deleted.stderr).toBe(0);
      expect(deleted.stdout).toContain(`deleted ec-p256 key '${label}'`);
      expect(deleted.stderr).toBe('');
    }
    expect(free.keyId).not.toBe(elsewhere.keyId);
    expect(labels()).not.toContain('free-key');

    const forced = keyedge('key', 'delete', '--config', ksConfig, '--key', 'shop-key', '--proxy-config', proxyConfig, '--force');
    expect(forced.status, forced.stderr).toBe(0);
    expect(forced.stderr).toBe('');
    expect(forced.stdout).toContain("deleted ec-p256 key 'shop-key'");
    expect(labels()).not.toContain('shop-key');
  });

  it('an etcd that does not answer refuses, naming the endpoints and --force, nothing deleted; no secret of the config in the message', async () => {
    const kept = generate('kept-key');
    const password = 'pw-3f1c9e-never-printed';
    writeFileSync(join(dir, 'etcd.password'), `${password}\n`, { mode: 0o600 });
    const clientCert = await issue(ca, { commonName: 'fleet-node', keyAlgorithm: 'ec-p256' });
    const files = writeIssued(dir, 'etcd-client', clientCert);
    const endpoints = [`http://127.0.0.1:${await refusedPort()}`, `http://127.0.0.1:${await refusedPort()}`];
    const proxyConfig = fleetConfig('fleet-away.json', {
      endpoints,
      prefix: '/fleet/',
      timeoutMs: 1_000,
      tls: { ca: writePem(dir, 'etcd-ca', ca.certPem), cert: files.cert, key: files.key },
      auth: { username: 'fleet', passwordFile: join(dir, 'etcd.password') },
    });

    const refused = keyedge('key', 'delete', '--config', ksConfig, '--key', 'kept-key', '--proxy-config', proxyConfig);
    expect(refused.status, refused.stderr).toBe(1);
    expect(refused.stderr).toMatch(/^keyedge: KEYEDGE_ERR_STORE_UNAVAILABLE: /);
    expect(refused.stderr).toContain(
      `the fleet's certificate store etcd:/fleet/ (etcd at ${endpoints.join(', ')}; etcd of ${proxyConfig}) could not be read, waiting at most 1000 ms (etcd.timeoutMs): `,
    );
    expect(refused.stderr).toContain(
      "Cannot tell whether a certificate uses key 'kept-key'. Nothing was deleted: bring etcd back (or correct etcd in the config), or give --force, which deletes without looking",
    );
    expect(refused.stderr).not.toContain(password);
    expect(refused.stderr).not.toContain(clientCert.keyPem.split('\n')[1]);
    expect(refused.stdout).toBe('');
    expect(labels()).toContain('kept-key');
    expect(kept.keyId).toMatch(/^[0-9a-f]{64}$/);
  });

  it("reads the fleet's store with the config's etcd auth: the right password finds the entry, a wrong one refuses without printing it", async () => {
    const own = await startEtcdCluster(join(dir, 'etcd-auth'), 1);
    try {
      const endpoint = own.endpoints[0]!;
      const root = client({ hosts: [endpoint] });
      await root.role('root').create();
      await root.user('root').create('root-pw-5d2a');
      await root.user('root').addRole('root');
      await root.auth.authEnable();
      const authed = client({ hosts: [endpoint], auth: { username: 'root', password: 'root-pw-5d2a' } });
      const locked = generate('locked-key');
      await authed.put('/fleet/certs/locked').value(await entryFor(locked.spki, 'locked.example'));

      /** A config for this member as `root` with `password` (in a file of its own, as an operator keeps it). */
      const authConfig = (file: string, password: string, timeoutMs = 5_000): string => {
        const passwordFile = join(dir, `${file}.password`);
        writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
        return fleetConfig(file, { endpoints: [endpoint], prefix: '/fleet/', timeoutMs, auth: { username: 'root', passwordFile } });
      };
      const right = authConfig('fleet-auth.json', 'root-pw-5d2a');
      const refused = keyedge('key', 'delete', '--config', ksConfig, '--key', 'locked-key', '--proxy-config', right);
      expect(refused.status, refused.stderr).toBe(1);
      expect(refused.stderr).toContain(
        `KEYEDGE_ERR_KEY_IN_USE: key 'locked-key' (key id ${locked.keyId}) is used by 1 certificate of the fleet's certificate store etcd:/fleet/ (etcd at ${endpoint}): 'locked' (etcd:/fleet/certs/locked); `,
      );
      expect(refused.stderr).not.toContain('root-pw-5d2a');

      const wrong = authConfig('fleet-wrong-auth.json', 'wrong-pw-77e1');
      const denied = keyedge('key', 'delete', '--config', ksConfig, '--key', 'locked-key', '--proxy-config', wrong);
      expect(denied.status, denied.stderr).toBe(1);
      expect(denied.stderr).toMatch(/^keyedge: KEYEDGE_ERR_STORE_UNAVAILABLE: .*could not be read.*--force, which deletes without looking\n$/s);
      expect(denied.stderr).not.toContain('wrong-pw-77e1');
      expect(labels()).toContain('locked-key');

      // A member that takes the connection and never answers (stopped): bounded by etcd.timeoutMs, not a hang.
      const stalledConfig = authConfig('fleet-stalled.json', 'root-pw-5d2a', 1_000);
      own.members[0]!.stall();
      const stalled = keyedge('key', 'delete', '--config', ksConfig, '--key', 'locked-key', '--proxy-config', stalledConfig);
      own.members[0]!.resume();
      expect(stalled.status, stalled.stderr).toBe(1);
      expect(stalled.stderr).toMatch(
        /^keyedge: KEYEDGE_ERR_STORE_UNAVAILABLE: .*could not be read, waiting at most 1000 ms \(etcd.timeoutMs\): .*--force, which deletes without looking\n$/s,
      );
      expect(stalled.stderr).not.toContain('root-pw-5d2a');
      expect(labels()).toContain('locked-key');
    } finally {
      await own.close();
    }
  });
});
