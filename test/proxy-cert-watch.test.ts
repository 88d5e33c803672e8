import { execFileSync, spawnSync } from 'node:child_process';
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PID_SPACE } from '../proxy/certs/store-files.js';
import { nodeGet } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueCa, issueForPublicKey, type TestCa } from './helpers/pki.js';

// How a renewal reaches `keyedge proxy` (2 workers) when the files move in
// awkward ways: a chain written in two steps, a leaf without its issuer, a
// symlink re-pointed to a chain of the same size and mtime, and certbot's
// live/ → archive/ links named in the config. The client trusts the lab's
// root only, so a leaf served without its intermediate fails verification.
// The rescan is an hour away: only the watch and explicit reloads count.

/** What the issue asks for; the assertions allow a loaded CI machine three times as long. */
const WITHIN_MS = 3_000;
const SAME_MTIME = new Date('2026-01-01T00:00:00Z');

let lab: KeylessLab;
let proxy: ClusterProxy;
let root: string;
let inter: TestCa;
const pickup: Record<string, number> = {};

async function leaf(name: string, via: TestCa = inter): Promise<Issued> {
  return issueForPublicKey(via, lab.keys.ec.spki, { commonName: name, dnsNames: [name] });
}

async function servedSerial(name: string): Promise<string | undefined> {
  const result = await nodeGet(proxy.port, name, root);
  return result.ok ? result.serial?.toLowerCase() : undefined;
}

/** Waits until `name` serves `issued`; returns how long that took from `since`. */
async function servedAfter(name: string, issued: Issued, since: number, timeoutMs = 10_000): Promise<number> {
  const serial = issued.cert.serialNumber.toLowerCase();
  await waitFor(`${name} to serve ${serial}`, async () => ((await servedSerial(name)) === serial ? true : undefined), timeoutMs);
  return performance.now() - since;
}

/** `target` made the link `link` atomically: a new link beside it, renamed over (what `ln -sfn` and certbot do). */
function repoint(link: string, target: string): void {
  const temp = join(dirname(link), `.repoint-${process.pid}.tmp`);
  symlinkSync(target, temp);
  renameSync(temp, link);
}

/** Chains of the same size (PEM allows text after the blocks) and the same mtime, as `cp -p` or a content-addressed store leaves them. */
function writeLookalikes(files: readonly [string, string][]): void {
  const size = Math.max(...files.map(([, pem]) => Buffer.byteLength(pem))) + 16;
  for (const [file, pem] of files) {
    writeFileSync(file, pem + '\n'.repeat(size - Buffer.byteLength(pem)));
    utimesSync(file, SAME_MTIME, SAME_MTIME);
  }
}

interface Lineage {
  readonly host: string;
  /** live/HOST/fullchain.pem, pointing at ../../archive/HOST/fullchain1.pem. */
  readonly live: string;
  /** The chains of archive/HOST/fullchainN.pem, N from 1. */
  readonly leaves: readonly Issued[];
}

/** certbot's layout for `host`, with two issued chains in the archive and live/ pointing at the first. */
async function certbotLineage(host: string): Promise<Lineage> {
  const live = join(lab.dir, 'letsencrypt', 'live', host);
  const archive = join(lab.dir, 'letsencrypt', 'archive', host);
  mkdirSync(live, { recursive: true });
  mkdirSync(archive, { recursive: true });
  const leaves = [await leaf(host), await leaf(host)];
  leaves.forEach((l, i) => void writeFileSync(join(archive, `fullchain${i + 1}.pem`), `${l.certPem}\n${inter.certPem}`));
  symlinkSync(`../../archive/${host}/fullchain1.pem`, join(live, 'fullchain.pem'));
  return { host, live: join(live, 'fullchain.pem'), leaves };
}

/** Renews `lineage` as certbot does (live/ re-pointed to fullchain2.pem); the time until it serves. */
async function renew(lineage: Lineage): Promise<number> {
  expect(await servedSerial(lineage.host)).toBe(lineage.leaves[0]!.cert.serialNumber.toLowerCase());
  // Past the debounce of the changes before: this reload must come from the link alone.
  await sleep(1_000);
  const started = performance.now();
  repoint(lineage.live, `../../archive/${lineage.host}/fullchain2.pem`);
  return servedAfter(lineage.host, lineage.leaves[1]!, started, WITHIN_MS);
}

