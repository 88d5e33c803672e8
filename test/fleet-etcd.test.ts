import http from 'node:http';
import type net from 'node:net';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { type EtcdCluster, startEtcdCluster } from './helpers/etcd.js';
import { removeDir, tempDir } from './helpers/basics.js';
import { settleAll } from './helpers/settle.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// Two `keyedge proxy` nodes (own state dirs, ports) sharing one fleet in a
// real 3-member etcd cluster and one key server: what one node is told,
// the other serves; session tickets resume across nodes and rotations; the
// etcd leader's death costs no handshake; with etcd gone both nodes keep
// serving, say so in /readyz, refuse changes, and converge once it is back.
let lab: KeylessLab;
let etcd: EtcdCluster;
let nodeA: ClusterProxy;
let nodeB: ClusterProxy;
let ca: string;
let originB: http.Server;
let originBPort: number;
let etcdDir: string | undefined;
const PREFIX = '/keyedge/test-fleet/';

function fleetNode(name: string): Promise<ClusterProxy> {
  return startClusterProxy(lab, name, (p) =>
    storeProxyConfig(lab, p, {
      stateDir: join(lab.dir, name, 'state'),
      workers: 1,
      log: { level: 'warn' },
      shutdownGraceMs: 1_000,
      etcd: { endpoints: etcd.endpoints, prefix: PREFIX, timeoutMs: 1_000 },
    }),
  );
}

/** Polls `check` every 25 ms; the elapsed ms once it holds. */
async function within(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<number> {
  const started = performance.now();
  await waitFor(what, async () => ((await check()) ? true : undefined), timeoutMs);
  return Math.round(performance.now() - started);
}

/** A verified handshake for `name` and an answer: sni.onUnknown is reject, so only a certificate for it can serve it. */
const serves = async (node: ClusterProxy, name: string): Promise<boolean> => (await nodeGet(node.port, name, ca)).ok;

beforeAll(async () => {
  // The lab and etcd start side by side (etcd in a directory of its own): each is seconds, mostly waiting.
  etcdDir = tempDir('keyedge-fleet-etcd-');
  await settleAll([startKeylessLab().then((started) => (lab = started)), startEtcdCluster(etcdDir, 3).then((started) => (etcd = started))]);
  ca = readFileSync(lab.caFile, 'utf8');
  originB = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('origin-b'));
  await new Promise<void>((resolve) => originB.listen(0, '127.0.0.1', resolve));
  originBPort = (originB.address() as net.AddressInfo).port;
  [nodeA, nodeB] = await Promise.all([fleetNode('node-a'), fleetNode('node-b')]);
}, 90_000);

afterAll(async () => {
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  await etcd?.close();
  await new Promise((resolve) => (originB === undefined ? resolve(undefined) : originB.close(resolve)));
  await lab?.close();
  if (etcdDir !== undefined) removeDir(etcdDir);
});

