import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACK_THRESHOLD } from '../proxy/serving/pack.js';
import { nodeGet } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, clusterWorkerPids, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// The previous version keeps serving across a restart: an entry whose files
// were replaced by a bad version while `keyedge proxy` was down (here a
// chain for a key the key server does not hold) serves, at the next start,
// the version the last run served (serving/last-served.ts), for a store
// below a pack's threshold and one above it; the refusal is still reported.

let lab: KeylessLab;
let ca: string;
const running: ClusterProxy[] = [];

const hex = (serial: string | undefined): string => (serial ?? '').toUpperCase().replace(/^0+/, '');

async function leaf(host: string): Promise<Issued> {
  return issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: host, dnsNames: [host] });
}

let bulk: Promise<Issued[]> | undefined;
/**
 * Leaves for s0.lab.test ... s{PACK_THRESHOLD + 7}.lab.test, made once for the file's two stores larger than a pack
 * (each in a store and state directory of its own): some 270 certificates signed here are 3 s of CPU each time.
 */
function bulkLeaves(): Promise<Issued[]> {
  bulk ??= (async () => {
    const issued: Issued[] = [];
    for (let i = 0; i < PACK_THRESHOLD + 8; i++) issued.push(await leaf(`s${i}.lab.test`));
    return issued;
  })();
  return bulk;
}

/** A chain for a key the key server does not hold: refused at every pass ('key_unknown'). */
async function keyless(host: string): Promise<Issued> {
  const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return issueForPublicKey(lab.ca, spki, { commonName: host, dnsNames: [host] });
}

/**
 * How long a start may take to be ready (startClusterProxy's default is 30 s): at a load average of about 18 a
 * one-worker start of a two-entry store was not ready within 30 s, nor one of the large store (2026-12-07, the file
 * unchanged). A healthy start takes a few seconds; this bounds a stuck one, as proxy-lifecycle's 75 s does. The cases
 * with two starts are given 200 s (240 s with the large store) for it.
 */
const START_READY_MS = 75_000;

/** The store directory of the proxy named `name` (startClusterProxy's), made now to be filled before its first start. */
function storeOf(name: string): string {
  const dir = join(lab.dir, name, 'certs');
  mkdirSync(dir, { recursive: true });
  return dir;
}

function write(storeDir: string, entry: string, issued: Issued): void {
  writeFileSync(join(storeDir, `${entry}.pem`), `${issued.certPem}\n${lab.ca.certPem}`);
}

/**
 * `keyedge proxy` on its own store and state directory, which outlive it (the next start with the same name finds them).
 * `workers`: 1 for a run that only serves and writes the log of last served versions for the next start (the primary
 * keeps that log and computes the fallback, serving/next-start.ts and prepare.ts): a worker less to start, some 1 s of CPU.
 * A start whose fallback is judged has two, so that `served` sees both workers serve the same version.
 */
async function start(name: string, workers = 2): Promise<ClusterProxy> {
  const proxy = await startClusterProxy(
    lab,
    name,
    (p) => storeProxyConfig(lab, p, { workers, stateDir: join(lab.dir, name, 'state'), certStore: { dir: p.storeDir, rescanSeconds: 3600 } }),
    {},
    START_READY_MS,
  );
  running.push(proxy);
  return proxy;
}

/** The serial `host` serves, on several connections (both workers, when it has two), each the same. */
async function served(proxy: ClusterProxy, host: string): Promise<string> {
  const serials = new Set<string>();
  for (let k = 0; k < 3; k++) {
    const got = await nodeGet(proxy.port, host, ca);
    expect(got.ok, `${host}: ${got.error ?? ''}`).toBe(true);
    serials.add(hex(got.serial));
  }
  expect(serials.size).toBe(1);
  return [...serials][0]!;
}

/**
 * `issued` serves `host` once the store's watch applied it (a second or two: the files are read once quiet for 1 s,
 * settling-read.ts). Polled every 200 ms: each poll is a handshake, a key server signature, in three processes.
 */
