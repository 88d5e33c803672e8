import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { Registry } from 'prom-client';
import { ProxyMetrics } from '../proxy/metrics.js';
import { RECORD_BUDGET_BYTES } from '../proxy/tls/record-flood.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { curl, nodeGet, sClient } from './helpers/clients.js';
import { ecAndRsaServing, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Keyless TLS termination through a real key server, with real clients:
// versions, suites, signature schemes, SNI, HSTS, tickets.
let lab: KeylessLab;
let proxy: RunningWorker;
let port: number;
let ca: string;
const log = createLogger('proxy-test', 'silent');

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const config: ProxyConfig = lab.proxyConfig({
    ...(await ecAndRsaServing(lab)),
    listen: [
      { host: '127.0.0.1', port: 0, profile: 'intermediate' },
      { host: '127.0.0.1', port: 0, profile: 'modern' },
    ],
  });
  proxy = await startProxyWorker(config, { log });
  port = proxy.ports[0]!;
});
afterAll(async () => {
  await proxy?.close();
  await lab?.close();
});

describe('versions and key types', () => {
  it.each([
    ['ec.lab.test', '-tls1_3', 'TLSv1.3', 'ECDSA'],
    ['ec.lab.test', '-tls1_2', 'TLSv1.2', 'ECDSA'],
    ['rsa.lab.test', '-tls1_3', 'TLSv1.3', 'RSA-PSS'],
    ['rsa.lab.test', '-tls1_2', 'TLSv1.2', 'RSA'],
  ])('%s over %s with openssl s_client', async (host, version, protocol, signatureType) => {
    const result = await sClient(port, host, lab.caFile, [version]);
    expect(result.stdout).toContain('HTTP/1.1 200 OK');
    expect(result.stdout).toContain(`Protocol  : ${protocol}`);
    expect(result.stdout + result.stderr).toContain(`Peer signature type: ${signatureType}`);
    expect(result.stdout).toMatch(/strict-transport-security: max-age=63072000/i);
  });

  it.each([
    ['rsa_pss_rsae_sha256', 'RSA-PSS'],
    ['rsa_pss_rsae_sha512', 'RSA-PSS'],
    ['RSA+SHA256', 'RSA'],
    ['RSA+SHA384', 'RSA'],
  ])('RSA over TLS 1.2 with -sigalgs %s signs as %s', async (sigalgs, type) => {
    const result = await sClient(port, 'rsa.lab.test', lab.caFile, ['-tls1_2', '-sigalgs', sigalgs]);
    expect(result.stdout).toContain('HTTP/1.1 200 OK');
    expect(result.stdout + result.stderr).toContain(`Peer signature type: ${type}`);
  });

  it.each(['ECDSA+SHA256', 'ECDSA+SHA384', 'ECDSA+SHA512'])('ECDSA over TLS 1.2 with -sigalgs %s', async (sigalgs) => {
    const result = await sClient(port, 'ec.lab.test', lab.caFile, ['-tls1_2', '-sigalgs', sigalgs]);
    expect(result.stdout).toContain('HTTP/1.1 200 OK');
  });

  it('curl and node:tls reach the origin with HSTS on the answer', async () => {
    const viaCurl = await curl(port, 'ec.lab.test', lab.caFile);
    expect(viaCurl.code, viaCurl.stderr).toBe(0);
    expect(viaCurl.stdout).toMatch(/^HTTP\/1.1 200/);
    expect(viaCurl.stdout).toMatch(/strict-transport-security: max-age=63072000\r\n/i);
    expect(viaCurl.stdout).toContain('"host":"ec.lab.test');
    const viaNode = await nodeGet(port, 'rsa.lab.test', ca);
    expect(viaNode).toMatchObject({ ok: true, protocol: 'TLSv1.3' });
  });
});

describe('Host and certificate', () => {
  it('answers 421 to a Host the connection certificate does not cover', async () => {
    // SNI rsa.lab.test, then a request for another tenant's name.
    const fronted = await curl(port, 'rsa.lab.test', lab.caFile, ['-H', 'Host: ec.lab.test']);
    expect(fronted.stdout).toMatch(/^HTTP\/1.1 421/);
    expect(fronted.stdout).toMatch(/x-keyedge-error: KEYEDGE_HTTP_MISDIRECTED/i);
    expect(fronted.stdout).toMatch(/strict-transport-security/i);
  });

  it('answers 404 to a covered Host with no domain', async () => {
    const result = await curl(port, 'x.wild.lab.test', lab.caFile);
    expect(result.stdout).toMatch(/^HTTP\/1.1 404/);
    expect(result.stdout).toMatch(/x-keyedge-error: KEYEDGE_HTTP_UNKNOWN_HOST/i);
  });
});

describe('the modern profile', () => {
  it('takes TLS 1.3 and refuses TLS 1.2', async () => {
    const modern = proxy.ports[1]!;
    expect((await sClient(modern, 'rsa.lab.test', lab.caFile, ['-tls1_3'])).stdout).toContain('HTTP/1.1 200 OK');
    const old = await sClient(modern, 'rsa.lab.test', lab.caFile, ['-tls1_2']);
    expect(old.stdout).not.toContain('HTTP/1.1 200');
    expect(old.code).not.toBe(0);
  });
});

