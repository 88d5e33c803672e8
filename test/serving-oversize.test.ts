import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateError } from '../proxy/certs/errors.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { prepareServing } from '../proxy/serving/prepare.js';
import { createCa, issue, issueCa } from './helpers/pki.js';

// A chain file of megabytes (a valid chain padded with text PEM parsers
// skip, a link to the wrong file) is refused by its size before it is read,
// whether the config names it or the store holds it; the rest serves.

let dir: string;
let chain: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-serving-oversize-'));
  const root = await createCa('Oversize Root');
  const inter = await issueCa(root, 'Oversize Intermediate');
  const issued = await issue(inter, { commonName: 'x.example', dnsNames: ['x.example'], keyAlgorithm: 'ec-p256' });
  chain = `${issued.certPem}\n${inter.certPem}\n`;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A first pass over `storeDir` with `config`, every key the token's (the leaf's own). */
function prepareFrom(config: ReturnType<typeof loadProxyConfig>, storeDir: string): ReturnType<typeof prepareServing> {
  return prepareServing({
    config,
    store: new CertificateStore(storeDir),
    previous: new Map(),
    seen: new Map(),
    validation: { now: new Date(), keyserverSpki: async (_keyId, leafSpki) => leafSpki },
  });
}

describe('chain files over the size bound', () => {
  it('are refused by name, path and size, from the config and from the store, and the others serve', async () => {
    const storeDir = join(dir, 'store');
    mkdirSync(storeDir, { recursive: true });
    const padding = `${'#'.repeat(1023)}\n`.repeat(1024);
    writeFileSync(join(storeDir, 'fine.pem'), chain);
    writeFileSync(join(storeDir, 'big.pem'), chain + padding);
    const configChain = join(dir, 'config-big.pem');
    writeFileSync(configChain, padding + chain);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir }, certificates: [{ name: 'main', chain: configChain }] });
    const prepared = await prepareFrom(config, storeDir);
    expect([...prepared.records.keys()]).toEqual(['fine']);
    const size = /the chain file is \d+ bytes; a chain file holds at most 1048576/;
    expect(prepared.refused.map((r) => [r.name, r.source, r.reason])).toEqual([
      ['main', configChain, 'unreadable'],
      ['big', join(storeDir, 'big.pem'), 'unreadable'],
    ]);
    for (const refusal of prepared.refused) expect(refusal.message).toMatch(size);
    // The synchronous read (a settling re-read, `keyedge cert`) refuses it the same way.
    expect(() => new CertificateStore(storeDir).read('big')).toThrow(CertificateError);
    expect(() => new CertificateStore(storeDir).read('big')).toThrow(size);
  });

  it('are refused when they are not files: a config chain that is a FIFO, which would block every pass that opened it', async () => {
    const storeDir = join(dir, 'fifo-store');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'fine.pem'), chain);
    const fifo = join(dir, 'chain.fifo');
    execFileSync('mkfifo', [fifo]);
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir }, certificates: [{ name: 'main', chain: fifo }] });
    const prepared = await prepareFrom(config, storeDir);
    expect([...prepared.records.keys()]).toEqual(['fine']);
    expect(prepared.refused.map((r) => [r.name, r.reason])).toEqual([['main', 'unreadable']]);
    expect(prepared.refused[0]!.message).toMatch(/chain\.fifo\): the chain is not a file but a special file/);
  });
});
