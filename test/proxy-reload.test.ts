import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { runCli, sleep } from './helpers/keyserver.js';
import { type ClusterProxy, startClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { createCa, issue, issueForPublicKey } from './helpers/pki.js';

const DAY_MS = 86_400_000;

// One reload path, four triggers (store file, SIGHUP, admin API, config
// file), against `keyedge proxy` with two workers.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let originB: http.Server;
let originBPort: number;
let baseConfig: (ports: { port: number; adminPort: number; storeDir: string; tokenFile: string }) => Record<string, unknown>;
let ports: { port: number; adminPort: number; storeDir: string; tokenFile: string };
let configChain: string;

async function servedSerial(name: string): Promise<string | undefined> {
  const result = await nodeGet(proxy.port, name, ca);
  return result.ok ? result.serial?.toLowerCase() : undefined;
}

function storeWrite(name: string, pem: string): void {
  // As a renewal tool should: a temp file in the same directory, then rename.
  const temp = join(proxy.storeDir, `.${name}.tmp`);
  writeFileSync(temp, pem);
  renameSync(temp, join(proxy.storeDir, `${name}.pem`));
}

function chainOf(leafPem: string): string {
  return `${leafPem}\n${lab.ca.certPem}`;
}

async function get(name: string, agent?: https.Agent): Promise<{ status: number; body: string; localPort?: number }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: proxy.port, servername: name, headers: { host: name }, ca, ...(agent === undefined ? { agent: false } : { agent }) },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, localPort: (res.socket as net.Socket | null)?.localPort }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  originB = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('origin-b'));
  await new Promise<void>((resolve) => originB.listen(0, '127.0.0.1', resolve));
  originBPort = (originB.address() as net.AddressInfo).port;
  configChain = (await lab.certificate('config-ec', lab.keys.ec, ['cfg.lab.test'])).file;
  const wildcard = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  baseConfig = (p) => {
    ports = p;
    return {
      stateDir: join(lab.dir, 'state'),
      workers: 2,
      keyserver: { socket: lab.socket },
      listen: [{ host: '127.0.0.1', port: p.port }],
      certificates: [
        { name: 'cfg', chain: configChain },
        { name: 'wild', chain: wildcard.file },
      ],
      domains: [
        { name: 'app.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        { name: 'cfg.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        { name: 'store.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
      ],
      admin: { host: '127.0.0.1', port: p.adminPort, tokenFile: p.tokenFile },
      // Only the watch, SIGHUP and the admin API trigger reloads here: the rescan is out of the way.
      certStore: { dir: p.storeDir, rescanSeconds: 3600 },
      log: { level: 'info' },
      shutdownGraceMs: 3000,
    };
  };
  proxy = await startClusterProxy(lab, 'reload', baseConfig);
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await new Promise((resolve) => originB?.close(resolve));
  await lab?.close();
});