/**
 * Loaded into the proxy (NODE_OPTIONS --import): in the primary, the store directory is swapped for an empty one
 * (`mv certs certs.held && mkdir certs`, as an operator or a deploy tool does) at an exact point of an upload, which no
 * timing could hit: for entry held-early as the upload first looks at the entry's files (after its check of the
 * directory, before the validation), for held-late as the write begins (its metadata kept aside), for held-mid as its
 * replacing chain is renamed into place (its metadata already replaced); once each. Node's
 * builtin ES module bindings follow the patched functions (syncBuiltinESMExports).
 */
const HOLD_PRELOAD = `
import fs from 'node:fs';
import cluster from 'node:cluster';
import { syncBuiltinESMExports } from 'node:module';
const dir = process.env.KEYEDGE_TEST_SWAP_STORE;
if (cluster.isPrimary && dir) {
  const swap = () => { fs.renameSync(dir, dir + '.held'); fs.mkdirSync(dir); };
  const { lstatSync, linkSync, renameSync, existsSync } = fs;
  const once = new Set();
  const swapOnce = (what) => { if (!once.has(what)) { once.add(what); swap(); } };
  fs.lstatSync = function (file, ...rest) {
    if (file === dir + '/held-early.pem') swapOnce('early');
    return lstatSync.call(this, file, ...rest);
  };
  fs.linkSync = function (from, to, ...rest) {
    if (String(to).includes('/.held-late.json.')) swapOnce('late');
    return linkSync.call(this, from, to, ...rest);
  };
  fs.renameSync = function (from, to, ...rest) {
    if (String(to).endsWith('/held-mid.pem') && existsSync(to)) swapOnce('mid');
    return renameSync.call(this, from, to, ...rest);
  };
  syncBuiltinESMExports();
}
`;

let twoStep: Issued;
/** A process that has exited: the writer of a leftover. */
let deadPid: number;
let leafOnly: Issued;
const linked: Issued[] = [];
let linksDir: string;
let configLineage: Lineage;
let storeLineage: Lineage;
let secretDir: string;
const secretLeaves: Issued[] = [];

/** A Kubernetes secret volume's update (kubelet's AtomicWriter): a new timestamped directory, `..data` re-pointed at it by rename, the old one removed. */
function writeSecret(generation: number, pem: string): void {
  const next = `..2026_01_01_00_00_0${generation}.000`;
  mkdirSync(join(secretDir, next));
  writeFileSync(join(secretDir, next, 'tls.crt'), pem);
  const old = generation > 0 ? `..2026_01_01_00_00_0${generation - 1}.000` : undefined;
  symlinkSync(next, join(secretDir, '..data_tmp'));
  renameSync(join(secretDir, '..data_tmp'), join(secretDir, '..data'));
  if (old !== undefined) rmSync(join(secretDir, old), { recursive: true });
  else symlinkSync('..data/tls.crt', join(secretDir, 'tls.crt'));
}