async function servesAfterWatch(proxy: ClusterProxy, host: string, issued: Issued): Promise<void> {
  const want = hex(issued.cert.serialNumber);
  await waitFor(`${host} to serve ${want}`, async () => (hex((await nodeGet(proxy.port, host, ca)).serial) === want ? true : undefined), 15_000, 200);
  expect(await served(proxy, host)).toBe(want);
}

/** The lines of the log of last served versions the proxy named `name` left. */
function servedLog(name: string): string[] {
  return readFileSync(join(lab.dir, name, 'state', 'serving', 'served.log'), 'utf8')
    .trim()
    .split('\n');
}

interface CertsView {
  certificates: { name: string; serial: string; refused: { reason: string } | null }[];
  refused: { name: string }[];
}

async function certs(proxy: ClusterProxy): Promise<CertsView> {
  const answer = await proxy.admin('GET', '/certs');
  expect(answer.status).toBe(200);
  return JSON.parse(answer.text) as CertsView;
}

/** The start's report of `entry`: its refusal naming the reason, and the warning that the last served version serves. */
function expectReported(proxy: ClusterProxy, entry: string): void {
  const refusal = proxy.lines.find((l) => l.certificate === entry && String(l.msg).startsWith('certificate refused'));
  expect(refusal?.reason).toBe('key_unknown');
  expect(String(refusal?.msg)).toContain('the version the last run served serves');
  expect(proxy.lines.some((l) => l.certificate === entry && l.level === 40 && String(l.msg).includes('the version the last run served'))).toBe(true);
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
}, 120_000);
afterAll(async () => {
  for (const proxy of running) await proxy.stop();
  await lab?.close();
});

