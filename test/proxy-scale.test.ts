import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERDICT_FILE } from '../proxy/certs/verdict-cache.js';
import { PACK_THRESHOLD } from '../proxy/serving/pack.js';
import { nodeGet } from './helpers/clients.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// A store larger than a pack's threshold: the workers get their state as a
// file (serving/pack.ts), a restart serves from remembered verdicts
// (certs/verdicts.ts) without judging any chain again, and a mass renewal
// travels as a pack too. Speed is measured in bench/cert-scale, not here.

const ENTRIES = PACK_THRESHOLD + 44;
let lab: KeylessLab;
let ca: string;
let storeDir: string;
let proxy: ClusterProxy | undefined;
/** The proxy the targeted-pass case leaves running once it has shown its claims: the mass renewal is applied by it. */
let watched: ClusterProxy | undefined;
const leaves: Issued[] = [];

const host = (i: number): string => `s${i}.lab.test`;
const hex = (serial: string): string => serial.toUpperCase().replace(/^0+/, '');

async function writeEntry(i: number): Promise<void> {
  const leaf = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: host(i), dnsNames: [host(i)] });
  leaves[i] = leaf;
  writeFileSync(join(storeDir, `s${i}.pem`), `${leaf.certPem}\n${lab.ca.certPem}`);
}

async function start(): Promise<ClusterProxy> {
  proxy = await startClusterProxy(lab, 'scale', (p) => storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } }));
  return proxy;
}

/** Several connections, so that both workers are asked. */
async function expectServed(p: ClusterProxy, indexes: readonly number[]): Promise<void> {
  for (const i of indexes) {
    for (let k = 0; k < 3; k++) {
      const got = await nodeGet(p.port, host(i), ca);
      expect(got.ok, host(i)).toBe(true);
      expect(hex(got.serial ?? ''), host(i)).toBe(hex(leaves[i]!.cert.serialNumber));
    }
  }
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  storeDir = join(lab.dir, 'scale', 'certs');
  mkdirSync(storeDir, { recursive: true });
  for (let i = 0; i < ENTRIES; i++) await writeEntry(i);
  // Files read within a second of their last change are read again at the next start (serving/kept.ts): these are not.
  await new Promise((resolve) => setTimeout(resolve, 1_100));
}, 120_000);
afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('keyedge proxy with a store larger than a pack', () => {
  it('serves every entry from state handed over as a file, and remembers the verdicts', async () => {
    const p = await start();
    await expectServed(p, [0, 1, ENTRIES - 1]);
    await p.stop();
    const file = join(lab.dir, 'state', VERDICT_FILE);
    const header = JSON.parse(readFileSync(file, 'utf8').split('\n', 1)[0]!) as { count: number };
    expect(header.count).toBe(ENTRIES);
  }, 90_000);

  it('restarts from remembered verdicts and the kept state: nothing is judged again, the kept pack is sent again, no file rewritten', async () => {
    const file = join(lab.dir, 'state', VERDICT_FILE);
    const before = { text: readFileSync(file, 'utf8'), mtimeMs: statSync(file).mtimeMs };
    // The whole state the first start wrote for its workers stays for the next start (proxy/serving/kept.ts).
    const kept = join(lab.dir, 'state', 'serving');
    const packs = readdirSync(kept).filter((f) => f.endsWith('.pack'));
    expect(packs).toHaveLength(1);
    const sidecar = statSync(join(kept, 'kept.json')).mtimeMs;
    const p = await start();
    await expectServed(p, [2, ENTRIES - 2]);
    await p.stop();
    // Every entry came from it unread, so the workers got the same pack and nothing was written.
    expect(readdirSync(kept).filter((f) => f.endsWith('.pack'))).toEqual(packs);
    expect(statSync(join(kept, 'kept.json')).mtimeMs).toBe(sidecar);
    expect(statSync(file).mtimeMs).toBe(before.mtimeMs);
    expect(readFileSync(file, 'utf8')).toBe(before.text);
    expect(p.lines.filter((l) => String(l.msg).includes(VERDICT_FILE))).toEqual([]);
  }, 90_000);

  it('reloads an entry the store watch names alone (a targeted pass), on top of the state the workers got as a file', async () => {
    const p = await start();
    const i = ENTRIES - 3;
    await writeEntry(i);
    const line = await waitFor('the reload of the one entry', () => p.lines.find((l) => l.msg === 'reload done' && l.trigger === 'watch' && l.changed === 1));
    expect(line.targeted).toBe(true);
    await expectServed(p, [i, 0, ENTRIES - 1]);
    watched = p;
  }, 90_000);

  it('applies a renewal of more entries than a pack holds inline in every worker', async () => {
    // The proxy above, started from the kept state as a restart is, one entry reloaded since: not a start of its own (a
    // primary and two workers, some 4 s of CPU), which it needs for nothing. Had that case failed, one of its own.
    const p = watched ?? (await start());
    for (let i = 0; i <= PACK_THRESHOLD; i++) await writeEntry(i);
    const answer = await p.admin('POST', '/reload');
    expect(answer.status).toBe(200);
    await expectServed(p, [0, PACK_THRESHOLD, ENTRIES - 1]);
    await p.stop();
  }, 120_000);
});