beforeAll(async () => {
  lab = await startKeylessLab();
  root = readFileSync(lab.caFile, 'utf8');
  inter = await issueCa(lab.ca, 'Lab Intermediate');
  twoStep = await leaf('two.lab.test');
  leafOnly = await leaf('only.lab.test');
  for (let i = 0; i < 4; i++) linked.push(await leaf('link.lab.test'));
  // One lineage named in the config, one linked from the store.
  configLineage = await certbotLineage('certbot.lab.test');
  storeLineage = await certbotLineage('lineage.lab.test');

  secretDir = join(lab.dir, 'secret');
  mkdirSync(secretDir, { recursive: true });
  for (let i = 0; i < 3; i++) secretLeaves.push(await leaf('secret.lab.test'));
  writeSecret(0, `${secretLeaves[0]!.certPem}\n${inter.certPem}`);

  linksDir = join(lab.dir, 'links');
  mkdirSync(linksDir, { recursive: true });
  writeLookalikes(linked.map((l, i) => [join(linksDir, `chain-${i}.pem`), `${l.certPem}\n${inter.certPem}`]));

  deadPid = spawnSync(process.execPath, ['-e', '']).pid!;
  const preload = join(lab.dir, 'swap-store.mjs');
  writeFileSync(preload, HOLD_PRELOAD);
  const swapEnv = {
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${pathToFileURL(preload).href}`,
    KEYEDGE_TEST_SWAP_STORE: join(lab.dir, 'cert-watch', 'certs'),
  };
  proxy = await startClusterProxy(
    lab,
    'cert-watch',
    (p) => {
      writeFileSync(join(p.storeDir, 'two.pem'), `${twoStep.certPem}\n${inter.certPem}`);
      // What writers left: one killed mid-write (its pid gone), one still writing (this process, alive).
      writeFileSync(join(p.storeDir, `.two.json.${deadPid}.${PID_SPACE}.0123456789ab.aside`), '{}\n');
      writeFileSync(join(p.storeDir, `.two.pem.${process.pid}.${PID_SPACE}.0123456789ab.tmp`), twoStep.certPem);
      symlinkSync(join(linksDir, 'chain-0.pem'), join(p.storeDir, 'link.pem'));
      symlinkSync(storeLineage.live, join(p.storeDir, 'lineage.pem'));
      return storeProxyConfig(lab, p, {
        certificates: [
          { name: 'certbot', chain: configLineage.live },
          { name: 'secret', chain: join(secretDir, 'tls.crt') },
        ],
        certStore: { dir: p.storeDir, rescanSeconds: 3600 },
      });
    },
    swapEnv,
  );
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
  // The figures for the record (the issue asks for a renewal served within 1 s).
  console.log(`pick-up times (ms): ${JSON.stringify(pickup)}`);
});

describe('a chain is never served incomplete', () => {
  it('serves a store file written in two steps (leaf, 300 ms, intermediate) only once complete, under continuous handshakes', async () => {
    expect(await servedSerial('two.lab.test')).toBe(twoStep.cert.serialNumber.toLowerCase());
    const next = await leaf('two.lab.test');
    const failures: string[] = [];
    let handshakes = 0;
    let running = true;
    const client = async (): Promise<void> => {
      while (running) {
        const result = await nodeGet(proxy.port, 'two.lab.test', root);
        if (result.ok) handshakes++;
        else failures.push(result.error ?? 'no answer');
      }
    };
    const clients = [client(), client(), client()];
    await sleep(300);
    const file = join(proxy.storeDir, 'two.pem');
    const started = performance.now();
    // In place, as a tool without an atomic write does it: truncate and write the leaf, then append the rest.
    writeFileSync(file, `${next.certPem}\n`);
    await sleep(300);
    appendFileSync(file, inter.certPem);
    pickup.twoStep = Math.round(await servedAfter('two.lab.test', next, started));
    await sleep(300);
    running = false;
    await Promise.all(clients);
    expect(failures).toEqual([]);
    expect(handshakes).toBeGreaterThan(10);
  });

  it('refuses a leaf without its intermediate (incomplete_chain, naming the issuer) and keeps the previous chain serving', async () => {
    const store = (pem: string): void => {
      writeFileSync(join(proxy.storeDir, '.only.tmp'), pem);
      renameSync(join(proxy.storeDir, '.only.tmp'), join(proxy.storeDir, 'only.pem'));
    };
    const first = await leaf('only.lab.test');
    store(`${first.certPem}\n${inter.certPem}`);
    await servedAfter('only.lab.test', first, performance.now());
    const before = proxy.lines.length;
    store(leafOnly.certPem);
    const refused = await waitFor('the refusal', () => proxy.lines.slice(before).find((l) => l.certificate === 'only' && l.reason !== undefined));
    expect(refused).toMatchObject({ reason: 'incomplete_chain', code: 'KEYEDGE_ERR_CERTIFICATE' });
    expect(refused.msg).toMatch(/the chain is the leaf alone and its issuer "CN=Lab Intermediate" \(authority key id [0-9a-f:]+\) is not in it/);
    expect(refused.msg).toContain('the previous version keeps serving');
    expect(await servedSerial('only.lab.test')).toBe(first.cert.serialNumber.toLowerCase());
    expect((await proxy.admin('GET', '/certs')).text).toContain('incomplete_chain');
  });
});

describe('a renewal is never missed', () => {
  const storeLink = (): string => join(proxy.storeDir, 'link.pem');

  it('serves a symlink re-pointed to a chain of the same size and mtime within a second, from the watch', async () => {
    expect(await servedSerial('link.lab.test')).toBe(linked[0]!.cert.serialNumber.toLowerCase());
    const started = performance.now();
    repoint(storeLink(), join(linksDir, 'chain-1.pem'));
    const ms = await servedAfter('link.lab.test', linked[1]!, started, WITHIN_MS);
    pickup.repointWatch = Math.round(ms);
    expect(ms).toBeLessThan(WITHIN_MS);
  });

  it('picks such a re-point up on POST /reload', async () => {
    repoint(storeLink(), join(linksDir, 'chain-2.pem'));
    const answer = await proxy.admin('POST', '/reload');
    expect(answer.status).toBe(200);
    // The reload's answer comes once every worker applied it (or after the watch's, which it queues behind).
    expect(await servedSerial('link.lab.test')).toBe(linked[2]!.cert.serialNumber.toLowerCase());
  });

  it('picks such a re-point up on SIGHUP', async () => {
    const before = proxy.lines.length;
    repoint(storeLink(), join(linksDir, 'chain-3.pem'));
    process.kill(proxy.pid, 'SIGHUP');
    await waitFor('the SIGHUP reload', () => proxy.lines.slice(before).find((l) => l.msg === 'reload done' && l.trigger === 'signal'));
    expect(await servedSerial('link.lab.test')).toBe(linked[3]!.cert.serialNumber.toLowerCase());
  });

  it('serves a certbot renewal (live/ link re-pointed to the next archive/ file) named in the config within a second', async () => {
    const ms = await renew(configLineage);
    pickup.certbot = Math.round(ms);
    expect(ms).toBeLessThan(WITHIN_MS);
  });

  it('serves a certbot renewal behind a store symlink (store → live/ → archive/) within a second', async () => {
    const ms = await renew(storeLineage);
    pickup.storeLinkedCertbot = Math.round(ms);
    expect(ms).toBeLessThan(WITHIN_MS);
  });
});

describe('a Kubernetes secret volume', () => {
  it('serves each update (..data re-pointed, the old directory removed) named in the config within a second, twice in a row', async () => {
    expect(await servedSerial('secret.lab.test')).toBe(secretLeaves[0]!.cert.serialNumber.toLowerCase());
    for (const generation of [1, 2]) {
      await sleep(500);
      const started = performance.now();
      writeSecret(generation, `${secretLeaves[generation]!.certPem}\n${inter.certPem}`);
      const ms = await servedAfter('secret.lab.test', secretLeaves[generation]!, started, WITHIN_MS);
      pickup[`secret${generation}`] = Math.round(ms);
    }
  });
});

describe("the store's leftovers and an upload meeting a directory swapped in", () => {
  it('removed at start: the side file of a writer killed mid-write, not that of a writer still running', () => {
    expect(readdirSync(proxy.storeDir).filter((f) => f.startsWith('.two.'))).toEqual([`.two.pem.${process.pid}.${PID_SPACE}.0123456789ab.tmp`]);
    expect(proxy.lines.find((l) => l.msg === 'removed files left by certificate store writes killed midway')).toMatchObject({
      files: [`.two.json.${deadPid}.${PID_SPACE}.0123456789ab.aside`],
    });
    unlinkSync(join(proxy.storeDir, `.two.pem.${process.pid}.${PID_SPACE}.0123456789ab.tmp`));
  });

  for (const [name, when] of [
    ['held-early', 'while the upload is validated'],
    ['held-late', 'as the write begins'],
  ] as const) {
    it(`refuses an upload when an empty directory takes the store's place ${when}, leaving nothing in it; every entry keeps serving`, async () => {
      const served = await servedSerial('two.lab.test');
      expect(served).toBeDefined();
      const issued = await leaf(`${name}.lab.test`);
      const put = await proxy.admin('PUT', `/certs/${name}`, `${issued.certPem}\n${inter.certPem}`);
      const held = `${proxy.storeDir}.held`;
      try {
        expect(existsSync(held)).toBe(true);
        expect(put.status, put.text).toBe(503);
        const { error } = JSON.parse(put.text) as { error: { code: string; message: string } };
        expect(error.code).toBe('KEYEDGE_ERR_CERT_STORE_GONE');
        expect(error.message).toContain(`the certificate store ${proxy.storeDir} was replaced by another directory`);
        // The stand-in holds nothing of it (the next pass would otherwise take it for the whole store), nor does the store.
        expect(readdirSync(proxy.storeDir)).toEqual([]);
        expect(readdirSync(held).filter((f) => f.includes(name))).toEqual([]);
        expect(await servedSerial('two.lab.test')).toBe(served);
      } finally {
        rmSync(proxy.storeDir, { recursive: true, force: true });
        renameSync(held, proxy.storeDir);
      }
      // The store back: the same upload is taken.
      const again = await proxy.admin('PUT', `/certs/${name}`, `${issued.certPem}\n${inter.certPem}`);
      expect(again.status, again.text).toBe(200);
      await servedAfter(`${name}.lab.test`, issued, performance.now());
      expect(await servedSerial('two.lab.test')).toBe(served);
    });
  }

  it("refuses a replacing upload when an empty directory takes the store's place between its two files, the entry left as it was", async () => {
    const first = await leaf('held-mid.lab.test');
    expect((await proxy.admin('PUT', '/certs/held-mid', `${first.certPem}\n${inter.certPem}`)).status).toBe(200);
    const files = (dir: string): Record<string, string> =>
      Object.fromEntries(
        readdirSync(dir)
          .filter((f) => f.includes('held-mid'))
          .map((f) => [f, readFileSync(join(dir, f), 'utf8')]),
      );
    const before = files(proxy.storeDir);
    const put = await proxy.admin('PUT', '/certs/held-mid', `${(await leaf('held-mid.lab.test')).certPem}\n${inter.certPem}`);
    const held = `${proxy.storeDir}.held`;
    try {
      expect(put.status, put.text).toBe(503);
      expect(readdirSync(proxy.storeDir)).toEqual([]);
      // Its metadata already renamed into the store: put back, not left pinning the new chain beside the old one.
      expect(files(held)).toEqual(before);
    } finally {
      rmSync(proxy.storeDir, { recursive: true, force: true });
      renameSync(held, proxy.storeDir);
    }
  });
});