describe('routing changes at runtime', () => {
  it('adds a domain and moves an origin while a keep-alive client keeps sending', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const seen: { status: number; body: string; localPort?: number }[] = [];
    let running = true;
    const client = (async () => {
      while (running) {
        seen.push(await get('app.lab.test', agent));
        await sleep(10);
      }
    })();
    await waitFor('a few requests', () => (seen.length >= 5 ? true : undefined));
    expect((await get('new.lab.test')).status).toBe(404);

    const config = baseConfig(ports);
    proxy.writeConfig({
      ...config,
      domains: [
        { name: 'app.lab.test', origin: `http://127.0.0.1:${originBPort}` },
        { name: 'new.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        ...(config.domains as object[]).slice(1),
      ],
    });
    await waitFor('the new domain', async () => ((await get('new.lab.test')).status === 200 ? true : undefined));
    await waitFor('the moved origin', () => (seen.at(-1)?.body === 'origin-b' ? true : undefined));
    running = false;
    await client;
    agent.destroy();
    expect(seen.every((r) => r.status === 200)).toBe(true);
    // One connection throughout: the reload dropped nothing.
    expect(new Set(seen.map((r) => r.localPort)).size).toBe(1);
    expect(seen.some((r) => r.body !== 'origin-b')).toBe(true);
    proxy.writeConfig(baseConfig(ports));
    await waitFor('the original routing', async () => ((await get('new.lab.test')).status === 404 ? true : undefined));
  });

  it('refuses a bad routing config with the reason and keeps serving the old one', async () => {
    const before = proxy.lines.length;
    proxy.writeConfig({ ...baseConfig(ports), domains: [{ name: 'Bad Name!', origin: 'ftp://x' }] });
    const refused = await waitFor('the refusal', () =>
      proxy.lines.slice(before).find((l) => l.msg === 'reload refused; the running configuration and certificates keep serving'),
    );
    expect(refused.code).toBe('KEYEDGE_ERR_CONFIG');
    expect(JSON.stringify(refused)).toContain('domains[0]');
    expect((await get('app.lab.test')).status).toBe(200);
    const answer = await proxy.admin('POST', '/reload');
    expect(answer.status).toBe(409);
    expect(answer.text).toContain('domains[0].name');
    // Valid JSON and schema, but an origin CA file that cannot be read: refused in the primary, before any worker.
    const config = baseConfig(ports);
    proxy.writeConfig({
      ...config,
      domains: [
        { name: 'app.lab.test', origin: 'https://127.0.0.1:1', originTls: { ca: join(lab.dir, 'missing-ca.pem') } },
        ...(config.domains as object[]).slice(1),
      ],
    });
    await waitFor('the CA refusal', async () => {
      const reload = await proxy.admin('POST', '/reload');
      return reload.status === 409 && reload.text.includes('originTls.ca') ? true : undefined;
    });
    expect((await get('app.lab.test')).status).toBe(200);
    proxy.writeConfig(baseConfig(ports));
    await waitFor('the good config back', async () => ((await proxy.admin('POST', '/reload')).status === 200 ? true : undefined));
  });
});

