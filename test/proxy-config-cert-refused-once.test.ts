import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// A certificate of the config file whose chain file was replaced by one refused (expired, here) or went missing was
// judged and refused again by every pass: each rescan (every 30 s by default) logged the refusal at error level once
// more and counted a refused reload, for as long as the file stayed. README: a refused version is judged and logged
// once. Its previous version serves throughout; a fixed file serves at the next pass.

const DAY_MS = 86_400_000;
let lab: KeylessLab;
let proxy: ClusterProxy;
let root: string;
let chainFile: string;
let first: Issued;
const chain = (l: Issued): string => `${l.certPem}\n${lab.ca.certPem}`;
const hex = (serial: string | undefined): string => (serial ?? '').toUpperCase().replace(/^0+/, '');
const refusals = () => proxy.lines.filter((l) => l.certificate === 'cfg' && l.code === 'KEYEDGE_ERR_CERTIFICATE');
const metric = async (pattern: RegExp): Promise<number> => {
  const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? 0);
};
const rescans = async (): Promise<number> =>
  (await metric(/keyedge_proxy_reloads_total\{trigger="rescan",result="ok"\} (\d+)/)) +
  (await metric(/keyedge_proxy_reloads_total\{trigger="rescan",result="refused"\} (\d+)/));
const served = async (): Promise<string> => {
  const r = await nodeGet(proxy.port, 'cfg.lab.test', root);
  return r.ok ? hex(r.serial) : `failed: ${r.error}`;
};
const write = (text: string): void => {
  writeFileSync(`${chainFile}.tmp`, text);
  renameSync(`${chainFile}.tmp`, chainFile);
};

beforeAll(async () => {
  lab = await startKeylessLab();
  root = readFileSync(lab.caFile, 'utf8');
  first = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'cfg.lab.test', dnsNames: ['cfg.lab.test'] });
  chainFile = join(lab.dir, 'cfg-chain.pem');
  writeFileSync(chainFile, chain(first));
  proxy = await startClusterProxy(lab, 'config-cert-refused-once', (p) =>
    storeProxyConfig(lab, p, { certificates: [{ name: 'cfg', chain: chainFile }], certStore: { dir: p.storeDir, rescanSeconds: 1 } }),
  );
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe("a config certificate's refused chain file", () => {
  it('is refused once, not again by every rescan; the previous version serves', async () => {
    const expired = await issueForPublicKey(lab.ca, lab.keys.ec.spki, {
      commonName: 'cfg.lab.test',
      dnsNames: ['cfg.lab.test'],
      notBefore: new Date(Date.now() - 5 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    write(chain(expired));
    await waitFor('the refusal', () => (refusals().length > 0 ? true : undefined), 20_000);
    const before = await rescans();
    await waitFor('three rescans', async () => ((await rescans()) >= before + 3 ? true : undefined), 30_000);
    expect(refusals().map((l) => l.reason)).toEqual(['expired']);
    expect(await served()).toBe(hex(first.cert.serialNumber));
    const listed = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as {
      certificates: { name: string; refused: { reason: string } | null }[];
    };
    expect(listed.certificates.find((c) => c.name === 'cfg')?.refused).toMatchObject({ reason: 'expired' });
  }, 60_000);

  it('gone, is refused once as unreadable; put back fixed, it serves', async () => {
    rmSync(chainFile);
    await waitFor('the refusal of the missing file', () => (refusals().length > 1 ? true : undefined), 20_000);
    const before = await rescans();
    await waitFor('three rescans', async () => ((await rescans()) >= before + 3 ? true : undefined), 30_000);
    expect(refusals().map((l) => l.reason)).toEqual(['expired', 'unreadable']);
    expect(await served()).toBe(hex(first.cert.serialNumber));
    const renewed = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'cfg.lab.test', dnsNames: ['cfg.lab.test'] });
    write(chain(renewed));
    await waitFor('the renewal served', async () => ((await served()) === hex(renewed.cert.serialNumber) ? true : undefined), 20_000);
  }, 60_000);
});
