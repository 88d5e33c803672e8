import { mkdtempSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { readPack, writePack } from '../proxy/serving/pack.js';
import type { CertificateRecord } from '../proxy/serving/spec.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sClient } from './helpers/clients.js';
import { createCa } from './helpers/pki.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// A whole state read from a pack (what a worker gets for a change of more than PACK_THRESHOLD entries, and at each
// rebase: serving/distribute.ts) replaces the worker's state; the secure contexts of certificates it serves unchanged
// are kept. An operator re-bundling chains with the same leaves (a CA changing its intermediate) sends such a state:
// the same leaf, key and serial, another chain. Running workers must serve the new chain.
let lab: KeylessLab;
let proxy: RunningWorker;
let config: ProxyConfig;

beforeAll(async () => {
  lab = await startKeylessLab();
  const issued = await lab.certificate('ec-chain', lab.keys.ec, ['ec.lab.test']);
  config = lab.proxyConfig({ certificates: [{ name: 'ec', chain: issued.file }] });
  proxy = await startProxyWorker(config, { log: createLogger('packed-chain-test', 'silent') });
});
afterAll(async () => {
  await proxy?.close();
  await lab?.close();
});

/** The certificates the proxy sends for `servername`, as s_client -showcerts prints them. */
async function sentChain(servername: string): Promise<number> {
  const result = await sClient(proxy.ports[0]!, servername, lab.caFile, ['-showcerts']);
  return (result.stdout.match(/-----BEGIN CERTIFICATE-----/g) ?? []).length;
}

describe('a whole state from a pack that changes only a chain', () => {
  it('is served with the new chain, not the context of the old one', async () => {
    expect(await sentChain('ec.lab.test')).toBe(2);
    const record = proxy.state.records.get('ec')!;
    // The same leaf, its CA now followed by a cross-signed one (any further certificate will do: the chain is what changes).
    const cross = await createCa('keyedge cross CA');
    const chainPem = `${record.chainPem.trim()}\n${cross.certPem}`;
    const upsert: CertificateRecord[] = [{ ...record, chainPem, inputId: `${record.inputId}-rebundled` }];
    const dir = mkdtempSync(join(lab.dir, 'packs-'));
    const packed = writePack(dir, 'whole-2.pack', {
      generation: 1_000,
      routing: { domains: config.domains, sni: config.sni },
      upsert,
      remove: [],
      whole: true,
    });
    proxy.apply(readPack(packed));
    unlinkSync(packed.file);
    expect(proxy.state.records.get('ec')?.chainPem).toBe(chainPem);
    expect(await sentChain('ec.lab.test'), 'the worker still serves the chain of the state before').toBe(3);
  });
});
