import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive, type AbuseSetup, metricSum, RawClient, startAbuseSetup, workerPids } from './helpers/abuse.js';
import { removeDir, sleep, tempDir } from './helpers/basics.js';
import { waitFor } from './helpers/proxy-cluster.js';

// What a worker does with an error nothing handled: it counts it
// (keyedge_proxy_uncaught_errors_total), logs it with its code, drains (the
// request in flight on it is answered whole), exits 70, and the primary starts
// a replacement. No client or origin can cause one any more (abuse-*.test.ts),
// so the fault is injected: a module preloaded into every worker
// (NODE_OPTIONS=--import) throws, and rejects a promise, on SIGUSR2.
const HOST = 'uncaught.lab.test';
const INJECT = `
import cluster from 'node:cluster';
if (cluster.isWorker) {
  process.on('SIGUSR2', () => {
    void Promise.reject(Object.assign(new Error('injected rejection'), { code: 'TEST_INJECTED' }));
    setImmediate(() => {
      throw Object.assign(new Error('injected exception'), { code: 'TEST_INJECTED' });
    });
  });
}
`;

let dir: string;
let setup: AbuseSetup;

beforeAll(async () => {
  dir = tempDir('keyedge-uncaught-');
  const inject = join(dir, 'inject.mjs');
  writeFileSync(inject, INJECT);
  setup = await startAbuseSetup('uncaught', HOST, { NODE_OPTIONS: `--import=${pathToFileURL(inject).href}` });
}, 90_000);

afterAll(async () => {
  await setup?.close();
  if (dir !== undefined) removeDir(dir);
});

const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;

describe('an uncaught error in a worker', () => {
  it('is counted and logged, the worker drains (its request in flight is answered) and exits 70, and a replacement serves', async () => {
    const { proxy } = setup;
    const before = workerPids(proxy).listening;
    // Which worker holds this connection: the one that logged its first request.
    const client = new RawClient(proxy.port, setup.ca, HOST);
    await client.secure;
    client.write(get('/probe/answer?size=16'));
    const probe = await waitFor('the probe access line', () => proxy.lines.find((l) => l.access === true && l.path === '/probe/answer'));
    const pid = probe.pid as number;
    expect(before).toContain(pid);
    const answered = client.received;
    // In flight on that worker for 3 s.
    client.write(get('/inflight/answer?size=1024&delayMs=3000'));
    await sleep(300);
    process.kill(pid, 'SIGUSR2');

    const logged = await waitFor('the uncaught-error log lines', () => {
      const lines = proxy.lines.filter((l) => l.pid === pid && typeof l.kind === 'string');
      return lines.length >= 2 ? lines : undefined;
    });
    expect(logged.map((l) => l.kind).sort()).toEqual(['uncaughtException', 'unhandledRejection']);
    for (const line of logged) expect(line).toMatchObject({ level: 50, code: 'TEST_INJECTED' });
    expect(String(logged.map((l) => l.msg))).toMatch(/drains and exits/);
    // While it drains it still answers the primary's metrics requests.
    expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total', { kind: 'uncaughtException' })).toBe(1);
    expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total', { kind: 'unhandledRejection' })).toBe(1);

    // The request in flight is answered whole, then the worker exits with 70 and is replaced.
    await client.receivedAtLeast(answered + 1024, 10_000);
    expect(client.head.slice(client.head.lastIndexOf('HTTP/1.1'))).toMatch(/^HTTP\/1\.1 200 /);
    const died = await waitFor(
      'the primary to see the worker exit',
      () => proxy.lines.find((l) => l.msg === 'proxy worker died; starting a replacement' && l.pid === pid),
      30_000,
    );
    expect(died.code).toBe(70);
    expect(alive(pid)).toBe(false);
    const replacement = await waitFor('a replacement worker', () => workerPids(proxy).listening.find((p) => !before.includes(p)), 15_000);
    expect(alive(replacement)).toBe(true);
    client.tls.destroy();
    const fresh = new RawClient(proxy.port, setup.ca, HOST);
    await fresh.secure;
    fresh.write(get('/after/answer?size=16'));
    await fresh.receivedAtLeast(1);
    expect(fresh.head).toMatch(/^HTTP\/1\.1 200 /);
    fresh.tls.destroy();
  }, 90_000);
});
