import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI } from './helpers/basics.js';
import { createCa, issueForPublicKey, type TestCa } from './helpers/pki.js';

// `keyedge key delete` (the built CLI) against a SoftHSM2 token in a temporary directory, next to a certificate store
// whose entries are chains issued for the token's keys: a key a stored certificate uses is not destroyed unless --force
// says so (deleting it failed every handshake for that certificate at its next sign).

let dir: string;
let ksConfig: string;
let ca: TestCa;

function keyedge(cwd: string, ...args: string[]): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** A key made in the token: its key id and SPKI. */
function generate(label: string): { keyId: string; spki: Buffer } {
  const made = keyedge(dir, 'key', 'generate', '--config', ksConfig, '--type', 'ec-p256', '--label', label, '--json');
  expect(made.status, made.stderr).toBe(0);
  const out = JSON.parse(made.stdout) as { keyId: string; spki: string };
  return { keyId: out.keyId, spki: Buffer.from(out.spki, 'base64') };
}

/** A store entry's chain as certbot's fullchain.pem holds it: the leaf for `spki`, then the CA. */
async function chainFor(spki: Buffer, name: string): Promise<string> {
  const leaf = await issueForPublicKey(ca, spki, { commonName: name, dnsNames: [name] });
  return `${leaf.certPem}\n${ca.certPem}\n`;
}

