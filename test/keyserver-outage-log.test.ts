/**
 * What an operator tailing the proxy's log sees while the key server is away:
 * `keyedge proxy` (primary + 2 workers) on the lab's key server, which is
 * stopped while clients keep making handshakes. Each worker logs one warning
 * naming the key server's address and how many handshakes failed (not a line
 * per handshake), and one line once signing works again after its return.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

const WARNING = 'key server signing failing: handshakes fail';
const RECOVERED = 'key server signing works again';

let lab: KeylessLab;
let proxy: ClusterProxy | undefined;
let ca: Buffer;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile);
}, 90_000);
afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

function handshake(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'ec.lab.test', ca });
    socket.setTimeout(5_000, () => socket.destroy(new Error('client timeout')));
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

it('logs one rate-limited warning per worker naming the key server while handshakes fail, and one line when signing works again', async () => {
  const chain = (await lab.certificate('ec', lab.keys.ec, ['ec.lab.test'])).file;
  proxy = await startClusterProxy(lab, 'outage', (p) => storeProxyConfig(lab, p, { certificates: [{ name: 'ec', chain }], sni: { default: 'ec' } }));
  const running = proxy;
  const port = running.port;
  const lines = (msg: string): Record<string, unknown>[] => running.lines.filter((l) => l.msg === msg);
  // Signing works: nothing said.
  for (let i = 0; i < 10; i++) expect(await handshake(port)).toBe(true);
  await sleep(1_500);
  expect(lines(WARNING)).toEqual([]);

  await lab.stopKeyserver();
  let failed = 0;
  // Handshakes for a few seconds: each worker's first failure is said at once, the rest only counted.
  const end = Date.now() + 4_000;
  await Promise.all(
    [0, 1, 2, 3].map(async () => {
      while (Date.now() < end) if (!(await handshake(port))) failed++;
    }),
  );
  await waitFor('a warning', () => (lines(WARNING).length > 0 ? true : undefined), 5_000);
  const warnings = lines(WARNING);
  expect(failed).toBeGreaterThan(20);
  // Not one per handshake: at most one per worker in the rate limit's interval.
  const byWorker = new Map<unknown, number>();
  for (const line of warnings) byWorker.set(line.pid, (byWorker.get(line.pid) ?? 0) + 1);
  expect(
    [...byWorker.values()].every((n) => n === 1),
    JSON.stringify(warnings),
  ).toBe(true);
  for (const line of warnings) {
    expect(line.level).toBe(40);
    expect(line.keyservers).toEqual([`unix:${lab.socket}`]);
    expect(line.failed).toBeGreaterThan(0);
    expect(Object.keys(line.reasons as object).every((r) => ['connect', 'timeout', 'remote', 'protocol', 'breaker'].includes(r))).toBe(true);
  }

  await lab.startKeyserver();
  // Every worker that warned says signing works again once it signs: handshakes until each has.
  const warned = [...byWorker.keys()];
  await waitFor(
    'a recovery line from each worker that warned',
    async () => {
      await Promise.all([0, 1, 2, 3].map(() => handshake(port)));
      const recovered = new Set(lines(RECOVERED).map((l) => l.pid));
      return warned.every((pid) => recovered.has(pid)) ? true : undefined;
    },
    20_000,
  );
  const recoveries = lines(RECOVERED);
  expect(recoveries.length).toBe(warned.length);
  for (const line of recoveries) expect(line.keyservers).toEqual([`unix:${lab.socket}`]);
  for (let i = 0; i < 10; i++) expect(await handshake(port)).toBe(true);
  // No further warning came with the recovery.
  expect(lines(WARNING).length).toBe(warnings.length);
  // Every handshake the clients saw fail is in a count (a few more may have failed as the key server came back).
  const counted = [...warnings, ...recoveries].reduce((sum, l) => sum + (l.failed as number), 0);
  expect(counted).toBeGreaterThanOrEqual(failed);
  console.info(`${failed} failed handshakes; logged: ${JSON.stringify([...warnings, ...recoveries])}`);
}, 90_000);
