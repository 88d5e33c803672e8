import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { type ClusterPorts, type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueForPublicKey } from './helpers/pki.js';

// A store entry with the name of one of the config file's certificates is refused ('names'; the config's serves). A
// reload took the config that named it and served its certificate; the next start then refused to run at all
// (KEYEDGE_ERR_CONFIG, "certificate 'www' (…/certs/www.pem) cannot be served"), taking the store file's refusal for the
// config certificate's own: a restart after a good reload was a full outage. A start now fails only when a config
// certificate itself cannot be served.

let lab: KeylessLab;
let root: string;
let ports: ClusterPorts;
let fromStore: Issued;
let fromConfig: Issued;
let configChain: string;
const running: ClusterProxy[] = [];
const leaf = (host: string): Promise<Issued> => issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: host, dnsNames: [host] });
const chain = (l: Issued): string => `${l.certPem}\n${lab.ca.certPem}`;
const hex = (serial: string | undefined): string => (serial ?? '').toUpperCase().replace(/^0+/, '');
const served = async (proxy: ClusterProxy): Promise<string> => {
  const r = await nodeGet(proxy.port, 'www.lab.test', root);
  return r.ok ? hex(r.serial) : `failed: ${r.error}`;
};
const withConfigCertificate = (p: ClusterPorts, rescanSeconds = 3600): Record<string, unknown> =>
  storeProxyConfig(lab, p, { certificates: [{ name: 'www', chain: configChain }], certStore: { dir: p.storeDir, rescanSeconds } });
const metric = async (proxy: ClusterProxy, pattern: RegExp): Promise<number> => {
  const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? 0);
};

beforeAll(async () => {
  lab = await startKeylessLab();
  root = readFileSync(lab.caFile, 'utf8');
  [fromStore, fromConfig] = await Promise.all([leaf('www.lab.test'), leaf('www.lab.test')]);
  configChain = join(lab.dir, 'www-config.pem');
  writeFileSync(configChain, chain(fromConfig));
}, 60_000);

afterAll(async () => {
  for (const proxy of running) await proxy.stop();
  await lab?.close();
});

describe('a store entry named like a config certificate', () => {
  it('is refused by a reload that adds the config certificate, which serves, and a restart serves it too', async () => {
    const first = await startClusterProxy(lab, 'store-config-name', (p) => {
      ports = p;
      writeFileSync(join(p.storeDir, 'www.pem'), chain(fromStore));
      return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } });
    });
    running.push(first);
    expect(await served(first)).toBe(hex(fromStore.cert.serialNumber));
    first.writeConfig(withConfigCertificate(ports));
    const reload = await waitFor('the reload of the new config', async () => {
      const answer = await first.admin('POST', '/reload');
      const report = JSON.parse(answer.text) as { refused: { name: string; reason: string; source: string }[] };
      return report.refused.length > 0 ? report : undefined;
    });
    expect(reload.refused).toEqual([expect.objectContaining({ name: 'www', reason: 'names', source: join(ports.storeDir, 'www.pem') })]);
    expect(await served(first)).toBe(hex(fromConfig.cert.serialNumber));
    await first.stop();
    // Before: the proxy exited 1 at start, KEYEDGE_ERR_CONFIG naming the store file's refusal.
    const second = await startClusterProxy(lab, 'store-config-name', (p) => withConfigCertificate(p, 1));
    running.push(second);
    expect(await served(second)).toBe(hex(fromConfig.cert.serialNumber));
    expect(second.lines.some((l) => l.certificate === 'www' && l.reason === 'names' && l.code === 'KEYEDGE_ERR_CERTIFICATE')).toBe(true);
  }, 120_000);

  // Refused at the top of every pass, before anything remembered it: each rescan (every 30 s by default) logged it at
  // error level again and counted a refused reload, for as long as the file stayed.
  it('is refused once, not again by every rescan', async () => {
    const second = running.at(-1)!;
    const rescans = async (): Promise<number> =>
      (await metric(second, /keyedge_proxy_reloads_total\{trigger="rescan",result="ok"\} (\d+)/)) +
      (await metric(second, /keyedge_proxy_reloads_total\{trigger="rescan",result="refused"\} (\d+)/));
    const before = await rescans();
    await waitFor('three rescans', async () => ((await rescans()) >= before + 3 ? true : undefined), 30_000);
    expect(second.lines.filter((l) => l.certificate === 'www' && l.code === 'KEYEDGE_ERR_CERTIFICATE')).toHaveLength(1);
    const listed = JSON.parse((await second.admin('GET', '/certs', undefined, null)).text) as {
      certificates: { name: string; refused: { reason: string } | null }[];
    };
    expect(listed.certificates.find((c) => c.name === 'www')?.refused).toMatchObject({ reason: 'names' });
    expect(await served(second)).toBe(hex(fromConfig.cert.serialNumber));
  }, 60_000);
});
