import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, clusterWorkerPids, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// An operator's reload (SIGHUP, POST /reload) that came while a reload ran and another was already queued behind it
// (a file watch's, a rescan's) was folded into that one under its trigger: the answer to POST /reload said `watch`,
// the reload was logged and counted as the watch's, and it compared only the stat of each entry, not the content an
// operator's reload compares (serving/coordinator.ts). The folded reload now runs as the operator's.

let lab: KeylessLab;
let proxy: ClusterProxy;
let storeDir: string;
const leaf = (host: string): Promise<Issued> => issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: host, dnsNames: [host] });
const chain = (l: Issued): string => `${l.certPem}\n${lab.ca.certPem}`;

beforeAll(async () => {
  lab = await startKeylessLab();
  proxy = await startClusterProxy(lab, 'reload-folded', (p) => {
    storeDir = p.storeDir;
    // A stopped worker holds a reload open until it answers: long enough for the test, short of being replaced.
    return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 }, reloadApplyTimeoutMs: 60_000, workerSilentTimeoutMs: 120_000 });
  });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('an operator reload folded into one already queued', () => {
  it('runs, answers, is logged and counted as the operator asked', async () => {
    const [first, second] = await Promise.all([leaf('first.lab.test'), leaf('second.lab.test')]);
    const [held] = clusterWorkerPids(proxy.pid);
    const from = proxy.lines.length;
    // One worker stopped: the watch's reload of the first file waits for its answer...
    process.kill(held!, 'SIGSTOP');
    let answer: { status: number; text: string };
    try {
      writeFileSync(join(storeDir, 'first.pem'), chain(first));
      await sleep(1000);
      // ...while a change to the second queues another watch reload behind it, and the operator asks for one.
      writeFileSync(join(storeDir, 'second.pem'), chain(second));
      await sleep(1000);
      const asked = proxy.admin('POST', '/reload');
      await sleep(300);
      process.kill(held!, 'SIGCONT');
      answer = await asked;
    } finally {
      process.kill(held!, 'SIGCONT');
    }
    expect(answer.status, answer.text).toBe(200);
    const report = JSON.parse(answer.text) as { trigger: string; generation: number; changed: string[] };
    // Before: 'watch', the queued reload's trigger.
    expect(report.trigger).toBe('admin');
    const done = await waitFor(
      'its log line',
      () => proxy.lines.slice(from).find((l) => l.msg === 'reload done' && l.generation === report.generation),
      20_000,
    );
    expect(done.trigger).toBe('admin');
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    expect(metrics).toMatch(/keyedge_proxy_reloads_total\{trigger="admin",result="ok"\} 1\b/);
  }, 60_000);
});
