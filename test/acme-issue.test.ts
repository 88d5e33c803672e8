import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { curl } from './helpers/clients.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { SAME_USER, SCAN_MEMORY } from './helpers/proc-reader.js';
import type { ClusterProxy } from './helpers/proxy-cluster.js';

// Issue 14, must-show 1 (HTTP-01): a real `keyedge proxy` (two workers) gets a
// certificate from a real pebble through HTTP-01 answered on its own port 80
// listener, with the account key and the certificate key generated in the
// SoftHSM2 token and every JWS and the CSR signed by the key server; the chain
// goes through the store's validation and swap; curl trusting pebble's root
// gets the origin's page. The keys are read back through PKCS#11 attributes.
// The token's PIN comes from a variable given to the proxy: the key children
// get it, the workers do not.
const PIN_VARIABLE = 'KEYEDGE_TEST_ACME_PIN';
/**
 * Run as `node -e WATCH PRIMARY NEEDLE` until SIGTERM: the primary's `keyedge key` children it saw (polling /proc, as a
 * worker of the same user can), and whether the needle was in one's /proc/<pid>/environ while it ran. A process found
 * to be another's child is not read again (no process becomes the primary's child later): reading every process's stat
 * at each poll took a third of a core for the whole issue.
 */
const WATCH = `
const fs = require('node:fs');
const [primary, needle] = process.argv.slice(1);
const want = Buffer.from(needle);
const seen = new Set();
const others = new Set();
let found = false;
const scan = () => {
  for (const pid of fs.readdirSync('/proc')) {
    if (others.has(pid) || !/^[0-9]+$/.test(pid)) continue;
    try {
      const stat = fs.readFileSync('/proc/' + pid + '/stat', 'latin1');
      if (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] !== primary) {
        others.add(pid);
        continue;
      }
      if (!fs.readFileSync('/proc/' + pid + '/cmdline', 'latin1').includes('\\0key\\0')) continue;
      seen.add(pid);
      if (fs.readFileSync('/proc/' + pid + '/environ').includes(want)) found = true;
    } catch {}
  }
};
const timer = setInterval(scan, 15);
process.on('SIGTERM', () => { clearInterval(timer); console.log(JSON.stringify({ seen: seen.size, found })); process.exit(0); });
console.log('watching');
`;