describe('refused protocol versions and suites', () => {
  it.each([
    ['TLS 1.0', ['-tls1', '-cipher', 'DEFAULT@SECLEVEL=0']],
    ['TLS 1.1', ['-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0']],
    ['static RSA key exchange', ['-tls1_2', '-cipher', 'AES128-GCM-SHA256']],
    ['CBC suites', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES256-SHA']],
    ['finite-field DHE', ['-tls1_2', '-cipher', 'DHE-RSA-AES128-GCM-SHA256']],
  ])('%s is refused', async (_name, args) => {
    const result = await sClient(port, 'rsa.lab.test', lab.caFile, args);
    expect(result.stdout).not.toContain('HTTP/1.1 200');
    expect(result.code).not.toBe(0);
  });
});

describe('SNI', () => {
  it.each([
    ['ec.lab.test', 'DNS:ec.lab.test, DNS:*.wild.lab.test'],
    ['a.wild.lab.test', 'DNS:ec.lab.test, DNS:*.wild.lab.test'],
    ['rsa.lab.test', 'DNS:rsa.lab.test'],
  ])('%s gets the certificate covering it', async (name, san) => {
    const result = await nodeGet(port, name, ca, { checkServerIdentity: () => undefined });
    expect(result.ok).toBe(true);
    expect(result.subjectAltName).toBe(san);
  });

  it('a client without SNI gets the default certificate', async () => {
    const result = await sClient(port, undefined, lab.caFile, [], 'ec.lab.test');
    expect(result.stdout).toContain('HTTP/1.1 200 OK');
    expect(result.stdout).toMatch(/subject=CN ?= ?ec\.lab\.test/);
  });

  it('an unknown name gets the unrecognized_name alert before any certificate', async () => {
    const result = await sClient(port, 'unknown.example', lab.caFile);
    expect(result.stdout).not.toContain('HTTP/1.1');
    expect(result.stdout).not.toMatch(/BEGIN CERTIFICATE|subject=/);
    expect(result.stderr).toMatch(/unrecognized name|alert number 112/i);
    const viaNode = await nodeGet(port, 'unknown.example', ca);
    expect(viaNode.ok).toBe(false);
    expect(viaNode.error).toMatch(/unrecognized name|alert number 112/i);
  });
});

/** Runs `use` against a second worker in this process, with the lab's defaults (HTTP/2 offered) and `overrides`. */
async function withSecondWorker(overrides: Record<string, unknown>, use: (worker: RunningWorker, metrics: ProxyMetrics) => Promise<void>): Promise<void> {
  // Its metrics go to a registry of their own.
  const metrics = new ProxyMetrics(() => proxy.keySource.stats(), new Registry());
  const worker = await startProxyWorker(lab.proxyConfig(overrides), { log, metrics });
  try {
    await use(worker, metrics);
  } finally {
    await worker.close();
    metrics.stop();
  }
}

describe('SNI with onUnknown "default"', () => {
  it('serves the default certificate to a name nothing covers', async () => {
    const ec = await lab.certificate('ec-default', lab.keys.ec, ['ec.lab.test']);
    await withSecondWorker({ certificates: [{ name: 'ec', chain: ec.file }], sni: { default: 'ec', onUnknown: 'default' } }, async (lenient) => {
      const result = await nodeGet(lenient.ports[0]!, 'unknown.example', ca, { checkServerIdentity: () => undefined });
      expect(result).toMatchObject({ ok: true, subjectAltName: 'DNS:ec.lab.test' });
    });
  });
});

describe('start-up refusals', () => {
  it('refuses an sni.default that names neither a config certificate nor a store entry', async () => {
    const ec = await lab.certificate('ec-nodefault', lab.keys.ec, ['ec.lab.test']);
    const config = lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      sni: { default: 'absent' },
      certStore: { dir: join(lab.dir, 'empty-store') },
    });
    await expect(startProxyWorker(config, { log, metrics: new ProxyMetrics(() => proxy.keySource.stats(), new Registry()) })).rejects.toMatchObject({
      code: 'KEYEDGE_ERR_CONFIG',
      message: expect.stringMatching(/sni\.default.*'absent'.*neither/),
    });
  });

  it('refuses to start when a config certificate is unfit, naming it and why', async () => {
    const expired = await lab.certificate('ec-expired', lab.keys.ec, ['ec.lab.test'], { notAfter: new Date(Date.now() - 60_000) });
    const config = lab.proxyConfig({ certificates: [{ name: 'old', chain: expired.file }], certStore: { dir: join(lab.dir, 'empty-store') } });
    await expect(startProxyWorker(config, { log, metrics: new ProxyMetrics(() => proxy.keySource.stats(), new Registry()) })).rejects.toMatchObject({
      code: 'KEYEDGE_ERR_CONFIG',
      message: expect.stringMatching(/certificate 'old'.*expired/),
    });
  });
});