describe('a store directory swapped for another, as a deploy does (mv certs certs.old; mv certs.new certs)', () => {
  it('keeps every entry serving while the directory is away, then serves the new one from the watch', async () => {
    const served = await servedSerial('two.lab.test');
    expect(served).toBeDefined();
    const next = `${proxy.storeDir}.new`;
    execFileSync('cp', ['-a', proxy.storeDir, next]);
    const added = await leaf('swapped.lab.test');
    writeFileSync(join(next, 'swapped.pem'), `${added.certPem}\n${inter.certPem}`);
    renameSync(proxy.storeDir, `${proxy.storeDir}.old`);
    // A reload meanwhile (a rescan, a SIGHUP, this) is refused naming the directory: not an empty store.
    const answer = await proxy.admin('POST', '/reload');
    expect(answer.status).toBe(409);
    expect(answer.text).toContain(`the certificate store ${proxy.storeDir} is gone (ENOENT)`);
    // An upload meanwhile is refused too, rather than made the one entry of a new, empty directory.
    const put = await proxy.admin('PUT', '/certs/swapped', `${added.certPem}\n${inter.certPem}`);
    expect(put.text).toContain(`the certificate store ${proxy.storeDir} is gone`);
    // The store is away for now: 503 (try again), not a server fault.
    expect(put.status).toBe(503);
    expect(JSON.parse(put.text).error.code).toBe('KEYEDGE_ERR_CERT_STORE_GONE');
    expect(existsSync(proxy.storeDir)).toBe(false);
    expect(await servedSerial('two.lab.test')).toBe(served);
    const started = performance.now();
    renameSync(next, proxy.storeDir);
    // The rescan is an hour away: only a watch on the new directory sees it.
    pickup.swappedStore = Math.round(await servedAfter('swapped.lab.test', added, started, WITHIN_MS * 3));
    expect(await servedSerial('two.lab.test')).toBe(served);
  });
});

