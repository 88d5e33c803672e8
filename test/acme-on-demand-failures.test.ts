import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { issueForPublicKey } from './helpers/pki.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import type { KeylessLab } from './helpers/proxy-lab.js';

// An on-demand order that fails (the name's validation fails at the CA) is
// not retried by the renewal loop on its own backoff: that loop's retries
// were orders and token keys outside the on-demand hourly limits, for every
// name a client ever sent. The name comes back only through the gate (its
// next handshake), under those limits: with maxOrdersPerDomainPerHour 1, one
// order. And a handshake for a name that is the entry name of a certificate
// of the store (not ACME's: uploaded by the operator) orders nothing: the
// order's chain would have replaced that entry, and what it served; nor does
// one whose entry the store holds but refuses for now (not yet valid). A state
// file that cannot be written (disk full) fails the order, never the primary.
let lab: KeylessLab;
let pebble: Pebble;
let proxy: ClusterProxy;
let acmeLab: AcmeLab;

beforeAll(async () => {
  acmeLab = await startAcmeLab();
  ({ lab, pebble } = acmeLab);
  proxy = await acmeLab.startProxy(['*.test'], {
    timeoutMs: 2_000,
    renewal: { checkSeconds: 1, retryMinSeconds: 1, retryMaxSeconds: 2, jitter: 0 },
    // The lab's names are under .test, a special-use TLD: a private CA's gate (pebble is one) lets them through.
    onDemand: { maxOrdersPerDomainPerHour: 1, publicNamesOnly: false },
  });
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await acmeLab?.close();
});

function handshake(name: string): Promise<boolean> {
  return served(name).then((sans) => sans !== undefined);
}

/** The served leaf's subjectAltName for `name`, or undefined when the handshake fails. */
function served(name: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: name, rejectUnauthorized: false });
    socket.setTimeout(15_000, () => socket.destroy(new Error('timeout')));
    socket.once('secureConnect', () => {
      const sans = socket.getPeerCertificate().subjectaltname ?? '';
      socket.destroy();
      resolve(sans);
    });
    socket.once('error', () => resolve(undefined));
  });
}

describe('on-demand orders that fail', () => {
  it('are not retried outside the hourly limits', async () => {
    // Validation connects to 127.0.0.2, where nothing listens: the order fails at the CA.
    await pebble.addA('gone.fail.test', '127.0.0.2');
    const first = Date.now();
    expect(await handshake('gone.fail.test')).toBe(false);
    await waitFor('the on-demand order to reach the CA', () => (pebble.orders() >= 1 ? true : undefined), 30_000);
    // The renewal loop runs every second, its backoff 1-2 s: six seconds held two retries or more before. The workers
    // report a name again 10 s after they last did: the next handshake comes after that.
    await sleep(Math.max(6_000, first + 11_000 - Date.now()));
    expect(pebble.orders()).toBe(1);
    // Its next handshake (reported again after the workers' 10 s) goes through the gate, whose hourly limit says no.
    expect(await handshake('gone.fail.test')).toBe(false);
    await waitFor(
      'the gate to rate-limit the name',
      async () => ((await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text()).includes('outcome="rate_limited"') ? true : undefined),
      30_000,
    );
    expect(pebble.orders()).toBe(1);
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    expect(metrics).toMatch(/keyedge_proxy_acme_on_demand_total\{outcome="ordered"\} 1\b/);
  }, 90_000);

  it('a name that is the entry name of an uploaded certificate orders nothing, and the entry keeps serving', async () => {
    const { file } = await lab.certificate('site', lab.keys.ec, ['www.site.test']);
    const put = await proxy.admin('PUT', '/certs/site.test', readFileSync(file, 'utf8'));
    expect(put.status, put.text).toBe(200);
    await waitFor('the uploaded certificate to serve', async () => ((await served('www.site.test'))?.includes('www.site.test') ? true : undefined));
    await pebble.addA('site.test', '127.0.0.1');
    const before = pebble.orders();
    expect(await handshake('site.test')).toBe(false);
    // An order would be at the CA and done within a few seconds.
    await sleep(6_000);
    expect(pebble.orders()).toBe(before);
    expect(await served('www.site.test')).toMatch(/www\.site\.test/);
  }, 90_000);

  it("a name that is the entry name of an operator's certificate the store refuses for now (not yet valid) orders nothing", async () => {
    // A renewal tool wrote it ahead of its start: it is refused (not_yet_valid) until then, so nothing serves the name.
    const leaf = await issueForPublicKey(lab.ca, lab.keys.ec.spki, {
      commonName: 'soon.test',
      dnsNames: ['soon.test'],
      notBefore: new Date(Date.now() + 86_400_000),
      notAfter: new Date(Date.now() + 30 * 86_400_000),
    });
    const pem = `${leaf.certPem}\n${lab.ca.certPem}`;
    const file = join(proxy.storeDir, 'soon.test.pem');
    writeFileSync(`${file}.tmp`, pem);
    renameSync(`${file}.tmp`, file);
    await waitFor('the entry to be refused', async () => {
      const listed = JSON.parse((await proxy.admin('GET', '/certs')).text) as { refused: { name: string; reason: string }[] };
      return listed.refused.find((c) => c.name === 'soon.test')?.reason === 'not_yet_valid' ? true : undefined;
    });
    await pebble.addA('soon.test', '127.0.0.1');
    const before = pebble.orders();
    expect(await handshake('soon.test')).toBe(false);
    // An order would be at the CA and done within a few seconds; its chain replaced the operator's entry.
    await sleep(6_000);
    expect(pebble.orders()).toBe(before);
    expect(readFileSync(file, 'utf8')).toBe(pem);
  }, 90_000);

  it('a state file that cannot be written: the on-demand order fails, the primary keeps running', async () => {
    // The state file is written to a temp file, then renamed over it: a directory in its place makes every write fail
    // (EISDIR), as a full disk would. The file read at start is put back afterwards.
    const file = join(lab.dir, 'state', 'acme', 'state.json');
    const aside = `${file}.aside`;
    const kept = existsSync(file);
    if (kept) renameSync(file, aside);
    mkdirSync(file);
    try {
      await pebble.addA('www.full.test', '127.0.0.1');
      expect(await handshake('www.full.test')).toBe(false);
      await sleep(4_000);
      expect(() => process.kill(proxy.pid, 0)).not.toThrow();
      expect((await proxy.admin('GET', '/certs')).status).toBe(200);
      expect(await served('www.site.test')).toMatch(/www\.site\.test/);
    } finally {
      rmSync(file, { recursive: true, force: true });
      if (kept) renameSync(aside, file);
    }
  }, 60_000);
});
