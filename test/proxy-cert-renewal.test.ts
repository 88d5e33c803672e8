import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Renewals under load: new TLS connections and keep-alive requests run
// through every replacement, which alternates ECDSA and RSA keys (so every
// one is also a change of key). The full 20-replacement run with timings is
// bench/cert-reload/main.ts; this is the short loop.
const REPLACEMENTS = 6;
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const first = await lab.certificate('renew-0', lab.keys.ec, ['renew.lab.test']);
  proxy = await startClusterProxy(lab, 'renewal', (p) => {
    writeFileSync(join(p.storeDir, 'renew.pem'), `${first.leaf.certPem}\n${lab.ca.certPem}`);
    return storeProxyConfig(lab, p, { domains: [{ name: 'renew.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` }] });
  });
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('certificate renewal under load', () => {
  it(`replaces a certificate ${REPLACEMENTS} times, alternating keys, without a failed handshake or request`, async () => {
    let running = true;
    const failures: string[] = [];
    let handshakes = 0;
    let requests = 0;
    const newConnections = async (): Promise<void> => {
      while (running) {
        const result = await nodeGet(proxy.port, 'renew.lab.test', ca);
        if (result.ok && result.body?.startsWith('HTTP/1.1 200')) handshakes++;
        else failures.push(`handshake: ${result.error ?? result.body?.slice(0, 40)}`);
      }
    };
    const agent = new https.Agent({ keepAlive: true, maxSockets: 2 });
    const keepAlive = async (): Promise<void> => {
      while (running) {
        const status = await new Promise<string>((resolve) => {
          const req = https.get(
            { host: '127.0.0.1', port: proxy.port, servername: 'renew.lab.test', headers: { host: 'renew.lab.test' }, ca, agent },
            (res) => {
              res.resume();
              res.on('end', () => resolve(String(res.statusCode)));
            },
          );
          req.on('error', (err) => resolve(err.message));
        });
        if (status === '200') requests++;
        else failures.push(`request: ${status}`);
      }
    };
    const load = [newConnections(), newConnections(), keepAlive(), keepAlive()];
    await sleep(200);
    for (let i = 1; i <= REPLACEMENTS; i++) {
      const key = i % 2 === 1 ? lab.keys.rsa : lab.keys.ec;
      const next = await lab.certificate(`renew-${i}`, key, ['renew.lab.test']);
      const temp = join(proxy.storeDir, '.renew.pem.tmp');
      writeFileSync(temp, `${next.leaf.certPem}\n${lab.ca.certPem}`);
      renameSync(temp, join(proxy.storeDir, 'renew.pem'));
      const serial = next.leaf.cert.serialNumber;
      await waitFor(
        `replacement ${i}`,
        async () => ((await nodeGet(proxy.port, 'renew.lab.test', ca)).serial?.toLowerCase() === serial ? true : undefined),
        10_000,
      );
    }
    await sleep(200);
    running = false;
    await Promise.all(load);
    agent.destroy();
    expect(failures).toEqual([]);
    expect(handshakes).toBeGreaterThan(REPLACEMENTS);
    expect(requests).toBeGreaterThan(REPLACEMENTS);
    const reloads = proxy.lines.filter((l) => l.msg === 'certificate now serving' && l.certificate === 'renew');
    expect(reloads.length).toBeGreaterThanOrEqual(REPLACEMENTS);
  });
});
