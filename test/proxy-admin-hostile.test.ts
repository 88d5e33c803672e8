import net from 'node:net';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// The admin port against clients that do not behave: a burst of /readyz
// probes, a head sent a byte at a time (slowloris), and an admin API bound
// beyond loopback by mistake. Against a real `keyedge proxy` with two workers.
let lab: KeylessLab;
let proxy: ClusterProxy;

beforeAll(async () => {
  lab = await startKeylessLab();
  const cert = await lab.certificate('hostile', lab.keys.ec, ['*.lab.test']);
  proxy = await startClusterProxy(lab, 'admin-hostile', (p) => {
    writeFileSync(join(p.storeDir, 'hostile.pem'), readFileSync(cert.file));
    // 0.0.0.0 as an operator might write by mistake; the test still reaches it on 127.0.0.1.
    return storeProxyConfig(lab, p, { admin: { host: '0.0.0.0', port: p.adminPort, tokenFile: p.tokenFile } });
  });
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

/** The key server's count of pings answered, from its /metrics. */
async function keyserverPings(): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${lab.adminPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n'))
    if (line.startsWith('keyedge_keyserver_requests_total{') && line.includes('op="ping"')) sum += Number(line.split(' ').pop());
  return sum;
}

describe('admin port under hostile clients', () => {
  it('a burst of 300 /readyz probes costs the key server a few pings, not one connection each, and every probe reads ready', async () => {
    const before = await keyserverPings();
    const statuses = await Promise.all(Array.from({ length: 300 }, async () => (await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`)).status));
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const pings = (await keyserverPings()) - before;
    // The workers' bridges ping on their own too; 300 probes one ping each would be 300.
    expect(pings).toBeLessThan(50);
  }, 60_000);

  it('a head sent a byte a second (slowloris) is cut within the 10 s head deadline, not held for a minute', async () => {
    const socket = net.connect(proxy.adminPort, '127.0.0.1');
    const started = Date.now();
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.on('error', () => undefined);
    const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now() - started)));
    socket.write('GET /metrics HTTP/1.1\r\nHost: admin\r\nX-Slow: ');
    const drip = setInterval(() => socket.writable && socket.write('a'), 1_000);
    const cutAfter = await Promise.race([closed, new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), 30_000))]);
    clearInterval(drip);
    socket.destroy();
    expect(cutAfter).toBeGreaterThanOrEqual(9_000);
    expect(cutAfter).toBeLessThan(25_000);
    expect(received).toMatch(/^HTTP\/1\.1 408 |^$/);
  }, 60_000);

  it('an admin API bound beyond loopback is named in a warning at start', () => {
    const warning = proxy.lines.find((l) => String(l.msg).startsWith('the admin API listens beyond loopback'));
    expect(warning).toMatchObject({ level: 40 });
  });
});
