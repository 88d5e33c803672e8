import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { runCli } from './helpers/basics.js';
import { freePort, type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type Issued, issueCa, issueForPublicKey } from './helpers/pki.js';

// Hostile and broken store files under `keyedge proxy` (2 workers), seen by
// real TLS clients: what serves must stay what served, and a name no
// certificate can be served for must not take anyone's handshakes.

let lab: KeylessLab;
let proxy: ClusterProxy;
let root: string;
let padded: Issued;
let wide: Issued;
let linked: Issued;
let early: Issued;
let tagged: Issued;
let purpose: Issued;
let outside: string;
let intermediates: string;

interface Answer {
  readonly serial?: string;
  readonly error?: string;
}

/** One handshake for `servername`, whatever the certificate says: its leaf's serial (lower-case), or the error. */
function handshake(servername: string): Promise<Answer> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername, ca: root, checkServerIdentity: () => undefined });
    socket.setTimeout(10_000, () => socket.destroy(new Error('timeout')));
    socket.once('secureConnect', () => {
      resolve({ serial: socket.getPeerCertificate().serialNumber.toLowerCase() });
      socket.destroy();
    });
    socket.once('error', (err) => resolve({ error: err.message }));
  });
}

interface Listed {
  readonly certificates: readonly { readonly name: string; readonly serial: string; readonly refused: { readonly message: string } | null }[];
}

async function listed(name: string): Promise<Listed['certificates'][number] | undefined> {
  const { text } = await proxy.admin('GET', '/certs');
  return (JSON.parse(text) as Listed).certificates.find((c) => c.name === name);
}

/** The leaf and the lab's CA: a leaf alone is refused as an incomplete chain. */
function chainOf(leaf: Issued): string {
  return `${leaf.certPem}\n${lab.ca.certPem}\n`;
}

/** `content` made `<store>/<name>.pem` in one rename, as a renewal tool writes it. */
function replace(name: string, content: string): void {
  const temp = join(proxy.storeDir, `.${name}.tmp`);
  writeFileSync(temp, content);
  renameSync(temp, join(proxy.storeDir, `${name}.pem`));
}

beforeAll(async () => {
  lab = await startKeylessLab();
  root = readFileSync(lab.caFile, 'utf8');
  const leaf = (dnsNames: string[]): Promise<Issued> => issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: dnsNames[0]!, dnsNames });
  padded = await leaf(['padded.lab.test']);
  // A SAN over a whole top-level domain (RFC 6125 §7.2), as a misissued or self-made certificate may carry.
  wide = await leaf(['wide.lab.test', '*.test']);
  linked = await leaf(['linked.lab.test']);
  early = await leaf(['early.lab.test']);
  tagged = await leaf(['tagged.lab.test']);
  purpose = await leaf(['purpose.lab.test']);
  // A renewal tool's directory outside the store, linked from it.
  outside = join(lab.dir, 'live', 'linked');
  mkdirSync(outside, { recursive: true });
  writeFileSync(join(outside, 'fullchain.pem'), chainOf(linked));
  execFileSync('mkfifo', [join(outside, 'fifo.pem')]);
  // certStore.intermediates, re-read at every reload: an intermediate no chain here needs.
  intermediates = join(lab.dir, 'intermediates');
  mkdirSync(intermediates, { recursive: true });
  writeFileSync(join(intermediates, 'spare.pem'), (await issueCa(lab.ca, 'Spare Intermediate')).certPem);
  proxy = await startClusterProxy(lab, 'cert-hostile', (p) => {
    writeFileSync(join(p.storeDir, 'padded.pem'), chainOf(padded));
    writeFileSync(join(p.storeDir, 'wide.pem'), chainOf(wide));
    symlinkSync(join(outside, 'fullchain.pem'), join(p.storeDir, 'linked.pem'));
    writeFileSync(join(p.storeDir, 'early.pem'), chainOf(early));
    writeFileSync(join(p.storeDir, 'tagged.pem'), chainOf(tagged));
    writeFileSync(join(p.storeDir, 'tagged.json'), JSON.stringify({ names: ['tagged.lab.test'] }));
    writeFileSync(join(p.storeDir, 'purpose.pem'), chainOf(purpose));
    return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600, intermediates } });
  });
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('store files no chain should come from', () => {
  it('refuses a chain file of megabytes by its size, unread, and keeps serving the previous chain', async () => {
    expect((await handshake('padded.lab.test')).serial).toBe(padded.cert.serialNumber.toLowerCase());
    const next = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'padded.lab.test', dnsNames: ['padded.lab.test'] });
    // A valid chain, then 2 MiB of text between and after the blocks (PEM parsers skip it).
    const junk = `${'x'.repeat(1023)}\n`.repeat(1024);
    replace('padded', `${junk}${chainOf(next)}${junk}`);
    const refused = await waitFor('the padded chain to be refused', async () => (await listed('padded'))?.refused ?? undefined, 15_000);
    expect(refused.message).toMatch(/padded\.pem\): the chain file is 2\d{6} bytes; a chain file holds at most 1048576/);
    expect((await handshake('padded.lab.test')).serial).toBe(padded.cert.serialNumber.toLowerCase());
  });
});