function labels(): string[] {
  const list = keyedge(dir, 'key', 'list', '--config', ksConfig, '--json');
  expect(list.status, list.stderr).toBe(0);
  return (JSON.parse(list.stdout) as { label: string }[]).map((k) => k.label);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-key-delete-'));
  ksConfig = join(dir, 'keyserver.json');
  writeFileSync(ksConfig, JSON.stringify({ stateDir: './state', admin: null }));
  ca = await createCa('key delete test CA');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('keyedge key delete', () => {
  it("refuses a key a certificate in the store uses, naming the key and the entries, unless --force; the default store is the embedded config's ./var/certs", async () => {
    const shop = generate('shop-key');
    const other = generate('other-key');
    // The embedded default proxy config's store, as `keyedge cert` without --config uses it: ./var/certs.
    const store = join(dir, 'var', 'certs');
    mkdirSync(store, { recursive: true });
    writeFileSync(join(store, 'shop.pem'), await chainFor(shop.spki, 'shop.example'));
    // Named by its pinned key id only (its chain is another key's: refused, and the pinned one keeps serving).
    writeFileSync(join(store, 'shop-old.pem'), await chainFor(other.spki, 'old.shop.example'));
    writeFileSync(join(store, 'shop-old.json'), JSON.stringify({ keyId: shop.keyId }));
    writeFileSync(join(store, 'other.pem'), await chainFor(other.spki, 'other.example'));

    const refused = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', 'shop-key');
    expect(refused.status, refused.stdout).toBe(1);
    expect(refused.stderr).toBe(
      `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'shop-key' (key id ${shop.keyId}) is used by 2 certificates of the certificate store ${store}: ` +
        `'shop' (${store}/shop.pem), 'shop-old' (${store}/shop-old.json: pinned); deleting it fails every handshake for them at their next sign. ` +
        'Nothing was deleted: remove or replace them first (keyedge cert), or give --force\n',
    );
    expect(labels()).toContain('shop-key');

    const forced = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', 'shop-key', '--force');
    expect(forced.status, forced.stderr).toBe(0);
    expect(forced.stdout).toContain("deleted ec-p256 key 'shop-key'");
    expect(labels()).not.toContain('shop-key');

    // An entry that cannot be read may use any key, and a node may serve what it was before it broke: refused.
    generate('spare-key');
    writeFileSync(join(store, 'broken.pem'), 'not a certificate\n');
    const unknown = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', 'spare-key');
    expect(unknown.status, unknown.stdout).toBe(1);
    expect(unknown.stderr).toMatch(
      new RegExp(
        `^keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'spare-key' \\(key id [0-9a-f]{64}\\) may be used by a store entry of the certificate store ${store} ` +
          "that could not be read: 'broken' \\([^\\n]+\\); a node may still serve the version it had before, with this key\\. " +
          'Nothing was deleted: repair or remove it first \\(keyedge cert\\), or give --force\\n$',
      ),
    );
    expect(labels()).toContain('spare-key');
    rmSync(join(store, 'broken.pem'));
    const deleted = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', 'spare-key');
    expect(deleted.status, deleted.stderr).toBe(0);
    expect(labels()).not.toContain('spare-key');
  });

  it('checks the store of --proxy-config; a missing one refuses, nothing deleted; no store found without it is said, and the key deleted', async () => {
    const edge = generate('edge-key');
    const store = join(dir, 'edge-store');
    const proxyConfig = join(dir, 'proxy.json');
    // The config's own certificates count too: one for the key, one for another.
    writeFileSync(join(dir, 'configured.pem'), await chainFor(edge.spki, 'configured.example'));
    writeFileSync(join(dir, 'unrelated.pem'), await chainFor(generate('unrelated-key').spki, 'unrelated.example'));
    const certificates = [
      { name: 'configured', chain: 'configured.pem' },
      { name: 'unrelated', chain: 'unrelated.pem' },
    ];
    writeFileSync(proxyConfig, JSON.stringify({ stateDir: './state', admin: null, certStore: { dir: store }, certificates }));

    const gone = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', 'edge-key', '--proxy-config', proxyConfig);
    expect(gone.status).toBe(1);
    expect(gone.stderr).toBe(
      `keyedge: KEYEDGE_ERR_CERT_STORE_GONE: the certificate store ${store} (certStore.dir of ${proxyConfig}) is not there, or is not a directory: ` +
        "cannot tell whether a certificate uses key 'edge-key'. Nothing was deleted: check certStore.dir, or give --force\n",
    );
    expect(labels()).toContain('edge-key');

    mkdirSync(store);
    writeFileSync(join(store, 'edge.pem'), await chainFor(edge.spki, 'edge.example'));
    const used = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', edge.keyId, '--proxy-config', proxyConfig);
    expect(used.status).toBe(1);
    expect(used.stderr).toContain(
      `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'edge-key' (key id ${edge.keyId}) is used by 2 certificates of the config ${proxyConfig} and the certificate store ${store}: ` +
        `'configured' (${join(dir, 'configured.pem')}, in certificates), 'edge' (${store}/edge.pem); `,
    );
    expect(labels()).toContain('edge-key');

    // A key server host: no proxy config named, and no ./var/certs where the command runs. What was looked for is said.
    const elsewhere = join(dir, 'elsewhere');
    mkdirSync(elsewhere);
    const unchecked = keyedge(elsewhere, 'key', 'delete', '--config', ksConfig, '--key', 'edge-key');
    expect(unchecked.status, unchecked.stderr).toBe(0);
    expect(unchecked.stderr).toBe(
      "keyedge warning: no certificate store was checked for a certificate using key 'edge-key': no --proxy-config was given, and the " +
        `embedded default's store ${join(elsewhere, 'var', 'certs')} is not there (give --proxy-config FILE, the proxy's config, to have its store checked)\n`,
    );
    expect(labels()).not.toContain('edge-key');
  });

  it("refuses while a config certificate's chain cannot be read or holds no certificate, naming the file (it was counted as unused)", async () => {
    const kept = generate('unreadable-chain-key');
    const setup = join(dir, 'unreadable');
    mkdirSync(join(setup, 'store'), { recursive: true });
    // A directory where the chain should be: unreadable as another user's 0700 directory is to the deleting user.
    mkdirSync(join(setup, 'chain.pem'));
    writeFileSync(join(setup, 'empty.pem'), 'no certificate here\n');
    const proxyConfig = join(setup, 'proxy.json');
    const certificates = [
      { name: 'hidden', chain: 'chain.pem' },
      { name: 'empty', chain: 'empty.pem' },
    ];
    writeFileSync(proxyConfig, JSON.stringify({ stateDir: './state', admin: null, certStore: { dir: join(setup, 'store') }, certificates }));
    const refused = keyedge(dir, 'key', 'delete', '--config', ksConfig, '--key', 'unreadable-chain-key', '--proxy-config', proxyConfig);
    expect(refused.status, refused.stdout).toBe(1);
    expect(refused.stderr).toContain(
      `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'unreadable-chain-key' (key id ${kept.keyId}) may be used by 2 store entries of the config ${proxyConfig} ` +
        `and the certificate store ${join(setup, 'store')} that could not be read: 'hidden' (${join(setup, 'chain.pem')}, in certificates: EISDIR), ` +
        `'empty' (no certificate could be read from ${join(setup, 'empty.pem')}, in certificates); `,
    );
    expect(labels()).toContain('unreadable-chain-key');
  });

  it("without --proxy-config, looks at ./config/proxy.json where there is one: `npm run up`'s demo certificate is one of its certificates", async () => {
    // The layout `npm run up` makes: config/proxy.json names var/demo/demo-chain.pem, its store var/certs is empty.
    const setup = join(dir, 'setup');
    mkdirSync(join(setup, 'config'), { recursive: true });
    mkdirSync(join(setup, 'var', 'demo'), { recursive: true });
    mkdirSync(join(setup, 'var', 'certs'));
    const demo = generate('demo-ec');
    const chain = join(setup, 'var', 'demo', 'demo-chain.pem');
    writeFileSync(chain, await chainFor(demo.spki, 'demo.localhost'));
    const proxyConfig = { stateDir: '../var', admin: null, certificates: [{ name: 'demo', chain: '../var/demo/demo-chain.pem' }], certStore: { dir: 'certs' } };
    writeFileSync(join(setup, 'config', 'proxy.json'), JSON.stringify(proxyConfig));

    const refused = keyedge(setup, 'key', 'delete', '--config', ksConfig, '--key', 'demo-ec');
    expect(refused.status, refused.stderr).toBe(1);
    expect(refused.stderr).toContain(
      `keyedge: KEYEDGE_ERR_KEY_IN_USE: key 'demo-ec' (key id ${demo.keyId}) is used by 1 certificate of the config ${join(setup, 'config', 'proxy.json')} and the certificate store ${join(setup, 'var', 'certs')}: 'demo' (${chain}, in certificates); `,
    );
    expect(labels()).toContain('demo-ec');
  });

  it('--force and --proxy-config are for delete only: another action with them is a usage error (they were ignored)', () => {
    const generate = keyedge(dir, 'key', 'generate', '--config', ksConfig, '--type', 'ec-p256', '--label', 'forced', '--force');
    expect(generate.status).toBe(2);
    expect(generate.stderr).toBe('keyedge: KEYEDGE_ERR_USAGE: --force is for `keyedge key delete` only\n');
    const list = keyedge(dir, 'key', 'list', '--config', ksConfig, '--proxy-config', ksConfig);
    expect(list.status).toBe(2);
    expect(list.stderr).toBe('keyedge: KEYEDGE_ERR_USAGE: --proxy-config is for `keyedge key delete` only\n');
    expect(labels()).not.toContain('forced');
  });
});