/** Starts WATCH on the primary; `stop()` gives what it saw. */
async function watchKeyChildren(primary: number, needle: string): Promise<{ stop(): Promise<{ seen: number; found: boolean }> }> {
  const watcher = spawn(process.execPath, ['-e', WATCH, String(primary), needle], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  watcher.stdout.setEncoding('utf8');
  await new Promise<void>((resolve) => {
    watcher.stdout.on('data', (chunk: string) => {
      out += chunk;
      if (out.includes('watching\n')) resolve();
    });
  });
  return {
    stop: () =>
      new Promise((resolve) => {
        watcher.on('exit', () => resolve(JSON.parse(out.slice(out.indexOf('\n') + 1)) as { seen: number; found: boolean }));
        watcher.kill('SIGTERM');
      }),
  };
}

let pin: string;
let acmeLab: AcmeLab;
let pebble: Pebble;
let proxy: ClusterProxy;
let keyserverConfig: string;
let cli: AcmeLab['cli'];

beforeAll(async () => {
  acmeLab = await startAcmeLab();
  ({ pebble, keyserverConfig, cli } = acmeLab);
  pin = readFileSync(join(acmeLab.lab.dir, 'state', 'token', 'user.pin'), 'utf8').trim();
  const envPinConfig = join(acmeLab.lab.dir, 'keyserver-env-pin.json');
  writeFileSync(envPinConfig, JSON.stringify({ stateDir: './state', pkcs11: { pin: { env: PIN_VARIABLE } }, admin: null, log: { level: 'warn' } }));
  proxy = await acmeLab.startProxy(
    ['*.acme.test', '*.acme.tesu'],
    { contact: ['mailto:ops@acme.test'], timeoutMs: 10_000, keyserverConfig: envPinConfig },
    {},
    { [PIN_VARIABLE]: pin },
    SAME_USER ?? [],
  );
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await acmeLab?.close();
});

describe('ACME issuance against pebble, HTTP-01', () => {
  it('keyedge cert issue: the proxy serves the certificate and curl trusting pebble’s root gets the page', async () => {
    const watch = await watchKeyChildren(proxy.pid, pin);
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'www.acme.test', '--domain', 'api.acme.test']);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    expect(issued.stdout).toMatch(/issued www\.acme\.test: serving, key id [0-9a-f]{64}/);
    expect(pebble.orders()).toBe(1);
    // The key children (account key, certificate key) had the PIN in their /proc/<pid>/environ for their whole run, which
    // a worker (the same user) could read while they ran: it reaches them on a pipe now.
    const watched = await watch.stop();
    expect(watched.seen).toBeGreaterThanOrEqual(1);
    expect(watched.found, 'the PIN in /proc/<key child>/environ').toBe(false);

    const root = await pebble.rootFile();
    for (const name of ['www.acme.test', 'api.acme.test']) {
      const got = await curl(proxy.port, name, root);
      expect(got.code, got.stderr).toBe(0);
      expect(got.stdout).toContain(`"host":"${name}:${proxy.port}"`);
    }

    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as {
      certificates: { name: string; keyId: string; issuer: string; acme: { failures: number; renewAt: string } | null }[];
    };
    const entry = certs.certificates.find((c) => c.name === 'www.acme.test');
    expect(entry?.issuer).toMatch(/Pebble/i);
    expect(entry?.acme?.failures).toBe(0);
    expect(Date.parse(entry?.acme?.renewAt ?? '')).toBeGreaterThan(Date.now());

    // The account key and the certificate key: in the token, sensitive, not extractable (PKCS#11 CKA_SENSITIVE, CKA_EXTRACTABLE).
    const listed = await cli(['key', 'list', '--json', '--config', keyserverConfig], 30_000);
    const keys = JSON.parse(listed.stdout) as { keyId: string; label: string; sensitive: boolean; extractable: boolean; type: string }[];
    const account = keys.filter((k) => k.label.startsWith('acme-account-'));
    const certKey = keys.find((k) => k.keyId === entry?.keyId);
    expect(account).toHaveLength(1);
    expect(certKey?.label).toMatch(/^acme-www\.acme\.test-/);
    for (const key of [...account, certKey]) {
      expect(key).toMatchObject({ sensitive: true, extractable: false, type: 'ec-p256' });
    }
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    expect(metrics).toMatch(/keyedge_proxy_acme_orders_total\{result="ok"\} 1/);
  }, 120_000);

  it("the token's PIN variable: the key children had it (the keys above were made in the token), no worker holds it, nor the primary's /proc environ", async () => {
    // Every worker, forked with the primary's environment, held the PIN for its whole life: it never needs it.
    const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(proxy.pid)], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.trim() !== '');
    expect(children.length).toBeGreaterThanOrEqual(2);
    for (const pid of children) {
      const environ = readFileSync(`/proc/${pid.trim()}/environ`, 'latin1');
      // Booleans: a failure prints no PIN.
      expect(environ.includes(PIN_VARIABLE), `${PIN_VARIABLE} in /proc/<worker>/environ`).toBe(false);
      expect(environ.includes(pin), 'the PIN in /proc/<worker>/environ').toBe(false);
    }
    // The primary took the variable out of its environment, but /proc/<pid>/environ shows the block it was started with:
    // a worker (the same user) reads its parent's as it would any file. Root (even without CAP_SYS_PTRACE) still reads a
    // non-dumpable process's; another user does not (the file is root's, 0400): nothing to find there.
    const read = spawnSync('cat', [`/proc/${proxy.pid}/environ`], { encoding: 'latin1' });
    if (process.getuid?.() !== 0 && read.status !== 0) expect(read.stderr).toContain('Permission denied');
    else {
      expect(read.status, read.stderr).toBe(0);
      expect(read.stdout).toContain('PATH=');
      // Booleans: a failure prints no PIN.
      expect(read.stdout.includes(`${PIN_VARIABLE}=`), `${PIN_VARIABLE} in /proc/<primary>/environ`).toBe(false);
      expect(read.stdout.includes(pin), 'the PIN in /proc/<primary>/environ').toBe(false);
    }
    expect(JSON.stringify(proxy.lines).includes(pin), 'the PIN in the log').toBe(false);
  });

  it.skipIf(SAME_USER === undefined)(
    'the primary, which keeps the PIN for the key children, is non-dumpable: a process of its user cannot read its memory',
    () => {
      // A worker taken over (the same user) read the primary's memory through /proc/<pid>/mem, the PIN in it, wherever
      // ptrace is not restricted (no Yama here).
      const command = [...(SAME_USER ?? []), process.execPath, '-e', SCAN_MEMORY, String(proxy.pid), pin];
      const read = JSON.parse(execFileSync(command[0]!, command.slice(1), { encoding: 'utf8', timeout: 60_000 })) as { error?: string; found?: boolean };
      expect(read).toEqual({ error: 'EACCES' });
    },
  );

  it('the primary opens no inspector on SIGUSR1 from a process of its user: the inspector runs any code sent to it', async () => {
    // Non-dumpable or not, Node opened its inspector (127.0.0.1, any local user may connect) on a SIGUSR1 of its user,
    // and code sent to it read the PIN the primary keeps. Its listener logs the signal, ignored.
    const command = [...(SAME_USER ?? []), 'kill', '-USR1', String(proxy.pid)];
    execFileSync(command[0]!, command.slice(1));
    const ignored = (): boolean => proxy.lines.some((l) => String(l.msg).includes('SIGUSR1 ignored'));
    for (let i = 0; i < 100 && !ignored(); i++) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(ignored(), 'the signal was received and ignored').toBe(true);
    const got = await curl(proxy.port, 'www.acme.test', await pebble.rootFile());
    expect(got.code, got.stderr).toBe(0);
  }, 30_000);

  it('a first name over 64 characters (no CN in its CSR: RFC 5280 ub-common-name) is issued and serves', async () => {
    const long = `${'a'.repeat(60)}.acme.test`;
    expect(long.length).toBeGreaterThan(64);
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', long]);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    const got = await curl(proxy.port, long, await pebble.rootFile());
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toContain(`"host":"${long}:${proxy.port}"`);
  }, 120_000);

  it('a second name alike in its first 64 characters gets its own entry and certificate; each name serves its own', async () => {
    // Entry names were cut to 64 characters: this issue renewed the first name's entry (for the first name) and said "issued".
    const long = `${'a'.repeat(60)}.acme.test`;
    const twin = `${'a'.repeat(60)}.acme.tesu`;
    expect(twin.slice(0, 64)).toBe(long.slice(0, 64));
    const before = pebble.orders();
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', twin]);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    expect(pebble.orders()).toBe(before + 1);
    const root = await pebble.rootFile();
    for (const name of [long, twin]) {
      const got = await curl(proxy.port, name, root);
      expect(got.code, got.stderr).toBe(0);
      expect(got.stdout).toContain(`"host":"${name}:${proxy.port}"`);
    }
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as {
      certificates: { name: string; keyId: string; names: string[]; acme: { domains: string[] } | null }[];
    };
    const entries = certs.certificates.filter((c) => c.name.startsWith('a'.repeat(47)));
    expect(entries.map((c) => c.acme?.domains).sort()).toEqual([[long], [twin]]);
    expect(new Set(entries.map((c) => c.keyId)).size).toBe(2);
    for (const entry of entries) expect(entry.name).toMatch(/^a{47}_[0-9a-f]{16}$/);
  }, 120_000);

  it('an issue that adds a name to a managed entry orders a certificate for the whole list, and the added name serves', async () => {
    // It renewed the entry for its recorded names and left the added one out, yet printed "issued".
    const root = await pebble.rootFile();
    // The entry to add to, through the admin API (what `keyedge cert issue` asks; its command line is seen below).
    const first = await proxy.admin('POST', '/acme/issue', JSON.stringify({ domains: ['shop.acme.test'] }));
    expect(first.status, first.text).toBe(200);
    const before = pebble.orders();
    const expanded = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'shop.acme.test', '--domain', 'cart.acme.test']);
    expect(expanded.stderr).toBe('');
    expect(expanded.code).toBe(0);
    for (const name of ['cart.acme.test', 'shop.acme.test']) {
      const got = await curl(proxy.port, name, root);
      expect(got.code, got.stderr).toBe(0);
      expect(got.stdout).toContain(`"host":"${name}:${proxy.port}"`);
    }
    expect(pebble.orders()).toBe(before + 1);
    expect(expanded.stdout).toContain('names: shop.acme.test, cart.acme.test');
    expect(expanded.stdout).toContain("the entry's names changed from shop.acme.test");
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as {
      certificates: { name: string; names: string[]; acme: { domains: string[] } | null }[];
    };
    const entry = certs.certificates.find((c) => c.name === 'shop.acme.test');
    // Recorded: the maintenance loop renews the list asked for, not the one before.
    expect(entry?.acme?.domains).toEqual(['shop.acme.test', 'cart.acme.test']);
    expect([...(entry?.names ?? [])].sort()).toEqual(['cart.acme.test', 'shop.acme.test']);
  }, 180_000);

  it('an issue that leaves out a name the entry serves is refused, naming the entry and both lists; --replace-domains replaces them', async () => {
    const root = await pebble.rootFile();
    const before = pebble.orders();
    const refused = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'shop.acme.test', '--domain', 'till.acme.test']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^keyedge: KEYEDGE_ERR_ACME_DOMAINS: certificate 'shop\.acme\.test' is managed for \[shop\.acme\.test, cart\.acme\.test\]/);
    expect(refused.stderr).toContain('[shop.acme.test, till.acme.test], leave out [cart.acme.test]');
    expect(refused.stderr).toContain('--replace-domains');
    expect(pebble.orders()).toBe(before);
    const still = await curl(proxy.port, 'cart.acme.test', root);
    expect(still.code, still.stderr).toBe(0);

    const replaced = await cli([
      'cert',
      'issue',
      '--config',
      proxy.configFile,
      '--replace-domains',
      '--domain',
      'shop.acme.test',
      '--domain',
      'till.acme.test',
    ]);
    expect(replaced.stderr).toBe('');
    expect(replaced.code).toBe(0);
    expect(replaced.stdout).toContain('names: shop.acme.test, till.acme.test');
    expect(pebble.orders()).toBe(before + 1);
    const till = await curl(proxy.port, 'till.acme.test', root);
    expect(till.code, till.stderr).toBe(0);
    expect(till.stdout).toContain(`"host":"till.acme.test:${proxy.port}"`);
  }, 180_000);

  it("an issue listing the entry's names in another order (another first name) renews that entry, not a second one", async () => {
    // The entry is named after its first domain: `till, shop` made a second entry, `till.acme.test`, and a second certificate.
    const before = pebble.orders();
    const reordered = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'till.acme.test', '--domain', 'shop.acme.test']);
    expect(reordered.stderr).toBe('');
    expect(reordered.code).toBe(0);
    expect(reordered.stdout).toContain('issued shop.acme.test:');
    expect(pebble.orders()).toBe(before + 1);
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string }[] };
    expect(certs.certificates.map((c) => c.name)).not.toContain('till.acme.test');
  }, 180_000);

  it('an issue whose first name is new and a later one managed expands the entry that serves it, as in the other order', async () => {
    // `--domain blog --domain home` with `home` managed made a second entry, `blog.acme.test`, serving `home` from a second certificate.
    // The managed entry, through the admin API (what `keyedge cert issue` asks; its command line is seen below).
    const first = await proxy.admin('POST', '/acme/issue', JSON.stringify({ domains: ['home.acme.test'] }));
    expect(first.status, first.text).toBe(200);
    const expanded = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'blog.acme.test', '--domain', 'home.acme.test']);
    expect(expanded.stderr).toBe('');
    expect(expanded.code).toBe(0);
    expect(expanded.stdout).toContain('issued home.acme.test:');
    // The names it kept first: the entry's first domain still names it.
    expect(expanded.stdout).toContain('names: home.acme.test, blog.acme.test');
    expect(expanded.stdout).toContain("the entry's names changed from home.acme.test");
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; acme: { domains: string[] } | null }[] };
    expect(certs.certificates.map((c) => c.name)).not.toContain('blog.acme.test');
    expect(certs.certificates.find((c) => c.name === 'home.acme.test')?.acme?.domains).toEqual(['home.acme.test', 'blog.acme.test']);
    const got = await curl(proxy.port, 'blog.acme.test', await pebble.rootFile());
    expect(got.code, got.stderr).toBe(0);

    // Names two entries record: which one keeps them is the operator's call, nothing ordered.
    const before = pebble.orders();
    const both = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'blog.acme.test', '--domain', 'shop.acme.test']);
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/^keyedge: KEYEDGE_ERR_ACME_DOMAINS: the names asked for, \[blog\.acme\.test, shop\.acme\.test\], are managed under several/);
    expect(both.stderr).toContain("'home.acme.test' [home.acme.test, blog.acme.test]");
    expect(both.stderr).toContain("'shop.acme.test' [shop.acme.test, till.acme.test]");
    expect(pebble.orders()).toBe(before);
  }, 180_000);

  it('a failed order for a longer list fails the command; the serving entry keeps its names, no failure counted, no backoff', async () => {
    // It was counted as the serving entry's failure: its backoff then delayed the renewal of the certificate that serves.
    await pebble.addA('unreachable.acme.test', '127.0.0.2');
    const failed = await cli([
      'cert',
      'issue',
      '--config',
      proxy.configFile,
      '--domain',
      'home.acme.test',
      '--domain',
      'blog.acme.test',
      '--domain',
      'unreachable.acme.test',
    ]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/KEYEDGE_ERR_ACME: .*validation of unreachable\.acme\.test failed/);
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as {
      certificates: { name: string; acme: { domains: string[]; failures: number; retryNotBefore: string | null; lastError: unknown } | null }[];
    };
    expect(certs.certificates.find((c) => c.name === 'home.acme.test')?.acme).toMatchObject({
      domains: ['home.acme.test', 'blog.acme.test'],
      failures: 0,
      retryNotBefore: null,
      lastError: null,
    });
  }, 180_000);

  it('keyedge cert renew refuses --replace-domains and --domain (a usage error naming the flag) rather than ignoring them', async () => {
    // Both were taken and ignored: the entry was renewed for its recorded names and the command said "renewed".
    const before = pebble.orders();
    const replace = await cli(['cert', 'renew', 'home.acme.test', '--config', proxy.configFile, '--replace-domains']);
    expect(replace.code).toBe(2);
    expect(replace.stderr).toMatch(/KEYEDGE_ERR_USAGE: cert renew takes no --replace-domains/);
    const domain = await cli(['cert', 'renew', 'home.acme.test', '--config', proxy.configFile, '--domain', 'home.acme.test']);
    expect(domain.code).toBe(2);
    expect(domain.stderr).toMatch(/KEYEDGE_ERR_USAGE: cert renew takes no --domain/);
    expect(pebble.orders()).toBe(before);
  }, 60_000);

  it('a name listed twice in an issue is recorded, ordered and renewed once', async () => {
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'twice.acme.test', '--domain', 'twice.acme.test']);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    expect(issued.stdout).toContain('names: twice.acme.test\n');
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; acme: { domains: string[] } | null }[] };
    expect(certs.certificates.find((c) => c.name === 'twice.acme.test')?.acme?.domains).toEqual(['twice.acme.test']);
  }, 180_000);

  it("a renewal of an entry whose chain is another tool's link is refused before any order: nothing reaches the CA", async () => {
    // The order was placed and validated, and the store refused its chain only then: each retry spent one of the CA's orders.
    const chain = join(proxy.storeDir, 'twice.acme.test.pem');
    const kept = join(acmeLab.lab.dir, 'other-tool-twice.pem');
    copyFileSync(chain, kept);
    rmSync(chain);
    symlinkSync(kept, chain);
    const before = pebble.orders();
    const renewed = await cli(['cert', 'renew', 'twice.acme.test', '--config', proxy.configFile]);
    expect(renewed.code).toBe(1);
    expect(renewed.stderr).toMatch(/KEYEDGE_ERR_CERT_LINKED/);
    expect(pebble.orders()).toBe(before);
    const root = await pebble.rootFile();
    expect((await curl(proxy.port, 'twice.acme.test', root)).code).toBe(0);
  }, 60_000);
});