describe('an entry refused at start serves the version the last run served', () => {
  it('in a small store: the old version serves after a restart with a bad one, the refusal is reported, a good one written later serves', async () => {
    const storeDir = storeOf('small');
    const a1 = await leaf('a.lab.test');
    write(storeDir, 'a', a1);
    write(storeDir, 'b', await leaf('b.lab.test'));
    const first = await start('small', 1);
    expect(await served(first, 'a.lab.test')).toBe(hex(a1.cert.serialNumber));
    await first.stop();

    // Replaced while the proxy is down by a chain whose key the key server lacks.
    write(storeDir, 'a', await keyless('a.lab.test'));
    const second = await start('small');
    expect(await served(second, 'a.lab.test')).toBe(hex(a1.cert.serialNumber));
    const view = await certs(second);
    expect(view.certificates.find((c) => c.name === 'a')?.refused?.reason).toBe('key_unknown');
    expect(
      view.certificates
        .find((c) => c.name === 'a')
        ?.serial.toUpperCase()
        .replace(/^0+/, ''),
    ).toBe(hex(a1.cert.serialNumber));
    expectReported(second, 'a');

    // A good version written while it runs serves as usual.
    const a2 = await leaf('a.lab.test');
    await sleep(1_100);
    write(storeDir, 'a', a2);
    await servesAfterWatch(second, 'a.lab.test', a2);
    expect((await certs(second)).certificates.find((c) => c.name === 'a')?.refused).toBeNull();
    await second.stop();
  }, 200_000);

  it('after a renewal applied while running: the renewed version serves, not the one before it', async () => {
    const storeDir = storeOf('renewed');
    const a1 = await leaf('a.lab.test');
    write(storeDir, 'a', a1);
    const first = await start('renewed', 1);
    expect(await served(first, 'a.lab.test')).toBe(hex(a1.cert.serialNumber));
    // The renewal, a one-entry delta.
    const a2 = await leaf('a.lab.test');
    await sleep(1_100);
    write(storeDir, 'a', a2);
    await servesAfterWatch(first, 'a.lab.test', a2);
    await first.stop();
    expect(servedLog('renewed')[0]).toContain('"base":null');

    write(storeDir, 'a', await keyless('a.lab.test'));
    const second = await start('renewed');
    expect(await served(second, 'a.lab.test')).toBe(hex(a2.cert.serialNumber));
    expectReported(second, 'a');
    await second.stop();
  }, 200_000);

  it('with nothing to fall back on (an entry never served): the node is ready, degraded, and serves the other entries', async () => {
    const storeDir = storeOf('fresh');
    const b = await leaf('b.lab.test');
    write(storeDir, 'b', b);
    write(storeDir, 'a', await keyless('a.lab.test'));
    // startClusterProxy waits for /readyz 200: one entry's bad files do not keep the node out of rotation.
    const proxy = await start('fresh');
    expect(await served(proxy, 'b.lab.test')).toBe(hex(b.cert.serialNumber));
    const ready = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.headers.get('x-keyedge-degraded')).toBe('certificates');
    expect(await ready.text()).toMatch(/^degraded: certificate 'a' is not loaded: /);
    expect((await certs(proxy)).refused.map((r) => r.name)).toEqual(['a']);
    // Fixed: no longer degraded.
    const a = await leaf('a.lab.test');
    await sleep(1_100);
    write(storeDir, 'a', a);
    await servesAfterWatch(proxy, 'a.lab.test', a);
    const after = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
    expect([after.status, after.headers.get('x-keyedge-degraded'), await after.text()]).toEqual([200, null, 'ready\n']);
    await proxy.stop();
  }, 120_000);

  it(`in a store larger than a pack (${PACK_THRESHOLD + 8} entries): a renewal since the kept whole state is what serves`, async () => {
    const dir = storeOf('large');
    for (const [i, one] of (await bulkLeaves()).entries()) write(dir, `s${i}`, one);
    const s1 = await leaf('s0.lab.test');
    write(dir, 's0', s1);
    const first = await start('large', 1);
    expect(await served(first, 's0.lab.test')).toBe(hex(s1.cert.serialNumber));
    // A renewal after the whole state the workers got as a pack (and the kept state was written from).
    const s2 = await leaf('s0.lab.test');
    await sleep(1_100);
    write(dir, 's0', s2);
    await servesAfterWatch(first, 's0.lab.test', s2);
    await first.stop();
    // Kept as the whole state's pack plus the one change since (serving/last-served.ts).
    const log = servedLog('large');
    expect(log[0]).toMatch(/"base":"[^"]+\.pack"/);
    expect(log).toHaveLength(2);

    write(dir, 's0', await keyless('s0.lab.test'));
    const second = await start('large');
    expect(await served(second, 's0.lab.test')).toBe(hex(s2.cert.serialNumber));
    expectReported(second, 's0');
    await second.stop();
  }, 240_000);
});