describe('keyless signing', () => {
  it('costs exactly one key-server sign per full handshake and none per resumed one', async () => {
    const before = await lab.signCount();
    const first = await nodeGet(port, 'ec.lab.test', ca);
    expect(first).toMatchObject({ ok: true, resumed: false });
    expect(await lab.signCount()).toBe(before + 1);
    expect(first.session).toBeDefined();
    for (let i = 0; i < 3; i++) {
      const again = await nodeGet(port, 'ec.lab.test', ca, { session: first.session! });
      expect(again).toMatchObject({ ok: true, resumed: true });
    }
    expect(await lab.signCount()).toBe(before + 1);
    const rsa = await nodeGet(port, 'rsa.lab.test', ca, { maxVersion: 'TLSv1.2' });
    expect(rsa).toMatchObject({ ok: true, protocol: 'TLSv1.2', resumed: false });
    expect(await lab.signCount()).toBe(before + 2);
  });

  it('the proxy config names no private key', () => {
    const config = lab.proxyConfig({});
    expect(JSON.stringify(config)).not.toMatch(/"key"\s*:/);
  });
});

describe('session resumption and the certificate', () => {
  // RFC 6066 §3: a server MUST NOT resume a session for a different server name; one ticket ring serves every certificate.
  it.each(['TLSv1.2', 'TLSv1.3'] as const)('over %s, a session made with one certificate resumes for it, never for another name', async (version) => {
    const first = await nodeGet(port, 'ec.lab.test', ca, { maxVersion: version });
    expect(first).toMatchObject({ ok: true, resumed: false });
    expect(await nodeGet(port, 'ec.lab.test', ca, { maxVersion: version, session: first.session! })).toMatchObject({ ok: true, resumed: true });
    // Another name of the same certificate may resume (RFC 8446 §4.6.1): it does on Node 20's OpenSSL 3.0; the OpenSSL 3.5
    // of Node 22 and 24 resumes only for the session's own name. Either way the connection is served.
    expect(await nodeGet(port, 'a.wild.lab.test', ca, { maxVersion: version, session: first.session! })).toMatchObject({ ok: true });
    const other = await nodeGet(port, 'rsa.lab.test', ca, { maxVersion: version, session: first.session! });
    expect(other).toMatchObject({ ok: true, resumed: false, subjectAltName: 'DNS:rsa.lab.test' });
  });
});

/**
 * openssl s_client sending KeyUpdate (update_requested, its `K` command) as fast as it takes them, and nothing else, for
 * at most `forMs`: how many it sent and whether the proxy closed the connection meanwhile. Each `K` line must reach
 * s_client in a read of its own (it looks at a read's first byte), hence one write per turn of the event loop.
 */
function keyUpdateFlood(port: number, host: string, caFile: string, forMs: number): Promise<{ updates: number; closedByProxy: boolean; ms: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const args = ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', host, '-CAfile', caFile, '-tls1_3', '-quiet', '-no_ign_eof'];
    const client = spawn('openssl', args, {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let updates = 0;
    let stopping = false;
    client.stderr.on('data', (chunk: Buffer) => (updates += chunk.toString().split('KEYUPDATE').length - 1));
    client.stdin.on('error', () => undefined);
    const next = (): void => {
      if (stopping || client.exitCode !== null) return;
      if (Date.now() - started > forMs) {
        stopping = true;
        return void client.kill();
      }
      client.stdin.write('K\n', () => setImmediate(next));
    };
    // The handshake first: a K before it is read as data.
    setTimeout(next, 1000);
    client.once('exit', () => resolve({ updates, closedByProxy: !stopping, ms: Date.now() - started }));
  });
}

describe('a TLS 1.3 client that sends KeyUpdate in a loop (RFC 8446 §4.6.3)', () => {
  it('has its connection closed once its credit of records without data is spent, while other clients are served', async () => {
    const ec = await lab.certificate('ec-flood', lab.keys.ec, ['ec.lab.test']);
    // A connection that sends no request is closed after limits.headerTimeoutMs: here long past the flood's 20 s, so only the budget can cut it.
    await withSecondWorker({ certificates: [{ name: 'ec', chain: ec.file }], limits: { headerTimeoutMs: 60_000 } }, async (worker, metrics) => {
      const flood = keyUpdateFlood(worker.ports[0]!, 'ec.lab.test', lab.caFile, 20_000);
      // A normal client in the midst of it.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const other = await nodeGet(worker.ports[0]!, 'ec.lab.test', ca);
      expect(other.ok).toBe(true);
      expect(other.body).toMatch(/^HTTP\/1\.1 200 /);
      const { updates, closedByProxy, ms } = await flood;
      expect(closedByProxy, `${updates} KeyUpdates in ${ms} ms, the connection still open`).toBe(true);
      // Cut once its credit was spent (about 27 bytes a KeyUpdate), not by anything before.
      expect(updates).toBeGreaterThan(RECORD_BUDGET_BYTES / 27 / 2);
      expect((await metrics.recordFloods.get()).values[0]?.value).toBe(1);
    });
  }, 40_000);
});
