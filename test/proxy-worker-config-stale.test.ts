import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// A primary killed with SIGKILL between a fork and its worker's read leaves that fork's file (a copy of the running
// configuration, cluster-worker-config.ts) in the state directory. The next primary removes those of a primary that is
// gone, once written more than workerStartTimeoutMs ago, and nothing else.

const HOUR_AGO = new Date(Date.now() - 3_600_000);

let lab: KeylessLab;
let proxy: ClusterProxy;
let stateDir: string;
/** A pid that ran and is gone: a process started and waited for. */
let gone: number;

beforeAll(async () => {
  lab = await startKeylessLab();
  stateDir = join(lab.dir, 'state');
  mkdirSync(stateDir, { recursive: true });
  gone = spawnSync(process.execPath, ['-e', '']).pid!;
  const plant = (name: string, old: boolean): void => {
    writeFileSync(join(stateDir, name), '{}', { mode: 0o600 });
    if (old) utimesSync(join(stateDir, name), HOUR_AGO, HOUR_AGO);
  };
  plant(`worker-config-${gone}-deadbeef-1.json`, true);
  plant(`worker-config-${gone}-deadbeef-2.json.tmp`, true);
  // Written a moment ago: perhaps a fork of a primary in another container, whose pid this one cannot see.
  plant(`worker-config-${gone}-deadbeef-3.json`, false);
  // Of a running process (this test's).
  plant(`worker-config-${process.pid}-cafebabe-1.json`, true);
  // Not a fork's file.
  plant('worker-config-notes.json', true);
  plant(`worker-config-${gone}.json`, true);
  const chain = (await lab.certificate('wild', lab.keys.ec, ['*.lab.test'])).file;
  proxy = await startClusterProxy(lab, 'worker-config-stale', (p) => storeProxyConfig(lab, p, { certificates: [{ name: 'wild', chain }] }));
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('worker config files left by a primary killed between a fork and its worker’s read', () => {
  it('are removed at the next primary’s start: only those of a gone primary, written more than workerStartTimeoutMs ago', () => {
    const left = readdirSync(stateDir).filter((f) => f.startsWith('worker-config'));
    expect(left.sort()).toEqual(
      [
        `worker-config-${gone}-deadbeef-3.json`,
        `worker-config-${process.pid}-cafebabe-1.json`,
        'worker-config-notes.json',
        `worker-config-${gone}.json`,
      ].sort(),
    );
    expect(proxy.lines.find((l) => l.msg === 'removed worker config files left by a primary that is gone')).toMatchObject({ files: 2 });
  });
});
