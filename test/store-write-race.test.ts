import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { CLI, REPO, sleep } from './helpers/basics.js';
import type { Issued } from './helpers/pki.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// Writers of one store entry while `keyedge proxy` (2 workers) serves it, each a real `keyedge cert replace`
// process (the proxy's own uploads and ACME renewals write through the same code, certs/store-write.ts):
//   - a second writer landing between the first one's two renames (metadata, then chain): it must not leave one's
//     chain beside the other's metadata (a pinned key that is not the chain's, refused by every reload and start);
//   - a second writer landing after the first validated against the entry and before it wrote: the first must not
//     put over it a chain checked against the pinned key the second replaced;
//   - one writer on a slow disk (fsyncs of 400 ms): the proxy's watch must not meet the new metadata beside the old
//     chain and refuse the renewal on its way in.
// The points are ones no timing in a test hits reliably (a busy disk makes them wide in production), so the first
// writer is loaded with a preload that runs the second writer exactly there, or slows its fsyncs. Node's builtin
// ES module bindings follow the patched functions (syncBuiltinESMExports).

const SECOND_WRITER_PRELOAD = `
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { syncBuiltinESMExports } from 'node:module';
const spec = process.env.KEYEDGE_TEST_SECOND_WRITER;
if (spec) {
  delete process.env.KEYEDGE_TEST_SECOND_WRITER;
  const { args, entry, out, point, dir } = JSON.parse(spec);
  let ran = false;
  const runSecond = () => {
    ran = true;
    const second = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
    fs.writeFileSync(out, JSON.stringify({ code: second.status, stderr: second.stderr }));
  };
  const { renameSync, openSync, fsyncSync, fstatSync } = fs;
  // 'slow-disk': no second writer; every fsync of a file takes 400 ms, as on a busy disk.
  const pause = new Int32Array(new SharedArrayBuffer(4));
  fs.fsyncSync = function (fd, ...rest) {
    if (point === 'slow-disk' && fstatSync(fd).isFile()) Atomics.wait(pause, 0, 0, 400);
    return fsyncSync.call(this, fd, ...rest);
  };
  // 'metadata-renamed': right after this writer's metadata is renamed into place, before its chain is.
  fs.renameSync = function (from, to, ...rest) {
    const result = renameSync.call(this, from, to, ...rest);
    if (point === 'metadata-renamed' && !ran && String(from).endsWith('.tmp') && String(to).endsWith('/' + entry + '.json')) runSecond();
    return result;
  };
  // 'write-begins': once this writer validated its chain against the entry as it read it, as its write opens the store directory.
  fs.openSync = function (file, ...rest) {
    if (point === 'write-begins' && !ran && String(file) === dir) runSecond();
    return openSync.call(this, file, ...rest);
  };
  syncBuiltinESMExports();
}
`;

let lab: KeylessLab;
let proxy: ClusterProxy;
let root: string;
let preload: string;
type Chain = { readonly file: string; readonly leaf: Issued };
/** Per entry: the chain it serves at the start (EC key, pinned), and each writer's. */
const chains: Record<string, { initial: Chain; first: Chain; second: Chain }> = {};

function cli(args: readonly string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: REPO, timeout: 60_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr });
    });
  });
}