describe('a store file (chain or metadata) linked to something that is not a file', () => {
  it.each([
    ['chain', 'the directory of the chain file', () => outside, /linked\.pem\): the chain is not a file but a directory/],
    ['chain', 'a FIFO (which would block whoever opened it)', () => join(outside, 'fifo.pem'), /linked\.pem\): the chain is not a file but a special file/],
    [
      'metadata',
      'a FIFO (whose open would hold every reload until a writer came)',
      () => join(outside, 'fifo.pem'),
      /tagged\.json\): the metadata is not a file but a special/,
    ],
    ['metadata', '/dev/zero (whose read would never end)', () => '/dev/zero', /tagged\.json\): the metadata is not a file but a special file/],
  ])('is refused, naming it, and the chain it served keeps serving: the %s linked to %s', async (file, _case, target, message) => {
    const [name, leaf, path] = file === 'chain' ? ['linked', linked, 'linked.pem'] : ['tagged', tagged, 'tagged.json'];
    expect((await handshake(`${name}.lab.test`)).serial).toBe(leaf.cert.serialNumber.toLowerCase());
    // Atomically, as `ln -sfn` does: a new link renamed over the old one.
    const temp = join(proxy.storeDir, `.${name}.tmp`);
    symlinkSync(target(), temp);
    renameSync(temp, join(proxy.storeDir, path));
    // The admin API answers from the primary that reloads: a reload held by an open or a read would time this out.
    const refused = await waitFor(
      'the link to be refused',
      async () => {
        const { refused } = (await listed(name)) ?? {};
        return message.test(refused?.message ?? '') ? refused : undefined;
      },
      15_000,
    );
    expect(refused?.message).toMatch(new RegExp(`^certificate '${name}'`));
    expect((await handshake(`${name}.lab.test`)).serial).toBe(leaf.cert.serialNumber.toLowerCase());
  });
});

describe('a renewal whose leaf clients refuse as a server certificate', () => {
  it.each([
    [
      'a client certificate (extended key usage clientAuth only)',
      { extendedKeyUsages: ['1.3.6.1.5.5.7.3.2'] },
      /extended key usage \(1\.3\.6\.1\.5\.5\.7\.3\.2\) does not include TLS server authentication/,
    ],
    ['a CA certificate issued by the CA', { leafIsCa: true }, /the leaf "CN=purpose\.lab\.test" is a CA certificate/],
  ])('is refused (usage), naming it, and the previous leaf keeps serving: %s', async (_case, extra, message) => {
    expect((await handshake('purpose.lab.test')).serial).toBe(purpose.cert.serialNumber.toLowerCase());
    const next = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'purpose.lab.test', dnsNames: ['purpose.lab.test'], ...extra });
    replace('purpose', chainOf(next));
    const refused = await waitFor(
      'the renewal to be refused',
      async () => {
        const { refused } = (await listed('purpose')) ?? {};
        return message.test(refused?.message ?? '') ? refused : undefined;
      },
      15_000,
    );
    expect(refused?.message).toMatch(/^certificate 'purpose' \(.*purpose\.pem\)/);
    expect((await handshake('purpose.lab.test')).serial).toBe(purpose.cert.serialNumber.toLowerCase());
  });
});