describe('certificate reload', () => {
  it('serves a certificate dropped into the store, and its replacement, to new connections', async () => {
    const first = await lab.certificate('store-1', lab.keys.ec, ['store.lab.test']);
    storeWrite('store', chainOf(first.leaf.certPem));
    await waitFor('the store entry', async () => ((await servedSerial('store.lab.test')) === first.leaf.cert.serialNumber ? true : undefined), 5000);
    const second = await lab.certificate('store-2', lab.keys.rsa, ['store.lab.test']);
    storeWrite('store', chainOf(second.leaf.certPem));
    await waitFor('the replacement', async () => ((await servedSerial('store.lab.test')) === second.leaf.cert.serialNumber ? true : undefined), 5000);
    // The primary records a reload once every worker has applied it, a moment after the first serves it.
    const listed = await waitFor('the listing', async () => {
      const { certificates } = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as {
        certificates: { name: string; serial: string; keyId: string }[];
      };
      const entry = certificates.find((c) => c.name === 'store');
      return entry?.serial === second.leaf.cert.serialNumber ? entry : undefined;
    });
    expect(listed.keyId).toBe(lab.keys.rsa.keyId);
  });

  it('serves what `keyedge cert replace` puts in the store', async () => {
    const renewed = await lab.certificate('cli-1', lab.keys.ec, ['store.lab.test']);
    const result = await runCli(['cert', 'replace', 'store', '--chain', renewed.file, '--config', proxy.configFile]);
    expect(result.code, result.stderr).toBe(0);
    await waitFor('the replaced certificate', async () => ((await servedSerial('store.lab.test')) === renewed.leaf.cert.serialNumber ? true : undefined), 5000);
  });

  it('reloads a config certificate on SIGHUP', async () => {
    const renewed = await lab.certificate('config-ec-2', lab.keys.rsa, ['cfg.lab.test']);
    expect(await servedSerial('cfg.lab.test')).not.toBe(renewed.leaf.cert.serialNumber);
    writeFileSync(configChain, readFileSync(renewed.file));
    // The config's chain files are watched too (proxy-cert-watch.test.ts): the signal's reload or the watch's serves it.
    process.kill(proxy.pid, 'SIGHUP');
    await waitFor(
      'the renewed config certificate',
      async () => ((await servedSerial('cfg.lab.test')) === renewed.leaf.cert.serialNumber ? true : undefined),
      5000,
    );
  });

  it('takes a chain through the admin API only with the token', async () => {
    const next = await lab.certificate('api-1', lab.keys.ec, ['store.lab.test']);
    const pem = chainOf(next.leaf.certPem);
    expect((await proxy.admin('PUT', '/certs/store', pem, null)).status).toBe(401);
    expect((await proxy.admin('PUT', '/certs/store', pem, 'wrong-token')).status).toBe(401);
    expect((await proxy.admin('POST', '/certs/reload', undefined, null)).status).toBe(401);
    expect(await servedSerial('store.lab.test')).not.toBe(next.leaf.cert.serialNumber);
    const answer = await proxy.admin('PUT', '/certs/store', pem);
    expect(answer.status).toBe(200);
    expect(await servedSerial('store.lab.test')).toBe(next.leaf.cert.serialNumber);
    // Stored leaf first, as validated.
    expect(new X509Certificate(readFileSync(join(proxy.storeDir, 'store.pem'))).serialNumber.toLowerCase()).toBe(next.leaf.cert.serialNumber);
    expect((await proxy.admin('POST', '/certs/reload')).status).toBe(200);
  });

  it('refuses each unfit chain through the admin API with its reason, and the old certificate keeps serving', async () => {
    // A new entry pins the names it serves: a renewal must cover them.
    const pinned = await lab.certificate('pinned-1', lab.keys.ec, ['pinned.lab.test']);
    expect((await proxy.admin('PUT', '/certs/pinned', chainOf(pinned.leaf.certPem))).status).toBe(200);
    const serving = { store: await servedSerial('store.lab.test'), pinned: await servedSerial('pinned.lab.test') };
    expect(serving.pinned).toBe(pinned.leaf.cert.serialNumber);

    const forKey = (options: Partial<Parameters<typeof issueForPublicKey>[2]>) =>
      issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'store.lab.test', dnsNames: ['store.lab.test'], ...options });
    const expired = await forKey({ notBefore: new Date(Date.now() - 2 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) });
    const notYet = await forKey({ notBefore: new Date(Date.now() + DAY_MS), notAfter: new Date(Date.now() + 2 * DAY_MS) });
    const sha1 = await forKey({ signatureHash: 'SHA-1' });
    const otherNames = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'elsewhere.lab.test', dnsNames: ['elsewhere.lab.test'] });
    const rsa1024 = await issue(lab.ca, { commonName: 'store.lab.test', dnsNames: ['store.lab.test'], keyAlgorithm: 'rsa-1024' });
    const stranger = await issue(lab.ca, { commonName: 'store.lab.test', dnsNames: ['store.lab.test'], keyAlgorithm: 'ec-p256' });
    const otherCa = await createCa('another CA');
    const good = await forKey({});
    const cases: { what: string; entry: string; pem: string; reason: string }[] = [
      { what: 'expired', entry: 'store', pem: chainOf(expired.certPem), reason: 'expired' },
      { what: 'not yet valid', entry: 'store', pem: chainOf(notYet.certPem), reason: 'not_yet_valid' },
      { what: 'SANs not covering the entry', entry: 'pinned', pem: chainOf(otherNames.certPem), reason: 'names' },
      { what: 'broken chain (issuer missing, a stranger CA instead)', entry: 'store', pem: `${good.certPem}\n${otherCa.certPem}`, reason: 'chain' },
      { what: 'RSA-1024', entry: 'store', pem: chainOf(rsa1024.certPem), reason: 'weak_key' },
      { what: 'SHA-1 signature', entry: 'store', pem: chainOf(sha1.certPem), reason: 'weak_signature' },
      { what: 'public key not in the token', entry: 'store', pem: chainOf(stranger.certPem), reason: 'key_unknown' },
      { what: 'truncated PEM', entry: 'store', pem: chainOf(expired.certPem).slice(0, 300), reason: 'parse' },
      { what: 'a private key pasted in', entry: 'store', pem: `${chainOf(stranger.certPem)}\n${stranger.keyPem}`, reason: 'private_key' },
    ];
    const before = proxy.lines.length;
    for (const { what, entry, pem, reason } of cases) {
      const answer = await proxy.admin('PUT', `/certs/${entry}`, pem);
      expect(answer.status, `${what}: ${answer.text}`).toBe(422);
      expect(JSON.parse(answer.text), what).toMatchObject({ error: { code: 'KEYEDGE_ERR_CERTIFICATE', reason } });
    }
    expect(await servedSerial('store.lab.test')).toBe(serving.store);
    expect(await servedSerial('pinned.lab.test')).toBe(serving.pinned);
    // The pasted key never reaches a log line.
    const body = stranger.keyPem
      .split('\n')
      .filter((l) => !l.startsWith('-----'))
      .join('');
    expect(body.length).toBeGreaterThan(40);
    expect(JSON.stringify(proxy.lines.slice(before))).not.toContain(body.slice(0, 40));

    // A chain in the wrong order is put right, not refused.
    const renewed = await forKey({});
    const reversed = await proxy.admin('PUT', '/certs/store', `${lab.ca.certPem}\n${renewed.certPem}`);
    expect(reversed.status, reversed.text).toBe(200);
    expect(await servedSerial('store.lab.test')).toBe(renewed.cert.serialNumber);
  });

  it('refuses a bad file in the store with a log line, and the old certificate keeps serving', async () => {
    const serving = await servedSerial('store.lab.test');
    const before = proxy.lines.length;
    storeWrite('store', '-----BEGIN CERTIFICATE-----\nMIIB\n');
    const refused = await waitFor('the refusal', () =>
      proxy.lines.slice(before).find((l) => l.certificate === 'store' && l.code === 'KEYEDGE_ERR_CERTIFICATE'),
    );
    expect(refused).toMatchObject({ reason: 'parse', level: 50 });
    expect(await servedSerial('store.lab.test')).toBe(serving);
    const listed = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as {
      certificates: { name: string; serial: string; refused: { reason: string } | null }[];
    };
    expect(listed.certificates.find((c) => c.name === 'store')).toMatchObject({ serial: serving, refused: { reason: 'parse' } });
    const good = await lab.certificate('store-good', lab.keys.ec, ['store.lab.test']);
    storeWrite('store', chainOf(good.leaf.certPem));
    await waitFor('the good file', async () => ((await servedSerial('store.lab.test')) === good.leaf.cert.serialNumber ? true : undefined), 5000);
  });

  it('counts reloads and exposes expiry in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    expect(text).toMatch(/keyedge_proxy_reloads_total\{trigger="admin",result="ok"\} [1-9]/);
    expect(text).toMatch(/keyedge_proxy_certificate_expiry_seconds\{certificate="store"\} \d+/);
    expect(text).toMatch(/keyedge_proxy_certificates\{state="serving"\} 4/);
  });
});

describe('a worker that dies', () => {
  it('is replaced by one serving the current certificates', async () => {
    const serving = await servedSerial('store.lab.test');
    const workers = execFileSync('pgrep', ['-P', String(proxy.pid)])
      .toString()
      .trim()
      .split('\n')
      .map(Number);
    process.kill(workers[0]!, 'SIGKILL');
    await waitFor('a replacement worker', () => (proxy.lines.some((l) => l.msg === 'proxy worker died; starting a replacement') ? true : undefined));
    await sleep(1500);
    for (let i = 0; i < 10; i++) expect(await servedSerial('store.lab.test')).toBe(serving);
  });
});
