import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { refusedPort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { answered, request } from './helpers/requests.js';

// Several origins per domain: round robin, a refused origin skipped for the
// cool-down and tried again after it, a request with a body never retried,
// and exact and wildcard names each reaching their own origins.
const COOLDOWN_MS = 3000;
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let deadPort: number;
const servers: http.Server[] = [];

/** An origin that answers with its name. */
async function named(name: string, port = 0): Promise<string> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end(name));
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  const a = await named('a');
  const b = await named('b');
  deadPort = await refusedPort();
  const alsoDead = `http://127.0.0.1:${await refusedPort()}`;
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: 'rr.lab.test', origins: [a, b] },
        { name: 'failover.lab.test', origins: [`http://127.0.0.1:${deadPort}`, b] },
        { name: 'post.lab.test', origins: [alsoDead, a] },
        { name: 'shop.lab.test', origin: a },
        { name: '*.lab.test', origins: [b] },
      ],
      limits: { originFailureCooldownMs: COOLDOWN_MS, originConnectTimeoutMs: 1000 },
    }),
    { log: createLogger('balancing-test', 'silent') },
  );
});
afterAll(async () => {
  await proxy?.close();
  for (const server of servers) server.close();
  await lab?.close();
});

const body = async (host: string, options: Parameters<typeof request>[3] = {}): Promise<string> => {
  const res = answered(await request(proxy.ports[0]!, ca, host, options));
  expect(res.status).toBe(200);
  return res.body;
};

describe('several origins per domain', () => {
  it('takes the origins in turn', async () => {
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) seen.push(await body('rr.lab.test'));
    expect(seen).toEqual(['a', 'b', 'a', 'b']);
  });

  it('serves every request from the live origin while one refuses, and tries that one again after the cool-down', async () => {
    // One kept-alive connection: the requests during the cool-down take no handshake each.
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    // The first request meets the refused origin and is retried on the next (GET, no body).
    expect(await body('failover.lab.test', { agent })).toBe('b');
    // The origin comes back at once, but stays skipped until its cool-down ends.
    await named('revived', deadPort);
    const during: string[] = [];
    for (let i = 0; i < 3; i++) during.push(await body('failover.lab.test', { agent }));
    expect(during).toEqual(['b', 'b', 'b']);
    agent.destroy();
    const after = new Set<string>();
    while (!after.has('revived')) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      after.add(await body('failover.lab.test'));
    }
    // Back in rotation: both answer.
    after.add(await body('failover.lab.test'));
    expect(after).toEqual(new Set(['b', 'revived']));
  });

  it('does not send a request with a body to a second origin', async () => {
    const first = answered(await request(proxy.ports[0]!, ca, 'post.lab.test', { method: 'POST', body: 'order=1' }));
    expect(first.status).toBe(502);
    expect(first.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_ORIGIN_UNREACHABLE');
    // The refused origin now cools down: the next one takes the request.
    expect(await body('post.lab.test', { method: 'POST', body: 'order=1' })).toBe('a');
  });

  it('routes an exact name and a wildcard each to their own origins', async () => {
    expect(await body('shop.lab.test')).toBe('a');
    expect(await body('anything.lab.test')).toBe('b');
  });
});
