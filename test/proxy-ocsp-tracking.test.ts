import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { parseCertificateChain } from '../proxy/certs/certificate.js';
import { type CertificateRecord, recordOf } from '../proxy/serving/spec.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { issueForPublicKey } from './helpers/pki.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// A worker starts the OCSP refresh loops of a large change's stapled certificates in batches of 100, one per turn of
// the event loop (live.ts): a start or reload with thousands of them stays responsive. A change applied before a
// batch ran (a removal, a replacement) left that batch to start a loop for a certificate no longer served, which
// fetched its staple until the worker exited.
let lab: KeylessLab;
let proxy: RunningWorker;
let config: ProxyConfig;
const logLines: string[] = [];

beforeAll(async () => {
  lab = await startKeylessLab();
  const ec = await lab.certificate('ec-tracking', lab.keys.ec, ['ec.lab.test']);
  config = lab.proxyConfig({ certificates: [{ name: 'ec', chain: ec.file }] });
  proxy = await startProxyWorker(config, { log: createLogger('ocsp-tracking-test', 'debug', { write: (line: string) => void logLines.push(line) }) });
});
afterAll(async () => {
  await proxy?.close();
  await lab?.close();
});

/** The stapler's log lines naming entry `name`. */
function stapleLines(name: string): string[] {
  return logLines.filter((line) => (JSON.parse(line) as { certificate?: string }).certificate === name);
}

describe('staple loops started in the background', () => {
  it('are not started for a certificate a later change removed before its batch ran', async () => {
    // Stapled certificates (a responder URL, the issuer in the chain) whose responder refuses connections: each loop's
    // fetch fails at once and says so, naming its certificate.
    const responder = `http://127.0.0.1:${await freePort()}`;
    const records: CertificateRecord[] = [];
    for (let i = 0; i < 130; i++) {
      const leaf = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: `s${i}.lab.test`, dnsNames: [`s${i}.lab.test`], ocspUrl: responder });
      const served = parseCertificateChain(`s${i}`, `${leaf.certPem}\n${lab.ca.certPem}`, 'test');
      records.push(recordOf(served, 'config', `s${i}`, new Date()));
    }
    expect(records.every((r) => r.stapled)).toBe(true);
    const routing = { domains: config.domains, sni: config.sni };
    const plain = parseCertificateChain('s125', (await lab.certificate('s125-plain', lab.keys.ec, ['s125.lab.test'])).leaf.certPem, 'test');
    proxy.apply({ generation: 100, routing, upsert: records, remove: [], whole: false });
    // In the same turn: s120 (in the second batch) removed, s125 replaced by a certificate without a responder.
    expect(proxy.state.records.size).toBe(131);
    proxy.apply({ generation: 101, routing, upsert: [recordOf(plain, 'config', 's125-plain', new Date())], remove: ['s120'] });
    // Every loop still served has tried and failed by now (its first fetch runs at once, the port refuses).
    const started = Date.now();
    while (stapleLines('s129').length === 0 && Date.now() - started < 10_000) await sleep(100);
    expect(stapleLines('s129').length).toBeGreaterThan(0);
    await sleep(500);
    expect(stapleLines('s120'), 'a staple loop runs for s120, removed').toEqual([]);
    expect(stapleLines('s125'), 'a staple loop runs for the s125 replaced').toEqual([]);
  });
});
