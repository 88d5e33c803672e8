import { spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  linkSync,
  lstatSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../keyserver/shared/errors.js';
import { certCommand } from '../proxy/certs/cli.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { PID_SPACE } from '../proxy/certs/store-files.js';
import { runInProcess } from './helpers/cli-in-process.js';
import { CLI, runCli } from './helpers/basics.js';
import { createCa, issue, issueForPublicKey, type Issued, writePem } from './helpers/pki.js';
import { startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// `keyedge cert` (the built CLI) against a real key server holding an EC and
// an RSA key: every change is validated there before the store is touched.
// A set-up step, and a check repeated for another action once the built CLI
// made it, run the same command in this process (`here`), without a node
// start each (cli-in-process.ts).

const DAY = 86_400_000;
let lab: KeylessLab;
let config: string;
let storeDir: string;
let ecChain: string;
let rsaChain: string;
let ecLeaf: Issued;
let rsaLeaf: Issued;

interface ListRow {
  name: string;
  status: string;
  serial?: string;
  notAfter?: string;
  keyId?: string;
  names?: string[];
  issuer?: string;
  error?: string;
}

function cert(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCli(['cert', ...args, '--config', config]);
}

/** `cert`, in this process: the same command and its output, without a node start. */
function here(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runInProcess(['cert', ...args, '--config', config]);
}

async function listJson(run: typeof cert = cert): Promise<ListRow[]> {
  const result = await run('list', '--json');
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as ListRow[];
}

function snapshot(name: string): Record<string, Buffer> {
  const files = readdirSync(storeDir).filter((f) => f.startsWith(`${name}.`));
  return Object.fromEntries(files.map((f) => [f, readFileSync(join(storeDir, f))]));
}

beforeAll(async () => {
  lab = await startKeylessLab();
  storeDir = join(lab.dir, 'store');
  config = join(lab.dir, 'proxy.json');
  writeFileSync(
    config,
    JSON.stringify({
      stateDir: './state',
      keyserver: { socket: lab.socket },
      certStore: { dir: storeDir },
      admin: null,
      certificates: [{ name: 'configured', chain: 'configured.pem' }],
    }),
  );
  const ec = await lab.certificate('shop-ec', lab.keys.ec, ['shop.lab.test', 'www.shop.lab.test']);
  const rsa = await lab.certificate('shop-rsa', lab.keys.rsa, ['shop.lab.test', 'www.shop.lab.test']);
  ecChain = ec.file;
  ecLeaf = ec.leaf;
  rsaChain = rsa.file;
  rsaLeaf = rsa.leaf;
});
afterAll(async () => {
  await lab?.close();
});

describe('keyedge cert', () => {
  it('makes no store directory unless --create-store says so (add only)', async () => {
    const refused = await cert('add', 'shop', '--chain', ecChain, '--names', 'shop.lab.test');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`keyedge: KEYEDGE_ERR_CERT_STORE_GONE: the certificate store ${storeDir} is not there`);
    expect(refused.stderr).toContain('start the proxy once (it makes it) or add --create-store');
    expect(existsSync(storeDir)).toBe(false);
    const misused = await cert('replace', 'shop', '--chain', ecChain, '--create-store');
    expect(misused.code).toBe(2);
    expect(misused.stderr).toContain('--create-store is for `keyedge cert add` only');
    // The other actions ignored it (list, show, remove: "the store is not there"; issue, renew: it went unread). The
    // command itself, in this process (the same check as above, without a node start each).
    for (const args of [['list'], ['show', 'shop'], ['remove', 'shop'], ['issue', '--domain', 'shop.lab.test'], ['renew', 'shop']]) {
      const refusedHere = await certCommand.run([...args, '--create-store', '--config', config]).catch((err: unknown) => err);
      expect(refusedHere, args[0]).toBeInstanceOf(UsageError);
      expect((refusedHere as UsageError).message).toBe('--create-store is for `keyedge cert add` only');
    }
    expect(existsSync(storeDir)).toBe(false);
  });

  it('adds a chain after checking it against the key server', async () => {
    const result = await cert('add', 'shop', '--chain', ecChain, '--names', 'shop.lab.test', '--create-store');
    expect(result.code, result.stderr).toBe(0);
    expect(statSync(storeDir).mode & 0o777).toBe(0o755);
    expect(result.stdout).toContain(`added certificate 'shop': wrote ${storeDir}/shop.pem and shop.json`);
    expect(result.stdout).toContain(`notAfter:  ${ecLeaf.cert.notAfter.toISOString()}`);
    expect(result.stdout).toContain(`key id:    ${lab.keys.ec.keyId}\n`);
    const meta = JSON.parse(readFileSync(join(storeDir, 'shop.json'), 'utf8')) as Record<string, unknown>;
    expect(meta).toEqual({ names: ['shop.lab.test'], addedAt: expect.any(String) });
    // Leaf first, then the lab CA: certificates only.
    const pem = readFileSync(join(storeDir, 'shop.pem'), 'utf8');
    expect(pem.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(2);
    expect(pem.startsWith(ecLeaf.certPem.trim())).toBe(true);

    const again = await cert('add', 'shop', '--chain', ecChain);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^keyedge: KEYEDGE_ERR_CERT_EXISTS: certificate 'shop' is already in the store/);
  });

  it('replaces it with a chain for the other key type, keeping its names, and lists it', async () => {
    const before = (await listJson(here)).find((r) => r.name === 'shop');
    expect(before).toMatchObject({ status: 'ok', keyId: lab.keys.ec.keyId, names: ['shop.lab.test'] });
    const result = await cert('replace', 'shop', '--chain', rsaChain);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`replaced certificate 'shop'`);
    expect(result.stdout).toContain(`was:       serial ${ecLeaf.cert.serialNumber}`);
    expect(result.stdout).toContain(`notAfter:  ${rsaLeaf.cert.notAfter.toISOString()}`);
    const after = (await listJson()).find((r) => r.name === 'shop');
    expect(after).toEqual({
      name: 'shop',
      status: 'ok',
      serial: rsaLeaf.cert.serialNumber,
      issuer: 'CN=keyedge lab CA',
      notBefore: rsaLeaf.cert.notBefore.toISOString(),
      notAfter: rsaLeaf.cert.notAfter.toISOString(),
      keyId: lab.keys.rsa.keyId,
      pinned: false,
      names: ['shop.lab.test'],
      addedAt: expect.any(String),
      replacedAt: expect.any(String),
      chain: [
        { subject: 'CN=shop.lab.test', issuer: 'CN=keyedge lab CA', notAfter: rsaLeaf.cert.notAfter.toISOString() },
        { subject: 'CN=keyedge lab CA', issuer: 'CN=keyedge lab CA', notAfter: lab.ca.cert.notAfter.toISOString() },
      ],
      warnings: [expect.stringContaining('ends with the self-signed root'), expect.stringContaining('the leaf expires in')],
    });
    const table = await cert('list');
    expect(table.stdout).toMatch(/^NAME\s+STATUS\s+NOT AFTER\s+SERIAL\s+KEY ID\s+NAMES\s+ISSUER\n/);
    expect(table.stdout).toContain(lab.keys.rsa.keyId);
  });

  it('shows an entry: its chain, warnings and the key server verdict', async () => {
    const result = await cert('show', 'shop');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`certificate 'shop' (${storeDir}/shop.pem)`);
    expect(result.stdout).toContain('status:    ok');
    expect(result.stdout).toContain('keyserver: holds the key');
    expect(result.stdout).toMatch(/0 {2}CN=shop\.lab\.test {2}\(issuer CN=keyedge lab CA, notAfter /);
    expect(result.stdout).toMatch(/1 {2}CN=keyedge lab CA {2}\(issuer CN=keyedge lab CA/);
    expect(result.stdout).toMatch(/warning: the leaf expires in \d+ hours/);
  });

  it('shows an entry the key server could not be asked about with status 3, and says so (it was status 0, "status: ok")', async () => {
    const away = join(lab.dir, 'proxy-keyserver-away.json');
    const settings = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
    writeFileSync(away, JSON.stringify({ ...settings, keyserver: { socket: join(lab.dir, 'no-keyserver.sock') } }));
    const text = await runCli(['cert', 'show', 'shop', '--config', away]);
    expect(text.code, text.stderr).toBe(3);
    expect(text.stdout).toContain('status:    ok by every rule checked here; its key not checked (see keyserver)');
    expect(text.stdout).toMatch(/keyserver: not checked: /);
    const json = await runInProcess(['cert', 'show', 'shop', '--json', '--config', away]);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stdout)).toMatchObject({ status: 'ok', keyserverVerdict: 'not_checked' });
    const checked = await here('show', 'shop', '--json');
    expect(checked.code).toBe(0);
    expect(JSON.parse(checked.stdout)).toMatchObject({ status: 'ok', keyserverVerdict: 'holds_key' });
  });

  it('refuses an expired renewal and leaves the entry byte-identical', async () => {
    const before = snapshot('shop');
    expect(Object.keys(before).sort()).toEqual(['shop.json', 'shop.pem']);
    const expired = await issueForPublicKey(lab.ca, lab.keys.rsa.spki, {
      commonName: 'shop.lab.test',
      dnsNames: ['shop.lab.test'],
      notBefore: new Date(Date.now() - 3 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const file = writePem(lab.dir, 'expired-chain', `${expired.certPem}\n${lab.ca.certPem}`);
    const result = await cert('replace', 'shop', '--chain', file);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(new RegExp(`^keyedge: KEYEDGE_ERR_CERTIFICATE: expired: certificate 'shop' \\(${file}\\): the leaf expired at `));
    expect(result.stdout).toBe('');
    expect(snapshot('shop')).toEqual(before);
    expect(readdirSync(storeDir).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('refuses a private key pasted into the chain without printing it, and writes nothing', async () => {
    const file = writePem(lab.dir, 'with-key', `${ecLeaf.certPem}\n${lab.ca.keyPem}\n${lab.ca.certPem}`);
    const result = await cert('add', 'pasted', '--chain', file);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`keyedge: KEYEDGE_ERR_CERTIFICATE: private_key: certificate 'pasted' (${file}): block 2 is a "PRIVATE KEY"`);
    const body = lab.ca.keyPem.split('\n').filter((l) => l !== '' && !l.startsWith('-----'));
    for (const line of body) {
      expect(result.stderr).not.toContain(line);
      expect(result.stdout).not.toContain(line);
    }
    expect(existsSync(join(storeDir, 'pasted.pem'))).toBe(false);
    expect(existsSync(join(storeDir, 'pasted.json'))).toBe(false);
  });

  it('reads a chain to 1 MiB at most: a large file or an endless device (/dev/zero) is refused unread past that, a pipe is read', async () => {
    const big = join(lab.dir, 'big-chain.pem');
    writeFileSync(big, Buffer.alloc(50 * 1024 * 1024, 0x41));
    const large = await cert('add', 'large', '--chain', big, '--create-store');
    expect(large.code).toBe(1);
    expect(large.stderr).toBe(`keyedge: KEYEDGE_ERR_CERTIFICATE: parse: certificate 'large' (${big}): cannot read the chain: more than 1048576 bytes\n`);
    // Read whole, /dev/zero never ended: the command grew by some 90 MB a second and never answered.
    const endless = await cert('add', 'endless', '--chain', '/dev/zero');
    expect(endless.code).toBe(1);
    expect(endless.stderr).toContain("certificate 'endless' (/dev/zero): cannot read the chain: more than 1048576 bytes");
    expect(existsSync(join(storeDir, 'large.pem')) || existsSync(join(storeDir, 'endless.pem'))).toBe(false);
    // A pipe (`--chain <(…)`, /dev/stdin) stays readable.
    // Through a shell's pipe (spawnSync's `input` is a socket, which /dev/stdin cannot be opened on: ENXIO).
    const piped = spawnSync(
      'bash',
      ['-c', 'cat "$1" | exec "$2" "$3" cert add piped --chain /dev/stdin --config "$4"', 'bash', ecChain, process.execPath, CLI, config],
      {
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    expect(piped.status, piped.stderr).toBe(0);
    expect((await cert('remove', 'piped')).code).toBe(0);
  }, 120_000);

  it('refuses a chain whose key the key server does not hold', async () => {
    const ca = await createCa('stranger CA');
    const stranger = await issue(ca, { commonName: 'shop.lab.test', dnsNames: ['shop.lab.test'], keyAlgorithm: 'ec-p256' });
    const file = writePem(lab.dir, 'stranger', `${stranger.certPem}\n${ca.certPem}`);
    const result = await cert('add', 'stranger', '--chain', file);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^keyedge: KEYEDGE_ERR_CERTIFICATE: key_unknown: certificate 'stranger' .*the key server holds no key with id [0-9a-f]{64}/);
    expect(existsSync(join(storeDir, 'stranger.pem'))).toBe(false);
  });

  it('keeps a pinned key id across renewals unless --key moves it', async () => {
    const added = await cert('add', 'pinned', '--chain', ecChain, '--key', lab.keys.ec.keyId);
    expect(added.code, added.stderr).toBe(0);
    expect(added.stdout).toContain(`key id:    ${lab.keys.ec.keyId} (pinned)`);
    const before = snapshot('pinned');
    const refused = await cert('replace', 'pinned', '--chain', rsaChain);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^keyedge: KEYEDGE_ERR_CERTIFICATE: key_mismatch: certificate 'pinned' .*the entry pins key /);
    expect(snapshot('pinned')).toEqual(before);
    const moved = await cert('replace', 'pinned', '--chain', rsaChain, '--key', lab.keys.rsa.keyId.toUpperCase());
    expect(moved.code, moved.stderr).toBe(0);
    const meta = JSON.parse(readFileSync(join(storeDir, 'pinned.json'), 'utf8')) as { keyId: string; addedAt: string; replacedAt: string };
    expect(meta.keyId).toBe(lab.keys.rsa.keyId);
    expect(meta.replacedAt >= meta.addedAt).toBe(true);
    // The same refusal as above, for an add.
    const wrongPin = await here('add', 'wrong-pin', '--chain', ecChain, '--key', lab.keys.rsa.keyId);
    expect(wrongPin.code).toBe(1);
    expect(wrongPin.stderr).toContain('key_mismatch');
  });

  it('refuses to add to, replace in or remove from a store directory renamed away, and does not make it again', async () => {
    const away = `${storeDir}.away`;
    renameSync(storeDir, away);
    try {
      // The built CLI for one action (the first case saw its add refused so); the same refusal for the other two here.
      for (const [run, args] of [
        [here, ['add', 'fresh', '--chain', ecChain]],
        [here, ['replace', 'pinned', '--chain', rsaChain]],
        [cert, ['remove', 'pinned']],
      ] as const) {
        const result = await run(...args);
        expect(result.code, args.join(' ')).toBe(1);
        expect(result.stderr).toContain(`keyedge: KEYEDGE_ERR_CERT_STORE_GONE: the certificate store ${storeDir} is not there`);
        expect(result.stdout).toBe('');
        // Not made again holding one entry, which the running proxy would take for the whole store.
        expect(existsSync(storeDir)).toBe(false);
      }
    } finally {
      renameSync(away, storeDir);
    }
    expect(existsSync(join(storeDir, 'pinned.pem'))).toBe(true);
  });

  it("removes what a write killed midway left of the entry it writes next, not a running writer's", async () => {
    const deadPid = spawnSync(process.execPath, ['-e', '']).pid!;
    const dead = [`.pinned.json.${deadPid}.${PID_SPACE}.0123456789ab.aside`, `.pinned.pem.${deadPid}.${PID_SPACE}.0123456789ab.tmp`];
    linkSync(join(storeDir, 'pinned.json'), join(storeDir, dead[0]!));
    writeFileSync(join(storeDir, dead[1]!), 'half a chain');
    // This process is running: its side files may be a write in progress. Another entry's are left for its own write.
    const kept = [`.pinned.pem.${process.pid}.${PID_SPACE}.0123456789ab.tmp`, `.other.json.${deadPid}.${PID_SPACE}.0123456789ab.aside`];
    for (const file of kept) writeFileSync(join(storeDir, file), '{}\n');
    const result = await cert('replace', 'pinned', '--chain', rsaChain);
    expect(result.code, result.stderr).toBe(0);
    expect(
      readdirSync(storeDir)
        .filter((f) => f.startsWith('.'))
        .sort(),
    ).toEqual([...kept].sort());
    for (const file of kept) unlinkSync(join(storeDir, file));
  });

  it.skipIf(process.getuid?.() !== 0 || spawnSync('unshare', ['--version']).status !== 0)(
    "leaves a running writer's side file alone when that writer's pids are of another pid namespace (a container sharing the store)",
    async () => {
      expect((await here('add', 'nsw', '--chain', ecChain, '--create-store')).code).toBe(0);
      // The writer: the product's own keepAside(), the first step of a write, in a pid namespace of its own, at a pid no
      // process here has; it stays running, its write in progress. Looked up here, its pid names nothing.
      const writer = `echo 77776 > /proc/sys/kernel/ns_last_pid; node -e "import('${join(process.cwd(), 'dist/proxy/certs/store-files.js')}').then((m) => { console.log(m.keepAside('${storeDir}', '${join(storeDir, 'nsw.json')}')); setTimeout(() => {}, 20000); })" & wait`;
      const child = spawn('unshare', ['--pid', '--fork', '--kill-child', '--mount-proc', 'bash', '-c', writer], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        const aside = await new Promise<string>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
        expect(aside).toContain('.nsw.json.77777.');
        const result = await cert('replace', 'nsw', '--chain', ecChain);
        expect(result.code, result.stderr).toBe(0);
        expect(existsSync(aside)).toBe(true);
        unlinkSync(aside);
        expect((await here('remove', 'nsw')).code).toBe(0);
      } finally {
        child.kill('SIGKILL');
      }
    },
  );

  it('lists an entry that expired while stored, with its facts', async () => {
    const expired = await issueForPublicKey(lab.ca, lab.keys.ec.spki, {
      commonName: 'old.lab.test',
      dnsNames: ['old.lab.test'],
      notBefore: new Date(Date.now() - 3 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    new CertificateStore(storeDir).write('old', `${expired.certPem}\n`, {});
    const row = (await listJson()).find((r) => r.name === 'old');
    expect(row).toMatchObject({
      status: 'expired',
      serial: expired.cert.serialNumber,
      keyId: lab.keys.ec.keyId,
      error: expect.stringContaining('the leaf expired at'),
    });
    const show = await cert('show', 'old');
    expect(show.code).toBe(1);
    expect(show.stdout).toContain('status:    refused (expired)');
  });

  it('removes an entry, and says when there is none', async () => {
    const result = await cert('remove', 'shop');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`removed certificate 'shop'`);
    expect(existsSync(join(storeDir, 'shop.pem'))).toBe(false);
    expect(existsSync(join(storeDir, 'shop.json'))).toBe(false);
    expect((await listJson(here)).map((r) => r.name)).not.toContain('shop');
    // The built CLI for one action, the same refusal for the other two here.
    for (const [run, args] of [
      [cert, ['remove', 'shop']],
      [here, ['replace', 'shop', '--chain', ecChain]],
      [here, ['show', 'shop']],
    ] as const) {
      const missing = await run(...args);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/^keyedge: KEYEDGE_ERR_CERT_NOT_FOUND: no certificate 'shop' in the store/);
    }
  });

  it("refuses to add or replace an entry linked to another tool's file (certbot's live/), dangling or not, and writes nothing", async () => {
    const live = join(lab.dir, 'live-fullchain.pem');
    copyFileSync(ecChain, live);
    symlinkSync(live, join(storeDir, 'certbot.pem'));
    symlinkSync(join(lab.dir, 'gone-fullchain.pem'), join(storeDir, 'dangling.pem'));
    // The built CLI for the first, the same refusal of an add here.
    for (const [run, action, name, target] of [
      [cert, 'replace', 'certbot', live],
      [here, 'add', 'dangling', join(lab.dir, 'gone-fullchain.pem')],
    ] as const) {
      const result = await run(action, name, '--chain', rsaChain);
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr).toContain(
        `keyedge: KEYEDGE_ERR_CERT_LINKED: certificate '${name}' is kept by another tool: its chain ${join(storeDir, `${name}.pem`)} is a symbolic link to ${target}`,
      );
      expect(result.stdout).toBe('');
      expect(lstatSync(join(storeDir, `${name}.pem`)).isSymbolicLink()).toBe(true);
      expect(existsSync(join(storeDir, `${name}.json`))).toBe(false);
    }
    expect(readFileSync(live)).toEqual(readFileSync(ecChain));
    // remove deletes the link, not what it points at.
    expect((await here('remove', 'certbot')).code).toBe(0);
    expect(readFileSync(live)).toEqual(readFileSync(ecChain));
    unlinkSync(join(storeDir, 'dangling.pem'));
  });

  it('cert issue with an admin token file of two lines: names the file, never prints the token', async () => {
    // fetch refused the header ("Bearer …" is an invalid header value) with an error quoting it, and the command printed it.
    const tokenFile = join(lab.dir, 'two-line.token');
    writeFileSync(tokenFile, 'old-token-Q1w2e3\nnew-token-R4t5y6\n', { mode: 0o600 });
    const withAdmin = join(lab.dir, 'proxy-admin.json');
    writeFileSync(withAdmin, JSON.stringify({ stateDir: './state', keyserver: { socket: lab.socket }, admin: { host: '127.0.0.1', port: 9, tokenFile } }));
    const result = await runCli(['cert', 'issue', '--domain', 'shop.lab.test', '--config', withAdmin]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`KEYEDGE_ERR_SETUP: the admin token file ${tokenFile} does not hold one bearer token`);
    expect(`${result.stdout}${result.stderr}`).not.toMatch(/Q1w2e3|R4t5y6/);
  });

  it('cert issue and renew refused by the proxy for the admin token: said as that (the token file, the answer), not as an ACME failure', async () => {
    // The admin API's 401 and 403 are plain text: the command said "KEYEDGE_ERR_ACME: the admin API answered 401", sending
    // the operator to the CA.
    const proxy = await startClusterProxy(lab, 'token-refused', (p) => storeProxyConfig(lab, p, { workers: 1 }));
    try {
      const tokenFile = join(lab.dir, 'stale.token');
      writeFileSync(tokenFile, 'stale-token-Z9x8c7\n', { mode: 0o600 });
      const withAdmin = join(lab.dir, 'proxy-stale-token.json');
      writeFileSync(
        withAdmin,
        JSON.stringify({ stateDir: './state', keyserver: { socket: lab.socket }, admin: { host: '127.0.0.1', port: proxy.adminPort, tokenFile } }),
      );
      for (const args of [
        ['cert', 'issue', '--domain', 'shop.lab.test'],
        ['cert', 'renew', 'shop'],
      ]) {
        const result = await runCli([...args, '--config', withAdmin]);
        expect(result.code).toBe(1);
        expect(result.stderr).toBe(
          `keyedge: KEYEDGE_ERR_SETUP: the proxy's admin API at 127.0.0.1:${proxy.adminPort} refused the admin token read from ${tokenFile}: 401 wrong bearer token\n`,
        );
        expect(`${result.stdout}${result.stderr}`).not.toContain('Z9x8c7');
      }
    } finally {
      await proxy.stop();
    }
  }, 120_000);

  it('cert issue and renew with the proxy down: the admin URL tried and that the proxy is not reachable there, not "fetch failed"', async () => {
    // A port nothing listens on: bound, then let go.
    const port = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const tokenFile = join(lab.dir, 'down.token');
    writeFileSync(tokenFile, 'down-token-P0o9i8\n', { mode: 0o600 });
    const down = join(lab.dir, 'proxy-down.json');
    writeFileSync(down, JSON.stringify({ stateDir: './state', keyserver: { socket: lab.socket }, admin: { host: '127.0.0.1', port, tokenFile } }));
    for (const [args, path] of [
      [['cert', 'issue', '--domain', 'shop.lab.test'], '/acme/issue'],
      [['cert', 'renew', 'shop'], '/acme/renew/shop'],
    ] as const) {
      const result = await runCli([...args, '--config', down]);
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        `keyedge: KEYEDGE_ERR_SETUP: the proxy is not reachable at its admin API http://127.0.0.1:${port}${path} (ECONNREFUSED): ` +
          `is it running, with the admin.host and admin.port of ${down}?\n`,
      );
      expect(`${result.stdout}${result.stderr}`).not.toContain('P0o9i8');
    }
  });

  it('list and show on a store directory that is not there: KEYEDGE_ERR_CERT_STORE_GONE, not an empty store', async () => {
    // `cert list --json` printed [] with status 0: a check of what expires soon, its config naming a store renamed away
    // or mistyped, found nothing to warn of.
    const gone = join(lab.dir, 'proxy-store-gone.json');
    const dirGone = join(lab.dir, 'no-such-store');
    writeFileSync(gone, JSON.stringify({ stateDir: './state', keyserver: { socket: lab.socket }, certStore: { dir: dirGone }, admin: null }));
    for (const args of [['list'], ['list', '--json'], ['show', 'shop'], ['show', 'shop', '--json']]) {
      const result = await runInProcess(['cert', ...args, '--config', gone]);
      expect(result.code, args.join(' ')).toBe(1);
      expect(result.stdout).toBe('');
      expect(result.stderr).toMatch(
        new RegExp(`^keyedge: KEYEDGE_ERR_CERT_STORE_GONE: the certificate store ${dirGone} is not there \\(or is not a directory\\)`),
      );
    }
  });

  it("an entry whose name starts with '-' (the store allows it) is named after --: add, show, replace, remove", async () => {
    // `cert remove -old` was "Unknown option '-o'" and `cert remove -- -old` "Unexpected argument": no way to name it.
    const added = await here('add', '--', '-old', '--chain', ecChain, '--create-store');
    expect(added.code, added.stderr).toBe(0);
    expect(added.stdout).toContain("added certificate '-old'");
    const shown = await here('show', '--', '-old', '--json');
    expect(shown.code, shown.stderr).toBe(0);
    expect((JSON.parse(shown.stdout) as { name: string }).name).toBe('-old');
    expect((await here('replace', '--', '-old', '--chain', rsaChain)).code).toBe(0);
    const removed = await here('remove', '--', '-old');
    expect(removed.code, removed.stderr).toBe(0);
    expect(existsSync(join(storeDir, '-old.pem'))).toBe(false);
    // Without --, a name that looks like a flag is still a usage error, not taken for a name.
    expect((await here('remove', '-old')).code).toBe(2);
  });

  it('refuses bad usage', async () => {
    // Usage errors (exit 2, as the first case saw the built CLI give) and a bad entry name, here.
    const noName = await here('add', '--chain', ecChain);
    expect(noName.code).toBe(2);
    expect(noName.stderr).toContain('missing NAME');
    const badKey = await here('add', 'x', '--chain', ecChain, '--key', 'lab-ec');
    expect(badKey.code).toBe(2);
    expect(badKey.stderr).toContain('--key must be a key id');
    const badName = await here('add', '../x', '--chain', ecChain);
    expect(badName.code).toBe(1);
    expect(badName.stderr).toMatch(/KEYEDGE_ERR_CERT_STORE: '..\/x' is not a certificate name/);
    const configured = await cert('add', 'configured', '--chain', ecChain);
    expect(configured.code).toBe(1);
    expect(configured.stderr).toMatch(/KEYEDGE_ERR_CERT_EXISTS: certificate 'configured' is configured in the proxy config file/);
    expect(existsSync(join(storeDir, 'configured.pem'))).toBe(false);
    const help = await runCli(['cert', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('replace NAME --chain FILE');
    expect((await runCli(['--help'])).stdout).toContain('  cert ');
  });
});
