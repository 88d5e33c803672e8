import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Logger } from '../keyserver/shared/log.js';
import { watchForChanges } from '../proxy/serving/watch.js';
import { sleep } from './helpers/basics.js';
import { waitFor } from './helpers/proxy-cluster.js';

// A file mounted from a Kubernetes ConfigMap or Secret is a link through `..data`, itself a link to a dated directory;
// an update writes a new dated directory and renames a new `..data` over the old one. Nothing happens to a file named
// like the mounted one: the only event in the mount's directory is named `..data`. The rescan is an hour away here,
// so only the watch can see the swap; the assertions allow it 10 s (it takes its 150 ms debounce).

const log = { warn: () => {}, info: () => {}, error: () => {}, debug: () => {} } as unknown as Logger;
const stops: (() => void)[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const stop of stops.splice(0)) stop();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A mount as the kubelet makes it: `dir/..STAMP/<files>`, `dir/..data → ..STAMP`, `dir/<file> → ..data/<file>`. */
function mount(dir: string, files: Record<string, string>): void {
  const stamp = '..2026_12_07_00_00_00.000000001';
  mkdirSync(join(dir, stamp), { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, stamp, name), text);
  symlinkSync(stamp, join(dir, '..data'));
  for (const name of Object.keys(files)) symlinkSync(join('..data', name), join(dir, name));
}

/** The kubelet's update: a new dated directory, `..data_tmp` pointing at it renamed over `..data`, the old directory removed. */
function update(dir: string, files: Record<string, string>): void {
  const stamp = '..2026_12_07_00_00_01.000000002';
  mkdirSync(join(dir, stamp));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, stamp, name), text);
  symlinkSync(stamp, join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  rmSync(join(dir, '..2026_12_07_00_00_00.000000001'), { recursive: true });
}

function scratch(): string {
  const dir = mkdtempSync(join(tmpdir(), 'keyedge-configmap-'));
  dirs.push(dir);
  return dir;
}

describe("a watched file behind a directory link re-pointed (a Kubernetes mount, a deploy's current link)", () => {
  it('the config file: a swap of `..data` is seen by the watch, not left to the rescan', async () => {
    const root = scratch();
    const config = join(root, 'config');
    mount(config, { 'proxy.json': '{"a":1}' });
    const storeDir = join(root, 'certs');
    const triggers: string[] = [];
    stops.push(watchForChanges({ storeDir, configFile: join(config, 'proxy.json'), rescanSeconds: 3600, onChange: (t) => triggers.push(t), log }));
    // Nothing changed yet: nothing reloads.
    await sleep(500);
    expect(triggers).toEqual([]);
    update(config, { 'proxy.json': '{"a":2}' });
    await waitFor('a reload by the watch', () => (triggers.includes('watch') ? true : undefined), 10_000);
  });

  it('a chain under a directory link re-pointed (`ln -sfn releases/2 current`), the old release kept: seen by the watch', async () => {
    // The kubelet removes the old directory, whose deletion a watch on it sees; a deploy that keeps its releases does
    // not: the only event is the link's, in its parent.
    const root = scratch();
    const site = join(root, 'site');
    for (const release of ['1', '2']) {
      mkdirSync(join(site, 'releases', release), { recursive: true });
      writeFileSync(join(site, 'releases', release, 'tls.crt'), `release ${release}`);
    }
    symlinkSync(join('releases', '1'), join(site, 'current'));
    const storeDir = join(root, 'certs');
    const triggers: string[] = [];
    stops.push(
      watchForChanges({
        storeDir,
        configFile: undefined,
        rescanSeconds: 3600,
        onChange: (t) => triggers.push(t),
        followed: () => [join(site, 'current', 'tls.crt')],
        log,
      }),
    );
    await sleep(500);
    expect(triggers).toEqual([]);
    symlinkSync(join('releases', '2'), join(site, 'current.tmp'));
    renameSync(join(site, 'current.tmp'), join(site, 'current'));
    await waitFor('a reload by the watch', () => (triggers.includes('watch') ? true : undefined), 10_000);
  });
});