describe('a fleet of two nodes on etcd', () => {
  it('serves on node B a certificate PUT on node A, and a route changed on node A', async () => {
    const one = await lab.certificate('one', lab.keys.ec, ['one.fleet.test', 'app.fleet.test']);
    expect(await serves(nodeB, 'one.fleet.test')).toBe(false);
    const put = await nodeA.admin('PUT', '/certs/one', readFileSync(one.file, 'utf8'));
    expect(put.status).toBe(200);
    const certMs = await within('node B to serve the certificate', () => serves(nodeB, 'one.fleet.test'));
    // The target is 1 s; the bound leaves room for a loaded 2-core machine.
    console.log(`certificate PUT on A served by B after ${certMs} ms`);
    expect(certMs).toBeLessThan(3_000);

    // No route for app.fleet.test yet: 404 from the proxy itself.
    expect((await nodeGet(nodeB.port, 'app.fleet.test', ca)).body).toContain('404');
    const route = await nodeA.admin('PUT', '/routes/app.fleet.test', JSON.stringify({ name: 'app.fleet.test', origin: `http://127.0.0.1:${originBPort}` }));
    expect(route.status).toBe(200);
    const routeMs = await within(
      'node B to route to origin B',
      async () => (await nodeGet(nodeB.port, 'app.fleet.test', ca)).body?.includes('origin-b') === true,
    );
    const moved = await nodeA.admin('PUT', '/routes/app.fleet.test', JSON.stringify({ name: 'app.fleet.test', origin: `http://127.0.0.1:${lab.origin.port}` }));
    expect(moved.status).toBe(200);
    const movedMs = await within(
      'node B to follow the route change',
      async () => (await nodeGet(nodeB.port, 'app.fleet.test', ca)).body?.includes('"host"') === true,
    );
    console.log(`route added on A routed by B after ${routeMs} ms; route changed on A followed by B after ${movedMs} ms`);
    expect(Math.max(routeMs, movedMs)).toBeLessThan(3_000);

    // A refused route says why, and changes nothing.
    const bad = await nodeA.admin('PUT', '/routes/bad.fleet.test', JSON.stringify({ name: 'bad.fleet.test', origin: 'ftp://x' }));
    expect(bad.status).toBe(422);
    expect(bad.text).toContain('KEYEDGE_ERR_CONFIG');

    // One written to etcd by hand is refused by every node and said once, not again by each reload after it (a fleet's
    // reload runs at every change anywhere in etcd).
    const raw = new Etcd3({ hosts: [...etcd.endpoints] });
    try {
      await raw.put(`${PREFIX}routes/hand.fleet.test`).value(JSON.stringify({ name: 'hand.fleet.test', origin: 'ftp://x' }));
    } finally {
      raw.close();
    }
    const said = (): number => nodeB.lines.filter((l) => String(l.msg).startsWith("route 'hand.fleet.test'")).length;
    await waitFor('node B to refuse the route written by hand', () => (said() > 0 ? true : undefined));
    for (const [origin, answers] of [
      [`http://127.0.0.1:${originBPort}`, 'origin-b'],
      [`http://127.0.0.1:${lab.origin.port}`, '"host"'],
    ] as const) {
      expect((await nodeA.admin('PUT', '/routes/app.fleet.test', JSON.stringify({ name: 'app.fleet.test', origin }))).status).toBe(200);
      await within('node B to follow the route change', async () => (await nodeGet(nodeB.port, 'app.fleet.test', ca)).body?.includes(answers) === true);
    }
    expect(said()).toBe(1);
  }, 60_000);

  it('resumes on node B a ticket issued by node A, and old tickets after a fleet-wide rotation', async () => {
    const first = await nodeGet(nodeA.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3' });
    expect(first.ok && first.session !== undefined).toBe(true);
    const onB = await nodeGet(nodeB.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3', session: first.session! });
    expect({ ok: onB.ok, resumed: onB.resumed }).toEqual({ ok: true, resumed: true });

    const rotated = await nodeA.admin('POST', '/tickets/rotate');
    expect(rotated.status).toBe(200);
    expect(JSON.parse(rotated.text)).toMatchObject({ result: 'rotated', fleet: true, keys: 2 });
    expect(rotated.text).not.toMatch(/[A-Za-z0-9+/]{40,}={0,2}/);
    // B takes the new ring from its watch: a ticket A issues now, under the new key, resumes on B.
    const ringMs = await within('node B to hold the rotated ring', async () => {
      const fresh = await nodeGet(nodeA.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3' });
      const there = await nodeGet(nodeB.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3', session: fresh.session! });
      return there.resumed === true;
    });
    console.log(`rotated ring on B after ${ringMs} ms`);
    // The ticket from before the rotation still resumes, on both nodes.
    for (const node of [nodeA, nodeB]) {
      const old = await nodeGet(node.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3', session: first.session! });
      expect({ ok: old.ok, resumed: old.resumed }).toEqual({ ok: true, resumed: true });
    }
  }, 60_000);

  it('loses no handshake when the etcd leader is killed under load, and takes writes again after', async () => {
    let running = true;
    let ok = 0;
    const failures: string[] = [];
    const loop = async (node: ClusterProxy): Promise<void> => {
      while (running) {
        const result = await nodeGet(node.port, 'one.fleet.test', ca);
        if (result.ok) ok++;
        else failures.push(result.error ?? 'no answer');
      }
    };
    const loops = [loop(nodeA), loop(nodeB), loop(nodeA), loop(nodeB)];
    await waitFor('load to run', () => (ok > 20 ? true : undefined));
    const leader = await etcd.leader();
    await etcd.members[leader]!.kill();
    const elected = await etcd.leader();
    expect(elected).not.toBe(leader);
    // A write through the new leader, while the load runs.
    const two = await lab.certificate('two', lab.keys.rsa, ['two.fleet.test']);
    await waitFor('a write after the leader change', async () =>
      (await nodeA.admin('PUT', '/certs/two', readFileSync(two.file, 'utf8'))).status === 200 ? true : undefined,
    );
    await within('node B to serve the certificate written after the leader change', () => serves(nodeB, 'two.fleet.test'));
    etcd.members[leader]!.start();
    await etcd.healthy();
    running = false;
    await Promise.all(loops);
    console.log(`etcd leader killed under load: ${ok} handshakes, ${failures.length} failed`);
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(50);
  }, 60_000);

  it('keeps serving with every etcd member stopped: degraded, writes refused, and converges once etcd returns', async () => {
    const three = await lab.certificate('three', lab.keys.ec, ['three.fleet.test']);
    await Promise.all(etcd.members.map((m) => m.kill()));
    const degradedMs = await within(
      'both nodes to report degraded',
      async () => {
        const answers = await Promise.all([nodeA, nodeB].map((n) => fetch(`http://127.0.0.1:${n.adminPort}/readyz`)));
        const bodies = await Promise.all(answers.map((a) => a.text()));
        return (
          answers.every((a) => a.status === 200 && a.headers.get('x-keyedge-degraded') === 'store') &&
          bodies.every((b) => b.startsWith('degraded: etcd unreachable'))
        );
      },
      20_000,
    );
    console.log(`etcd gone: both nodes degraded after ${degradedMs} ms`);
    for (const node of [nodeA, nodeB]) {
      for (const name of ['one.fleet.test', 'two.fleet.test']) expect(await serves(node, name)).toBe(true);
      expect((await nodeGet(node.port, 'app.fleet.test', ca)).body).toContain('"host"');
    }
    // Changes are refused with a code that says why, before any work.
    const refused = await nodeA.admin('PUT', '/certs/three', readFileSync(three.file, 'utf8'));
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.text).error.code).toBe('KEYEDGE_ERR_STORE_UNAVAILABLE');
    const route = await nodeB.admin('PUT', '/routes/app.fleet.test', JSON.stringify({ name: 'app.fleet.test', origin: `http://127.0.0.1:${originBPort}` }));
    expect(route.status).toBe(503);
    expect((await nodeA.admin('POST', '/tickets/rotate')).status).toBe(503);

    // A node restarted while etcd is away serves its cached state.
    await nodeB.stop();
    nodeB = await fleetNode('node-b');
    expect(await serves(nodeB, 'one.fleet.test')).toBe(true);
    expect((await nodeGet(nodeB.port, 'app.fleet.test', ca)).body).toContain('"host"');

    const back = performance.now();
    for (const member of etcd.members) member.start();
    await within(
      'both nodes to be ready again',
      async () => {
        const answers = await Promise.all([nodeA, nodeB].map((n) => fetch(`http://127.0.0.1:${n.adminPort}/readyz`).then((r) => r.text())));
        return answers.every((t) => t === 'ready\n');
      },
      30_000,
    );
    const readyMs = Math.round(performance.now() - back);
    expect((await nodeA.admin('PUT', '/certs/three', readFileSync(three.file, 'utf8'))).status).toBe(200);
    await within('node B to serve a certificate written after etcd returned', () => serves(nodeB, 'three.fleet.test'));
    console.log(
      `etcd back: both nodes ready ${readyMs} ms after the members started; a write served fleet-wide ${Math.round(performance.now() - back)} ms after`,
    );
    // The restarted node rejoins the fleet's ticket ring: A's tickets resume on it.
    await within('node B to take the fleet ticket ring', async () => {
      const fresh = await nodeGet(nodeA.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3' });
      return (await nodeGet(nodeB.port, 'one.fleet.test', ca, { minVersion: 'TLSv1.3', session: fresh.session! })).resumed === true;
    });
  }, 90_000);
});