describe('an intermediates file linked to something that is not a file', () => {
  it.each([
    ['a FIFO (whose open would hold this reload and every one after it)', () => join(outside, 'fifo.pem')],
    ['/dev/zero (whose read would never end)', () => '/dev/zero'],
  ])('refuses the reload naming it, and everything keeps serving: %s', async (_case, target) => {
    const link = join(intermediates, 'linked.pem');
    symlinkSync(target(), link);
    try {
      const answer = await proxy.admin('POST', '/reload');
      expect(answer.status).toBe(409);
      expect(answer.text).toContain(`certStore.intermediates: ${link} is not a file but a special file`);
      expect((await handshake('wide.lab.test')).serial).toBe(wide.cert.serialNumber.toLowerCase());
    } finally {
      unlinkSync(link);
    }
    expect((await proxy.admin('POST', '/reload')).status).toBe(200);
  });
});

describe('a renewal refused only for now', () => {
  it('serves a renewal dated a moment ahead of the clock once it is valid, without a change to its file', async () => {
    expect((await handshake('early.lab.test')).serial).toBe(early.cert.serialNumber.toLowerCase());
    // A CA whose clock runs a few seconds ahead of ours (RFC 5280 §4.1.2.5: not valid before notBefore).
    const validFrom = Date.now() + 4_000;
    const next = await issueForPublicKey(lab.ca, lab.keys.ec.spki, {
      commonName: 'early.lab.test',
      dnsNames: ['early.lab.test'],
      notBefore: new Date(validFrom),
      notAfter: new Date(validFrom + 86_400_000),
    });
    replace('early', chainOf(next));
    const refused = await waitFor('the renewal to be refused', async () => (await listed('early'))?.refused ?? undefined, 15_000);
    expect(refused.message).toMatch(/the leaf is not valid before/);
    expect((await handshake('early.lab.test')).serial).toBe(early.cert.serialNumber.toLowerCase());
    // Once valid, the next full pass serves it, though the file has not changed since: here the pass a change to the
    // config file makes (the periodic rescan's, an hour away in this config).
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, validFrom - Date.now()) + 500));
    writeFileSync(proxy.configFile, readFileSync(proxy.configFile));
    await waitFor(
      'the renewal to serve',
      async () => ((await handshake('early.lab.test')).serial === next.cert.serialNumber.toLowerCase() ? true : undefined),
      10_000,
    );
    expect((await listed('early'))?.refused).toBeNull();
  }, 60_000);
});

describe('names no client could be served for', () => {
  it('serves a certificate for its DNS names, never for a wildcard over a top-level domain', async () => {
    expect((await handshake('wide.lab.test')).serial).toBe(wide.cert.serialNumber.toLowerCase());
    expect((await listed('wide'))?.refused).toBeNull();
    // No certificate covers it: the unrecognized_name alert (RFC 6066 §3), as for any unknown name.
    const answer = await handshake('victim.test');
    expect(answer.serial).toBeUndefined();
    expect(answer.error).toMatch(/unrecognized name/i);
  });
});

describe('a default certificate refused at start', () => {
  it('stops the start naming the certificate and why it was refused, not as missing', async () => {
    const expired = await issueForPublicKey(lab.ca, lab.keys.ec.spki, {
      commonName: 'main.lab.test',
      dnsNames: ['main.lab.test'],
      notBefore: new Date(Date.now() - 3 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    // Ports nothing listens on: the start must stop before it binds them.
    const dir = join(lab.dir, 'cert-hostile-default');
    const storeDir = join(dir, 'certs');
    mkdirSync(storeDir, { recursive: true });
    writeFileSync(join(storeDir, 'main.pem'), chainOf(expired));
    const ports = { port: await freePort(), adminPort: await freePort(), storeDir, tokenFile: join(dir, 'admin.token') };
    writeFileSync(ports.tokenFile, 'test-admin-token-0123456789\n', { mode: 0o600 });
    const configFile = join(dir, 'proxy.json');
    writeFileSync(configFile, JSON.stringify(storeProxyConfig(lab, ports, { sni: { default: 'main' } })));
    const { code, stdout, stderr } = await runCli(['proxy', '--config', configFile]);
    expect(code).toBe(1);
    expect(stdout + stderr).toMatch(/sni\.default.*names certificate 'main', which was refused: .*main\.pem\): the leaf expired at/);
  }, 60_000);
});
