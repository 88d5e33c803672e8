import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// A CA's directory URL may carry a token in its query (`acme.directory`; a user and password in it are refused):
// GET /config showed it masked, but the start's log line quoted the URL whole, and so did every failure to reach the
// directory, in the log, in GET /certs and in the 502 answer of POST /acme/issue (which `keyedge cert issue` prints).
// The directory here is a real HTTP server answering 503 with a problem document; no order gets past it.
const TOKEN = 'dir-tok-Q8v3mZ';
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: http.Server;
let fetched = 0;

beforeAll(async () => {
  ca = http.createServer((req, res) => {
    if (new URL(req.url ?? '/', 'http://ca').searchParams.get('token') === TOKEN) fetched++;
    res
      .writeHead(503, { 'content-type': 'application/problem+json' })
      .end(JSON.stringify({ type: 'urn:ietf:params:acme:error:serverInternal', detail: 'down for maintenance' }));
  });
  await new Promise<void>((resolve) => ca.listen(0, '127.0.0.1', resolve));
  lab = await startKeylessLab();
  const directory = `http://127.0.0.1:${(ca.address() as AddressInfo).port}/directory?token=${TOKEN}`;
  proxy = await startClusterProxy(lab, 'acme-dir', (p) =>
    storeProxyConfig(lab, p, { workers: 1, acme: { directory, keyserverConfig: join(lab.dir, 'keyserver.json') } }),
  );
}, 60_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
  await new Promise((resolve) => (ca ? ca.close(resolve) : resolve(undefined)));
});

describe('an ACME directory URL with a token in its query', () => {
  it('is shown masked in the log, the 502 of POST /acme/issue and GET /certs, and the CA still gets the token', async () => {
    const answer = await proxy.admin('POST', '/acme/issue', JSON.stringify({ domains: ['www.lab.test'] }));
    expect(answer.status).toBe(502);
    expect(fetched, 'the directory fetched with its token').toBeGreaterThan(0);
    await waitFor('the failure logged', () => proxy.lines.find((l) => l.msg === 'ACME issuance failed; the current certificate keeps serving'));
    const certs = await proxy.admin('GET', '/certs', undefined, null);
    // Booleans: a failure message must not print the token either.
    expect(answer.text.includes(TOKEN), 'the token in the 502 answer').toBe(false);
    expect(certs.text.includes(TOKEN), 'the token in GET /certs').toBe(false);
    expect(JSON.stringify(proxy.lines).includes(TOKEN), 'the token in a log line').toBe(false);
    // What an operator reads still names the URL, its query parameter and what went wrong.
    const message = (JSON.parse(answer.text) as { error: { message: string } }).error.message;
    expect(message).toMatch(/^GET http:\/\/127\.0\.0\.1:\d+\/directory\?token=\*{5}: 503 serverInternal down for maintenance$/);
    const started = proxy.lines.find((l) => l.msg === 'ACME issuer started');
    expect(started?.directory).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/directory\?token=\*{5}$/);
  });
});