/** `keyedge cert replace` of `entry` by the first writer (`firstArgs`), with the second one (`secondArgs`) run inside it at `point`. */
async function twoWriters(
  entry: string,
  point: 'metadata-renamed' | 'write-begins' | 'slow-disk',
  firstArgs: readonly string[],
  secondArgs: readonly string[],
): Promise<{ first: { code: number; stderr: string }; second: { code: number; stderr: string } }> {
  const out = join(lab.dir, `second-writer-${entry}.json`);
  const args = (rest: readonly string[]): string[] => ['cert', 'replace', entry, ...rest, '--config', proxy.configFile];
  const first = await cli(args(firstArgs), {
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${pathToFileURL(preload).href}`,
    KEYEDGE_TEST_SECOND_WRITER: JSON.stringify({ args: [CLI, ...args(secondArgs)], entry, out, point, dir: proxy.storeDir }),
  });
  if (point === 'slow-disk') return { first, second: { code: -1, stderr: '' } };
  // The second writer did run, inside the first one.
  expect(existsSync(out)).toBe(true);
  return { first, second: JSON.parse(readFileSync(out, 'utf8')) as { code: number; stderr: string } };
}

async function servedSerial(entry: string, port = proxy.port): Promise<string | undefined> {
  const result = await nodeGet(port, `${entry}.lab.test`, root);
  return result.ok ? result.serial?.toLowerCase() : undefined;
}

const serialOf = (issued: Issued): string => issued.cert.serialNumber.toLowerCase();

/** Which write the entry holds whole: a chain and the key id its metadata pins for it; 'mixed' when none's. */
function storedWrite(entry: string): 'initial' | 'first' | 'second' | 'mixed' {
  const chain = readFileSync(join(proxy.storeDir, `${entry}.pem`), 'utf8');
  const meta = JSON.parse(readFileSync(join(proxy.storeDir, `${entry}.json`), 'utf8')) as { keyId?: string };
  const body = (issued: Issued): string => issued.certPem.trim().split('\n').slice(1, -1).join('\n');
  for (const which of ['initial', 'first', 'second'] as const) {
    if (chain.includes(body(chains[entry]![which].leaf)) && meta.keyId === keys[entry]![which]) return which;
  }
  return 'mixed';
}

/** Per entry: the key id each of its chains is for. */
const keys: Record<string, { initial: string; first: string; second: string }> = {};

beforeAll(async () => {
  lab = await startKeylessLab();
  root = readFileSync(lab.caFile, 'utf8');
  const { ec, rsa } = lab.keys;
  // site: the first writer moves the entry to the RSA key, the second (inside it) back to the EC key with a new chain.
  // late: the first writer renews on the pinned EC key, the second (inside it) moves the entry to the RSA key.
  for (const [entry, firstKey, secondKey] of [
    ['site', rsa, ec],
    ['late', ec, rsa],
    ['slow', rsa, ec],
  ] as const) {
    const names = [`${entry}.lab.test`];
    chains[entry] = {
      initial: await lab.certificate(`${entry}-initial`, ec, names),
      first: await lab.certificate(`${entry}-first`, firstKey, names),
      second: await lab.certificate(`${entry}-second`, secondKey, names),
    };
    keys[entry] = { initial: ec.keyId, first: firstKey.keyId, second: secondKey.keyId };
  }
  preload = join(lab.dir, 'second-writer.mjs');
  writeFileSync(preload, SECOND_WRITER_PRELOAD);
  proxy = await startClusterProxy(lab, 'write-race', (p) => {
    for (const entry of Object.keys(chains)) {
      writeFileSync(join(p.storeDir, `${entry}.pem`), readFileSync(chains[entry]!.initial.file, 'utf8'));
      writeFileSync(join(p.storeDir, `${entry}.json`), `${JSON.stringify({ names: [`${entry}.lab.test`], keyId: ec.keyId })}\n`);
    }
    return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } });
  });
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('two writers of one store entry at once', () => {
  let stored: ReturnType<typeof storedWrite> | undefined;

  it("leaves the entry whole, one writer's, and tells the writer whose write is not the one kept", async () => {
    const site = chains.site!;
    expect(await servedSerial('site')).toBe(serialOf(site.initial.leaf));
    // The second writer's renames land between the first one's: its metadata, then (on a slow disk) its chain.
    const { first, second } = await twoWriters(
      'site',
      'metadata-renamed',
      ['--chain', site.first.file, '--key', lab.keys.rsa.keyId],
      ['--chain', site.second.file, '--key', lab.keys.ec.keyId],
    );
    stored = storedWrite('site');
    // Whole: the chain of the write whose metadata is there (else every later reload, and any start, refuses the entry).
    expect(stored).not.toBe('mixed');
    // Not lost silently: the writer that exited 0 is the one whose write the entry holds; the other was told.
    expect(first.code === 0 && second.code === 0).toBe(false);
    expect({ first: first.code, second: second.code }[stored === 'first' ? 'first' : 'second']).toBe(0);
    expect(stored === 'first' ? second.stderr : first.stderr).toMatch(/KEYEDGE_ERR_STORE_CONFLICT/);
  }, 90_000);

  it('the running proxy serves what the store holds, and refuses nothing for it', async () => {
    // Past the watch's debounce and the reload it starts: the last write's pass is done.
    await sleep(2_000);
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; refused: unknown }[] };
    expect(certs.certificates.find((c) => c.name === 'site')?.refused ?? null).toBeNull();
    expect(await servedSerial('site')).toBe(serialOf(chains.site![stored === 'second' ? 'second' : 'first'].leaf));
  }, 30_000);

  it('a write validated against the entry as it was before another write landed is refused, not put over that write', async () => {
    const late = chains.late!;
    expect(await servedSerial('late')).toBe(serialOf(late.initial.leaf));
    // The first writer checks its chain against the EC key the entry pins; the second moves the entry to the RSA key
    // (as an ACME renewal with a new key does) after that check, before the first one writes.
    const { first, second } = await twoWriters(
      'late',
      'write-begins',
      ['--chain', late.first.file],
      ['--chain', late.second.file, '--key', lab.keys.rsa.keyId],
    );
    expect(second.code).toBe(0);
    // Else the renewal the second writer reported done is gone, replaced by a chain never checked against its pins.
    expect(storedWrite('late')).toBe('second');
    expect(first.code).not.toBe(0);
    expect(first.stderr).toMatch(/KEYEDGE_ERR_STORE_CONFLICT/);
    await waitFor('the proxy to serve the second write', async () => ((await servedSerial('late')) === serialOf(late.second.leaf) ? true : undefined), 10_000);
  }, 90_000);

  it('a renewal with a new key written on a slow disk is never refused half-written (old chain, new pinned key)', async () => {
    const slow = chains.slow!;
    expect(await servedSerial('slow')).toBe(serialOf(slow.initial.leaf));
    // Past the debounce of the changes before.
    await sleep(1_000);
    const before = proxy.lines.length;
    const { first } = await twoWriters('slow', 'slow-disk', ['--chain', slow.first.file, '--key', lab.keys.rsa.keyId], []);
    expect(first.code, first.stderr).toBe(0);
    await waitFor('the proxy to serve the renewal', async () => ((await servedSerial('slow')) === serialOf(slow.first.leaf) ? true : undefined), 10_000);
    // The watch's debounce (150 ms) is shorter than a slow fsync: a pass between the metadata's rename and the chain's
    // read the old chain with the new pinned key, and refused it (logged as an error, counted as a refused reload).
    const refusals = proxy.lines.slice(before).filter((l) => l.certificate === 'slow' && l.reason !== undefined);
    expect(refusals.map((l) => l.reason)).toEqual([]);
  }, 60_000);

  it('a restart serves every entry', async () => {
    await proxy.stop();
    // The same store directory and state directory: every entry's files pass at the start, none refused (a refused
    // one would serve the version the last run served, so serving alone does not tell).
    proxy = await startClusterProxy(lab, 'write-race', (p) => storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } }), {}, 30_000);
    expect(await servedSerial('site')).toBeDefined();
    expect(await servedSerial('late')).toBeDefined();
    expect(await servedSerial('slow')).toBeDefined();
    const view = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { refused: unknown }[]; refused: unknown[] };
    expect([view.certificates.filter((c) => c.refused !== null).length, view.refused.length]).toEqual([0, 0]);
    expect((await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`)).headers.get('x-keyedge-degraded')).toBeNull();
  }, 60_000);
});