describe('the log of last served versions and a worker started during a large reload', () => {
  it('a replacement worker started while a mass change is applied does not take the log back to the state before it', async () => {
    const name = 'large-race';
    const base = join(lab.dir, name);
    const v1 = join(base, 'v1');
    const v2 = join(base, 'v2');
    mkdirSync(v1, { recursive: true });
    mkdirSync(v2, { recursive: true });
    const issued = await bulkLeaves();
    for (const [i, one] of issued.entries()) write(v1, `s${i}`, one);
    // The store is a link to v1; v2 is the same store after a mass change (s0 renewed, PACK_THRESHOLD + 1 entries
    // added), switched to in one step so that one reload carries it whole: a delta too large to go inline.
    const s2 = await leaf('s0.lab.test');
    for (const [i, one] of issued.entries()) write(v2, `s${i}`, i === 0 ? s2 : one);
    for (let i = 0; i <= PACK_THRESHOLD; i++) write(v2, `t${i}`, await leaf(`t${i}.lab.test`));
    const storeLink = join(base, 'store');
    symlinkSync(v1, storeLink);
    const startIt = async (): Promise<ClusterProxy> => {
      const proxy = await startClusterProxy(
        lab,
        name,
        (p) =>
          storeProxyConfig(lab, p, {
            stateDir: join(base, 'state'),
            certStore: { dir: storeLink, rescanSeconds: 3600 },
            reloadApplyTimeoutMs: 20_000,
            workerSilentTimeoutMs: 60_000,
          }),
        {},
        START_READY_MS,
      );
      running.push(proxy);
      return proxy;
    };
    const first = await startIt();
    expect(await served(first, 's0.lab.test')).toBe(hex(issued[0]!.cert.serialNumber));
    const [held, other] = clusterWorkerPids(first.pid);
    // One worker holds the reload open (it answers nothing while stopped, until the replacement serves)...
    process.kill(held!, 'SIGSTOP');
    try {
      symlinkSync(v2, `${storeLink}.next`);
      renameSync(`${storeLink}.next`, storeLink);
      let reloaded = false;
      const reload = first.admin('POST', '/reload').finally(() => {
        reloaded = true;
      });
      const keptDirPath = join(base, 'state', 'serving');
      await waitFor('the mass change written as a whole state', () =>
        readdirSync(keptDirPath).some((f) => f.startsWith('delta-') && f.endsWith('.pack')) ? true : undefined,
      );
      // ...while the other dies and its replacement is sent the committed state (the one before the change).
      process.kill(other!, 'SIGKILL');
      await waitFor(
        'a replacement worker to serve',
        async () => {
          const pids = clusterWorkerPids(first.pid);
          if (pids.includes(other!) || pids.length < 2) return undefined;
          return (await fetch(`http://127.0.0.1:${first.adminPort}/readyz`)).status === 200 ? true : undefined;
        },
        30_000,
        // Each check is a pgrep run: every 200 ms while the replacement waits out the restart pause and starts (seconds).
        200,
      );
      // The race this case is about: the replacement started before the reload was committed.
      expect(reloaded).toBe(false);
      // Let go, the held worker answers and the reload commits (rather than after reloadApplyTimeoutMs).
      process.kill(held!, 'SIGCONT');
      // Committed: partial (the killed worker named as exited), or ok when the killed worker had applied the change
      // before its kill (the poll for the pack above is late on a loaded machine); the mass change in one delta.
      const report = JSON.parse((await reload).text) as { result: string; changed: string[] };
      expect(['partial', 'ok']).toContain(report.result);
      expect(report.changed.length).toBeGreaterThan(PACK_THRESHOLD);
    } finally {
      process.kill(held!, 'SIGCONT');
    }
    await servesAfterWatch(first, 's0.lab.test', s2);
    await first.stop();

    write(v2, 's0', await keyless('s0.lab.test'));
    const second = await startIt();
    // The version last served (s2), or none: never the one before the mass change.
    const which = (serial: string | undefined): string =>
      hex(serial) === hex(s2.cert.serialNumber)
        ? 'last served'
        : hex(serial) === hex(issued[0]!.cert.serialNumber)
          ? 'before the mass change'
          : `other: ${serial}`;
    expect(which((await certs(second)).certificates.find((c) => c.name === 's0')?.serial)).toBe('last served');
    expect(which(await served(second, 's0.lab.test'))).toBe('last served');
    await second.stop();
  }, 300_000);
});

describe('readiness when no certificate serves', () => {
  it('a node whose every entry is refused, nothing serving, is not ready (503), not degraded', async () => {
    const storeDir = storeOf('nothing');
    const b = await leaf('b.lab.test');
    write(storeDir, 'b', b);
    const proxy = await start('nothing');
    expect(await served(proxy, 'b.lab.test')).toBe(hex(b.cert.serialNumber));
    // The one entry that served goes; the only one left is refused: every handshake fails.
    rmSync(join(storeDir, 'b.pem'));
    write(storeDir, 'a', await keyless('a.lab.test'));
    await waitFor('b gone and a refused', async () => {
      const view = await certs(proxy);
      return view.certificates.length === 0 && view.refused.some((r) => r.name === 'a') ? true : undefined;
    });
    expect((await nodeGet(proxy.port, 'a.lab.test', ca)).ok).toBe(false);
    const ready = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
    expect([ready.status, await ready.text()]).toEqual([503, expect.stringMatching(/^not ready: no certificate serves: certificate 'a' is not loaded: /)]);
    // One that serves again: ready, degraded by the refused one.
    write(storeDir, 'b', b);
    await servesAfterWatch(proxy, 'b.lab.test', b);
    const again = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
    expect([again.status, again.headers.get('x-keyedge-degraded')]).toEqual([200, 'certificates']);
    await proxy.stop();
  }, 120_000);
});

