import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { curl } from './helpers/clients.js';
import { type EtcdCluster, startEtcdCluster } from './helpers/etcd.js';
import { removeDir, tempDir } from './helpers/basics.js';
import { type AcmeLab, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { freePort } from './helpers/proxy-lab.js';
import { settleAll } from './helpers/settle.js';

// Issue 15, must-show 1 (ACME in a fleet): two `keyedge proxy` nodes on one
// fleet in a real 3-member etcd cluster, one real pebble. Pebble's
// validation authority sends every HTTP-01 request to node B's port 80
// listener only; node A has its own elsewhere, which the CA never sees. An
// order started on node A is validated through node B (the challenge went
// from A to etcd to B's workers), and the certificate serves on both nodes.
// Two nodes asked for the same name at the same moment make one order
// (pebble counts them): one holds the name's issuance lock and orders, the
// other waits and finds it issued. The account is the fleet's: one account
// key in the token, its URL in etcd, no key material there. With
// TLS-ALPN-01, pebble connects to node B's TLS port only, and node B's
// workers present the challenge certificate node A made (its key in the
// token, signed for through node B's keyless bridge).
let acmeLab: AcmeLab;
let etcd: EtcdCluster;
let nodeA: ClusterProxy;
let nodeB: ClusterProxy;
let root: string;
let etcdDir: string | undefined;
const PREFIX = '/keyedge/test-acme-fleet/';

/** A node of the fleet; `httpsPort`: its TLS listener's port (node B's is pebble's TLS-ALPN-01 port), else a free one. */
async function fleetNode(name: string, httpPort: number, options: { httpsPort?: number; challenges?: string[] } = {}): Promise<ClusterProxy> {
  const { lab } = acmeLab;
  const node = await startClusterProxy(
    lab,
    name,
    (p) =>
      storeProxyConfig(lab, options.httpsPort === undefined ? p : { ...p, port: options.httpsPort }, {
        stateDir: join(lab.dir, name, 'state'),
        workers: 1,
        shutdownGraceMs: 1_000,
        httpRedirect: { host: '127.0.0.1', port: httpPort },
        domains: [{ name: '*.fleet-acme.test', origin: `http://127.0.0.1:${lab.origin.port}` }],
        etcd: { endpoints: etcd.endpoints, prefix: PREFIX, timeoutMs: 2_000 },
        acme: acmeLab.acme({
          contact: ['mailto:ops@fleet-acme.test'],
          timeoutMs: 10_000,
          ...(options.challenges === undefined ? {} : { challenges: options.challenges }),
        }),
      }),
    {},
    90_000,
  );
  // The helper reports the port it chose; the node listens on the one given here instead.
  return options.httpsPort === undefined ? node : { ...node, port: options.httpsPort };
}

async function issue(node: ClusterProxy, domain: string): Promise<{ status: number; text: string }> {
  return node.admin('POST', '/acme/issue', JSON.stringify({ domains: [domain] }));
}

/** A verified handshake and answer for `name` on `node`, trusting pebble's root only. */
async function serves(node: ClusterProxy, name: string): Promise<boolean> {
  const got = await curl(node.port, name, root);
  return got.code === 0 && got.stdout.includes(`"host":"${name}:${node.port}"`);
}

/** HTTP-01 requests the node's port 80 listener answered with a key authorization (its access log). */
function challengeAnswers(node: ClusterProxy): number {
  return node.lines.filter((l) => l.access === true && String(l.path).startsWith('/.well-known/acme-challenge/') && l.status === 200).length;
}

beforeAll(async () => {
  // Node B listens where pebble validates (HTTP-01 on its port 80 listener, TLS-ALPN-01 on its TLS port); node A's ports are ones the CA never uses.
  const httpsB = await freePort();
  // The ACME lab and etcd start side by side (etcd in a directory of its own): each is seconds, mostly waiting.
  etcdDir = tempDir('keyedge-fleet-acme-etcd-');
  await settleAll([
    startAcmeLab({ pebble: { tlsPort: httpsB } }).then((started) => (acmeLab = started)),
    startEtcdCluster(etcdDir, 3).then((started) => (etcd = started)),
  ]);
  [nodeA, nodeB] = await Promise.all([fleetNode('node-a', await freePort()), fleetNode('node-b', acmeLab.httpPort, { httpsPort: httpsB })]);
  root = await acmeLab.pebble.rootFile();
}, 150_000);

afterAll(async () => {
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  await etcd?.close();
  await acmeLab?.close();
  if (etcdDir !== undefined) removeDir(etcdDir);
});

describe('ACME across a fleet on etcd', () => {
  it('an order started on node A is validated through node B, and the certificate serves on both', async () => {
    const name = 'www.fleet-acme.test';
    const ordered = await issue(nodeA, name);
    expect(ordered.status, ordered.text).toBe(200);
    expect(acmeLab.pebble.orders()).toBe(1);
    expect(await serves(nodeA, name)).toBe(true);
    await waitFor('node B to serve the certificate node A ordered', async () => ((await serves(nodeB, name)) ? true : undefined));
    // The CA fetched the key authorization from node B's workers; node A's port 80 saw no challenge request.
    expect(challengeAnswers(nodeB)).toBeGreaterThanOrEqual(1);
    expect(challengeAnswers(nodeA)).toBe(0);

    // The managed entry's state is the fleet's: node B shows it as issued.
    const certs = JSON.parse((await nodeB.admin('GET', '/certs')).text) as {
      certificates: { name: string; issuer: string; acme: { failures: number; lastIssuedAt: string | null } | null }[];
    };
    const entry = certs.certificates.find((c) => c.name === name);
    expect(entry?.issuer).toMatch(/Pebble/i);
    expect(entry?.acme?.failures).toBe(0);
    expect(entry?.acme?.lastIssuedAt).not.toBeNull();

    // In etcd: the account's URL and key id, no key material; no challenge left once the order is done.
    const client = new Etcd3({ hosts: [...etcd.endpoints] });
    try {
      const acme = await client.getAll().prefix(`${PREFIX}acme/`).strings();
      const account = JSON.parse(acme[`${PREFIX}acme/account`] ?? '{}') as Record<string, unknown>;
      expect(Object.keys(account).sort()).toEqual(['directory', 'keyId', 'url']);
      expect(String(account.url)).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/my-account\//);
      expect(Object.keys(acme).filter((k) => k.includes('/acme/challenges/'))).toEqual([]);
      expect(Object.keys(acme).filter((k) => k.includes('/acme/answering/'))).toHaveLength(2);
      expect(JSON.stringify(acme)).not.toMatch(/PRIVATE KEY/);
    } finally {
      client.close();
    }
  }, 120_000);

  it('two nodes asked for the same name at once make one order, and both serve it', async () => {
    const name = 'both.fleet-acme.test';
    const before = acmeLab.pebble.orders();
    const [onA, onB] = await Promise.all([issue(nodeA, name), issue(nodeB, name)]);
    expect(onA.status, onA.text).toBe(200);
    expect(onB.status, onB.text).toBe(200);
    expect(acmeLab.pebble.orders() - before).toBe(1);
    // One node ordered and made the key; the other took the same result.
    const keyIds = [onA, onB].map((r) => (JSON.parse(r.text) as { keyId: string }).keyId);
    expect(keyIds[0]).toBe(keyIds[1]);
    // Log lines are written in batches (within 100 ms), so the waiting node's line may follow its answer.
    const waitedLines = () => [...nodeA.lines, ...nodeB.lines].filter((l) => String(l.msg).startsWith('ACME certificate issued by another node of the fleet'));
    await waitFor('the waiting node to log that it did not order', async () => (waitedLines().length > 0 ? true : undefined));
    expect(waitedLines()).toHaveLength(1);
    for (const node of [nodeA, nodeB]) {
      await waitFor(`the node on port ${node.port} to serve ${name}`, async () => ((await serves(node, name)) ? true : undefined));
    }

    // One account for the fleet: one account key in the token, whichever node ordered.
    const listed = await acmeLab.cli(['key', 'list', '--json', '--config', acmeLab.keyserverConfig], 30_000);
    const labels = (JSON.parse(listed.stdout) as { label: string }[]).map((k) => k.label);
    expect(labels.filter((l) => l.startsWith('acme-account-'))).toHaveLength(1);
    expect(labels.filter((l) => l.startsWith('acme-both.fleet-acme.test-'))).toHaveLength(1);
  }, 120_000);

  it('TLS-ALPN-01: node A orders, pebble connects to node B only, whose workers present the challenge certificate', async () => {
    // Node A again, now ordering with TLS-ALPN-01 (its challenge certificate is signed in the token with the order's key).
    await nodeA.stop();
    nodeA = await fleetNode('node-a', await freePort(), { challenges: ['tls-alpn-01'] });
    const name = 'alpn.fleet-acme.test';
    const before = acmeLab.pebble.orders();
    const ordered = await issue(nodeA, name);
    expect(ordered.status, ordered.text).toBe(200);
    expect(acmeLab.pebble.orders() - before).toBe(1);
    for (const node of [nodeA, nodeB]) {
      await waitFor(`the node on port ${node.port} to serve ${name}`, async () => ((await serves(node, name)) ? true : undefined));
    }
    // Node A, restarted, still uses the fleet's one account.
    const listed = await acmeLab.cli(['key', 'list', '--json', '--config', acmeLab.keyserverConfig], 30_000);
    expect((JSON.parse(listed.stdout) as { label: string }[]).filter((k) => k.label.startsWith('acme-account-'))).toHaveLength(1);
  }, 120_000);

  it('TLS-ALPN-01: a challenge for the name left in etcd by an earlier order (its node died) does not hide the new one', async () => {
    // Node A orders with TLS-ALPN-01 since the case above. The stale entry's token sorts after any the CA makes.
    const name = 'stale.fleet-acme.test';
    const token = 'z'.repeat(43);
    const stale = { kind: 'tls-alpn-01', token, name, certificatePem: await readFile(root, 'utf8'), keyId: '00', spki: '' };
    const client = new Etcd3({ hosts: [...etcd.endpoints] });
    try {
      await client.put(`${PREFIX}acme/challenges/${token}`).value(JSON.stringify(stale));
      const ordered = await issue(nodeA, name);
      expect(ordered.status, ordered.text).toBe(200);
      await waitFor(`node B to serve ${name}`, async () => ((await serves(nodeB, name)) ? true : undefined));
    } finally {
      await client.delete().key(`${PREFIX}acme/challenges/${token}`);
      client.close();
    }
  }, 120_000);

  it('every order above went to the CA once both nodes said they serve its challenges, none after the wait', () => {
    // Each node says up to which store revision it serves the challenges; the ordering node took its own challenge onto
    // its board at its write, before its watch had caught up with it, and said nothing more when the watch did: its
    // own word lagged, and every order waited out the whole wait (10 s) before the CA was told to look.
    const waitedOut = [...nodeA.lines, ...nodeB.lines].filter((l) => String(l.msg).startsWith('ACME challenge published, but not every node'));
    expect(waitedOut).toEqual([]);
  });

  it('a node that dies mid-order leaves no challenge in etcd: it goes with the node’s lease', async () => {
    // A node that never says it serves the challenges holds node A's order in its wait, the challenge in etcd.
    const client = new Etcd3({ hosts: [...etcd.endpoints] });
    const challenges = async () => (await client.getAll().prefix(`${PREFIX}acme/challenges/`).keys()).length;
    try {
      await client.put(`${PREFIX}acme/answering/silent`).value('0');
      const ordered = issue(nodeA, 'dies.fleet-acme.test').catch(() => undefined);
      await waitFor('node A to publish its challenge', async () => ((await challenges()) > 0 ? true : undefined));
      process.kill(nodeA.pid, 'SIGKILL');
      await ordered;
      // The lease lives 10 s past the node's last keep-alive.
      await waitFor('the dead node’s challenge to leave etcd', async () => ((await challenges()) === 0 ? true : undefined), 25_000);
    } finally {
      await client.delete().key(`${PREFIX}acme/answering/silent`);
      client.close();
    }
  }, 60_000);
});
