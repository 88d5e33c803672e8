import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { curl } from './helpers/clients.js';
import { CLI, REPO } from './helpers/keyserver.js';
import { type Pebble, startPebble } from './helpers/pebble.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { freePort, type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// Issue 14, must-show 1 (TLS-ALPN-01, RFC 8737): a real `keyedge proxy` (two
// workers, no plain-HTTP port at all) gets a certificate from a real pebble
// whose validation authority connects to the proxy's HTTPS port offering only
// "acme-tls/1": the challenge certificate is signed through the key server
// with the order's certificate key (in the SoftHSM2 token) and presented by
// the workers over the keyless bridge. The certificate is then served; curl
// trusting pebble's root gets the origin's page; the keys are read back
// through PKCS#11 attributes.
let lab: KeylessLab;
let pebble: Pebble;
let proxy: ClusterProxy;
let keyserverConfig: string;
let httpsPort: number;

function cli(args: readonly string[], timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: REPO, timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr });
    });
  });
}

beforeAll(async () => {
  lab = await startKeylessLab();
  keyserverConfig = join(lab.dir, 'keyserver.json');
  // Pebble's VA needs the HTTPS port before the proxy starts; its HTTP-01 port is one nobody listens on.
  httpsPort = await freePort();
  const unusedHttpPort = await freePort();
  const pebbleDir = join(lab.dir, 'pebble');
  mkdirSync(pebbleDir);
  pebble = await startPebble(pebbleDir, unusedHttpPort, {}, { tlsPort: httpsPort });
  proxy = await startClusterProxy(
    lab,
    'acme-alpn',
    (p) =>
      storeProxyConfig(
        lab,
        { ...p, port: httpsPort },
        {
          domains: [{ name: '*.acme.test', origin: `http://127.0.0.1:${lab.origin.port}` }],
          acme: {
            directory: pebble.directory,
            caBundle: pebble.tlsCaFile,
            contact: ['mailto:ops@acme.test'],
            challenges: ['tls-alpn-01'],
            keyserverConfig,
            orderTimeoutSeconds: 60,
            timeoutMs: 10_000,
          },
        },
      ),
    {},
    90_000,
  );
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await pebble?.stop();
  await lab?.close();
});

describe('ACME issuance against pebble, TLS-ALPN-01', () => {
  it('keyedge cert issue: validated on the HTTPS port, then served; curl trusting pebble’s root gets the page', async () => {
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'alpn.acme.test']);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    expect(issued.stdout).toMatch(/issued alpn\.acme\.test: serving, key id [0-9a-f]{64}/);
    expect(pebble.orders()).toBe(1);

    const got = await curl(httpsPort, 'alpn.acme.test', await pebble.rootFile());
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toContain(`"host":"alpn.acme.test:${httpsPort}"`);

    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; keyId: string; issuer: string }[] };
    const entry = certs.certificates.find((c) => c.name === 'alpn.acme.test');
    expect(entry?.issuer).toMatch(/Pebble/i);

    // The account key and the certificate key (which also signed the challenge certificate): in the token, sensitive, not extractable.
    const listed = await cli(['key', 'list', '--json', '--config', keyserverConfig], 30_000);
    const keys = JSON.parse(listed.stdout) as { keyId: string; label: string; sensitive: boolean; extractable: boolean; type: string }[];
    const account = keys.filter((k) => k.label.startsWith('acme-account-'));
    const certKey = keys.find((k) => k.keyId === entry?.keyId);
    expect(account).toHaveLength(1);
    expect(certKey?.label).toMatch(/^acme-alpn\.acme\.test-/);
    // No other key was made for the challenge.
    expect(keys.filter((k) => k.label.startsWith('acme-'))).toHaveLength(2);
    for (const key of [...account, certKey]) {
      expect(key).toMatchObject({ sensitive: true, extractable: false, type: 'ec-p256' });
    }
  }, 120_000);
});