describe('the log of last served versions and another store directory', () => {
  it('an entry of the same name in the store directory the config names now does not serve the old store’s version', async () => {
    const name = 'moved';
    const old = storeOf(name);
    const a1 = await leaf('a.lab.test');
    write(old, 'a', a1);
    const first = await start(name, 1);
    expect(await served(first, 'a.lab.test')).toBe(hex(a1.cert.serialNumber));
    await first.stop();

    // Restarted on another store directory, whose entry 'a' is refused.
    const other = join(lab.dir, name, 'other-certs');
    mkdirSync(other, { recursive: true });
    write(other, 'a', await keyless('a.lab.test'));
    const b = await leaf('b.lab.test');
    write(other, 'b', b);
    const second = await startClusterProxy(
      lab,
      name,
      (p) => storeProxyConfig(lab, p, { stateDir: join(lab.dir, name, 'state'), certStore: { dir: other, rescanSeconds: 3600 } }),
      {},
      START_READY_MS,
    );
    running.push(second);
    expect(await served(second, 'b.lab.test')).toBe(hex(b.cert.serialNumber));
    const view = await certs(second);
    expect(view.certificates.some((c) => c.name === 'a')).toBe(false);
    expect(view.refused.map((r) => r.name)).toEqual(['a']);
    expect((await nodeGet(second.port, 'a.lab.test', ca)).ok).toBe(false);
    await second.stop();
  }, 200_000);
});

// A state directory that turns read-only while the proxy runs (a file system remounted read-only on errors): the log
// can be neither written nor removed, and stays as it was. Needs a tmpfs mount (root, a mount namespace of its own).
const canMount = ((probe: string): boolean => {
  const mounted = spawnSync('mount', ['-t', 'tmpfs', 'none', probe]).status === 0;
  if (mounted) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return mounted;
})(mkdtempSync(join(tmpdir(), 'keyedge-mount-probe-')));

describe.skipIf(!canMount)('the log of last served versions in a state directory turned read-only', () => {
  it('is not said to be gone when it could not be removed: the operator is told it may name an older version', async () => {
    const state = join(lab.dir, 'readonly-state');
    mkdirSync(state, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0700', 'none', state]);
    try {
      const storeDir = storeOf('readonly');
      write(storeDir, 'a', await leaf('a.lab.test'));
      // One worker: the log is the primary's to write (serving/next-start.ts).
      const proxy = await startClusterProxy(
        lab,
        'readonly',
        (p) => storeProxyConfig(lab, p, { workers: 1, stateDir: state, certStore: { dir: p.storeDir, rescanSeconds: 3600 } }),
        {},
        START_READY_MS,
      );
      running.push(proxy);
      execFileSync('mount', ['-o', 'remount,ro', state]);
      const a2 = await leaf('a.lab.test');
      await sleep(1_100);
      write(storeDir, 'a', a2);
      await servesAfterWatch(proxy, 'a.lab.test', a2);
      const about = await waitFor('the warning about served.log', () => {
        const lines = proxy.lines.filter((l) => l.level === 40 && String(l.msg).includes('served.log'));
        return lines.length > 0 ? lines.map((l) => String(l.msg)) : undefined;
      });
      expect(about.some((m) => m.includes('is not served until its files are fixed'))).toBe(false);
      expect(about.some((m) => m.startsWith('cannot remove') && m.includes('older version than the last served'))).toBe(true);
      await proxy.stop();
    } finally {
      spawnSync('umount', ['-l', state]);
    }
  }, 120_000);
});