/** The primary's count of refused reloads by `trigger`, from /metrics. */
async function refusedReloads(trigger: string): Promise<number> {
  const text = (await proxy.admin('GET', '/metrics')).text;
  const line = text.split('\n').find((l) => l.startsWith(`keyedge_proxy_reloads_total{trigger="${trigger}",result="refused"}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

describe('a store directory replaced by an empty one (rm -rf certs && mkdir certs, or a deploy swapping in an empty directory)', () => {
  it('refuses the empty directory, counted and naming it, every entry keeps serving, and an upload is answered 503', async () => {
    const served = await servedSerial('two.lab.test');
    expect(served).toBeDefined();
    const watchRefusals = await refusedReloads('watch');
    const adminRefusals = await refusedReloads('admin');
    const before = proxy.lines.length;
    renameSync(proxy.storeDir, `${proxy.storeDir}.prev`);
    mkdirSync(proxy.storeDir);
    // The watch's pass on the new directory: refused, naming it, rather than taken as an empty store. (A pass the test
    // before set off may still end after `before`, on a loaded machine: the refusal is waited for by its code.)
    const pass = await waitFor('the watch pass', () =>
      proxy.lines.slice(before).find((l) => l.trigger === 'watch' && l.code === 'KEYEDGE_ERR_CERT_STORE_GONE'),
    );
    expect(proxy.lines.slice(before).filter((l) => l.msg === 'reload done' && Number(l.removed) > 0)).toEqual([]);
    expect(JSON.stringify(pass)).toContain(`the certificate store ${proxy.storeDir} was replaced by another directory holding no certificate`);
    expect(await servedSerial('two.lab.test')).toBe(served);
    expect(await servedSerial('swapped.lab.test')).toBeDefined();
    const answer = await proxy.admin('POST', '/reload');
    expect(answer.status).toBe(409);
    expect(answer.text).toContain(`the certificate store ${proxy.storeDir} was replaced by another directory holding no certificate`);
    // An upload is refused too, rather than made the one entry the next pass would take the directory for.
    const late = await leaf('late.lab.test');
    const put = await proxy.admin('PUT', '/certs/late', `${late.certPem}\n${inter.certPem}`);
    expect(put.status).toBe(503);
    expect(JSON.parse(put.text).error).toMatchObject({ code: 'KEYEDGE_ERR_CERT_STORE_GONE' });
    expect(readdirSync(proxy.storeDir)).toEqual([]);
    expect(await refusedReloads('watch')).toBeGreaterThan(watchRefusals);
    expect(await refusedReloads('admin')).toBeGreaterThan(adminRefusals);
    expect(await servedSerial('two.lab.test')).toBe(served);
  });

  it('takes the new directory once it holds a certificate, and a store emptied in place (its last entry removed) as empty', async () => {
    const late = await leaf('late.lab.test');
    writeFileSync(join(proxy.storeDir, '.late.tmp'), `${late.certPem}\n${inter.certPem}`);
    renameSync(join(proxy.storeDir, '.late.tmp'), join(proxy.storeDir, 'late.pem'));
    await servedAfter('late.lab.test', late, performance.now());
    // The new directory is the store now: what the old one held and this one does not is no longer served.
    await waitFor('two.lab.test to stop serving', async () => ((await servedSerial('two.lab.test')) === undefined ? true : undefined));
    unlinkSync(join(proxy.storeDir, 'late.pem'));
    await waitFor('late.lab.test to stop serving', async () => ((await servedSerial('late.lab.test')) === undefined ? true : undefined));
    // The config's certificates are not the store's: they serve on.
    expect(await servedSerial('secret.lab.test')).toBeDefined();
  });
});
