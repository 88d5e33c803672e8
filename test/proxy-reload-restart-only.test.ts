import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { nodeGet } from './helpers/clients.js';
import { runCli } from './helpers/basics.js';
import { type ClusterPorts, type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueCa, issueForPublicKey, type TestCa } from './helpers/pki.js';

// A reload while the config file names restart-only settings the running proxy does not use (serving/restart-only.ts
// RESTART_ONLY). The operator saves the file ahead of a planned restart, and the file's watch reloads on the save
// alone. The proxy said the settings take effect only after a restart, yet that reload used them: it checked
// certificates against the key server the file named, while the workers signed through the running one (a renewal
// only that key server could sign for was swapped in, and every handshake for its name failed), and it read the
// store directory the file named (every running entry was dropped; an upload answered 200 went to the running store
// and was never served). Also: the refusal of an entry that never served said "the previous version keeps serving".

let lab: KeylessLab;
/** The key server of the next release: it alone holds the renewal's key. */
let next: KeylessLab;
let proxy: ClusterProxy;
let root: string;
let inter: TestCa;
let ports: ClusterPorts;
const L: Record<string, Issued> = {};
const chain = (l: Issued): string => `${l.certPem}\n${inter.certPem}`;
const serial = (l: Issued): string => l.cert.serialNumber.toLowerCase();

/** The serial served for `name`, or the failure. */
async function served(name: string): Promise<string> {
  const r = await nodeGet(proxy.port, name, root);
  return r.ok ? (r.serial?.toLowerCase() ?? 'no serial') : `failed: ${r.error}`;
}

/** The line logged since `from` whose message is `msg`. */
const loggedSince = (from: number, msg: string) => waitFor(msg, () => proxy.lines.slice(from).find((l) => l.msg === msg), 20_000);

beforeAll(async () => {
  // Side by side: each its own directory, token copy and key server (afterAll closes whichever started).
  const [first, second] = await Promise.allSettled([startKeylessLab(), startKeylessLab()]);
  if (first.status === 'fulfilled') lab = first.value;
  if (second.status === 'fulfilled') next = second.value;
  for (const started of [first, second]) if (started.status === 'rejected') throw started.reason;
  await next.stopKeyserver();
  const generated = await runCli(['key', 'generate', '--config', join(next.dir, 'keyserver.json'), '--type', 'ec-p256', '--label', 'next-only']);
  const keyId = /key id: ([0-9a-f]{64})/.exec(generated.stdout)![1]!;
  await next.startKeyserver();
  const client = await KeyserverClient.connect({ unixPath: next.socket });
  const nextOnly = await client.getPublicKey(keyId);
  client.close();
  root = readFileSync(lab.caFile, 'utf8');
  inter = await issueCa(lab.ca, 'Lab Intermediate');
  const leaf = (name: string, spki = lab.keys.ec.spki) => issueForPublicKey(inter, spki, { commonName: `${name}.lab.test`, dnsNames: [`${name}.lab.test`] });
  for (const name of ['main', 'fresh', 'other', 'uploaded']) L[name] = await leaf(name);
  L.renewal = await leaf('main', nextOnly);
  proxy = await startClusterProxy(lab, 'reload-restart-only', (p) => {
    ports = p;
    writeFileSync(join(p.storeDir, 'main.pem'), chain(L.main!));
    return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } });
  });
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
  await next?.close();
});

describe('a reload', () => {
  it('says of a refused entry that never served that it is not served, not that a previous version is', async () => {
    const pem = chain(L.fresh!);
    writeFileSync(join(ports.storeDir, 'fresh.pem'), pem.slice(0, pem.length / 3));
    const line = await waitFor('the refusal', () => proxy.lines.find((l) => l.certificate === 'fresh' && /certificate refused/.test(String(l.msg))), 20_000);
    expect(String(line.msg)).toMatch(/; it is not served$/);
    expect(await served('fresh.lab.test')).toMatch(/^failed/);
  });

  it('checks certificates against the running key server, not one the file names for after a restart', async () => {
    // A renewal for a key only the next key server holds: refused, key_unknown; the current certificate serves.
    const file = join(ports.storeDir, 'main.pem');
    writeFileSync(`${file}.tmp`, chain(L.renewal!));
    renameSync(`${file}.tmp`, file);
    await waitFor('the renewal refused', () => proxy.lines.find((l) => l.certificate === 'main' && /certificate refused/.test(String(l.msg))), 20_000);
    expect(await served('main.lab.test')).toBe(serial(L.main!));
    const from = proxy.lines.length;
    proxy.writeConfig(storeProxyConfig(lab, ports, { keyserver: { socket: next.socket }, certStore: { dir: ports.storeDir, rescanSeconds: 3600 } }));
    expect((await loggedSince(from, 'these settings changed but take effect only after a restart')).settings).toEqual(['keyserver']);
    await loggedSince(from, 'reload done');
    // Before: the renewal was swapped in, and each handshake failed (internal_error) as the workers' key server cannot sign.
    for (let i = 0; i < 3; i++) expect(await served('main.lab.test')).toBe(serial(L.main!));
  }, 60_000);

  it('reads the running store directory, not one the file names for after a restart; an upload answered 200 is served', async () => {
    const newDir = join(lab.dir, 'next-release-certs');
    mkdirSync(newDir, { recursive: true });
    writeFileSync(join(newDir, 'other.pem'), chain(L.other!));
    const from = proxy.lines.length;
    proxy.writeConfig(storeProxyConfig(lab, ports, { keyserver: { socket: next.socket }, certStore: { dir: newDir, rescanSeconds: 3600 } }));
    expect((await loggedSince(from, 'these settings changed but take effect only after a restart')).settings).toEqual(['keyserver', 'certStore']);
    await loggedSince(from, 'reload done');
    // Before: main.lab.test was dropped (unrecognized_name) and the new directory's other.lab.test served.
    expect(await served('main.lab.test')).toBe(serial(L.main!));
    expect(await served('other.lab.test')).toMatch(/^failed/);
    const put = await proxy.admin('PUT', '/certs/uploaded', chain(L.uploaded!));
    expect(put.status).toBe(200);
    expect({ running: existsSync(join(ports.storeDir, 'uploaded.pem')), next: existsSync(join(newDir, 'uploaded.pem')) }).toEqual({
      running: true,
      next: false,
    });
    await waitFor('the upload served', async () => ((await served('uploaded.lab.test')) === serial(L.uploaded!) ? true : undefined), 20_000);
  }, 60_000);

  // A worker forked now (a replacement after a crash) read the config file itself, and so signed through the key
  // server the file names, which holds none of the served keys: its handshakes failed (internal_error) while the
  // other worker's went on (cluster-worker-config.ts).
  it('leaves a worker replaced before the restart on the running settings too', async () => {
    const workers = execFileSync('ps', ['-o', 'pid=', '--ppid', String(proxy.pid)], { encoding: 'utf8' })
      .split('\n')
      .map(Number)
      .filter((pid) => pid > 0);
    expect(workers).toHaveLength(2);
    const from = proxy.lines.length;
    process.kill(workers[0]!, 'SIGKILL');
    await waitFor('the replacement listening', () => proxy.lines.slice(from).find((l) => l.msg === 'proxy worker listening' && l.pid !== workers[0]), 60_000);
    for (let i = 0; i < 8; i++) expect(await served('main.lab.test')).toBe(serial(L.main!));
  }, 90_000);
});
