import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACK_THRESHOLD } from '../proxy/serving/pack.js';
import { alive, workerPids } from './helpers/abuse.js';
import { nodeGet } from './helpers/clients.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { issueForPublicKey } from './helpers/pki.js';

// A worker replaced while the state directory cannot be written (a full disk;
// a file system remounted read-only on errors, ext4's default): a store larger
// than a pack's threshold has its whole state sent to a new worker as a file
// there (serving/pack.ts). The write's failure threw in the primary's handler
// of the worker's first message, an uncaught error that stopped the whole
// proxy. Needs a tmpfs mount (root, a mount namespace of its own).

let lab: KeylessLab;
let ca: string;
let proxy: ClusterProxy | undefined;
let state: string | undefined;
let mounted = false;

const canMount = ((probe: string): boolean => {
  const ok = spawnSync('mount', ['-t', 'tmpfs', 'none', probe]).status === 0;
  if (ok) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return ok;
})(mkdtempSync(join(tmpdir(), 'keyedge-mount-probe-')));

const hex = (serial: string | undefined): string => (serial ?? '').toUpperCase().replace(/^0+/, '');

/** Writes `file` until the file system has no room left. */
function fill(file: string): void {
  const fd = openSync(file, 'w');
  try {
    for (const size of [1 << 20, 4096, 1]) {
      const chunk = Buffer.alloc(size);
      for (;;) {
        try {
          writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  if (mounted && state !== undefined) spawnSync('umount', [state]);
  await lab?.close();
});

describe.skipIf(!canMount)('a worker replaced while the state directory is full', () => {
  it(`in a store larger than a pack (${PACK_THRESHOLD + 8} entries): the primary sends the replacement its state over IPC and goes on; the replacement serves`, async () => {
    // The store is a link to v1, then to v2 (every entry renewed) in one step: one reload carries the whole change.
    const base = join(lab.dir, 'full-state');
    const storeDir = join(base, 'store');
    for (const version of ['v1', 'v2']) {
      mkdirSync(join(base, version), { recursive: true });
      for (let i = 0; i < PACK_THRESHOLD + 8; i++) {
        const issued = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: `s${i}.lab.test`, dnsNames: [`s${i}.lab.test`] });
        writeFileSync(join(base, version, `s${i}.pem`), `${issued.certPem}\n${lab.ca.certPem}`);
      }
    }
    symlinkSync(join(base, 'v1'), storeDir);
    state = join(lab.dir, 'full-state', 'state');
    mkdirSync(state, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'none', state]);
    mounted = true;
    proxy = await startClusterProxy(
      lab,
      'full-state',
      (p) => storeProxyConfig(lab, p, { stateDir: state, certStore: { dir: storeDir, rescanSeconds: 3600 } }),
      {},
      90_000,
    );
    const running = proxy;
    const [survivor, victim] = await waitFor('two workers listening', () =>
      workerPids(running).listening.length === 2 ? workerPids(running).listening : undefined,
    );
    // Full: no room for a pack, nor a byte more (a remount read-only is refused while a worker holds an unlinked pack).
    fill(join(state, 'filler'));
    process.kill(victim!, 'SIGKILL');
    const uncaught = () => running.lines.find((l) => l.pid === running.pid && typeof l.kind === 'string');
    const replacement = await waitFor(
      'a replacement listening, or the primary failing',
      () => uncaught() ?? workerPids(running).listening.find((p) => p !== survivor && p !== victim),
      60_000,
    );
    expect(uncaught(), 'an uncaught error in the primary').toBeUndefined();
    expect(typeof replacement).toBe('number');
    expect(alive(running.pid), 'the primary').toBe(true);
    await waitFor('readiness', async () => ((await fetch(`http://127.0.0.1:${running.adminPort}/readyz`)).status === 200 ? true : undefined), 30_000);
    // Both workers serve the whole store: the first entry and the last, on several connections.
    for (let k = 0; k < 4; k++) {
      for (const host of ['s0.lab.test', `s${PACK_THRESHOLD + 7}.lab.test`]) {
        const got = await nodeGet(running.port, host, ca);
        expect(got.ok, `${host}: ${got.error ?? ''}`).toBe(true);
      }
    }
    expect(running.lines.some((l) => l.level === 40 && String(l.msg).includes('over IPC'))).toBe(true);

    // A reload of every entry, a delta too large to go inline: its pack cannot be written either. It threw out of the
    // distribution, and the reload was committed with no worker sent it ('partial'): they served the old versions.
    const renewed = hex(new X509Certificate(readFileSync(join(base, 'v2', 's0.pem'))).serialNumber);
    const before = running.lines.length;
    symlinkSync(join(base, 'v2'), `${storeDir}.next`);
    renameSync(`${storeDir}.next`, storeDir);
    // Asked for, or seen by the store's watch first: one of them carries the change whole.
    await running.admin('POST', '/reload');
    const whole = await waitFor('the reload of every entry', () =>
      running.lines.slice(before).find((l) => l.msg === 'reload done' && l.changed === PACK_THRESHOLD + 8),
    );
    expect(whole.result).toBe('ok');
    for (let k = 0; k < 4; k++) expect(hex((await nodeGet(running.port, 's0.lab.test', ca)).serial)).toBe(renewed);
    expect(alive(running.pid), 'the primary').toBe(true);
  }, 240_000);
});
