import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import {
  closeSync,
  existsSync,
  lstatSync,
  openSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x509 from '../keyserver/shared/x509.js';
import { runInProcess } from './helpers/cli-in-process.js';
import { largeRsaPem } from './helpers/oversize-rsa.js';

// Drives the built `keyedge` executable (npm test builds it first) against a
// SoftHSM2 token in a temporary state directory.
const KEYEDGE = join(import.meta.dirname, '..', 'dist', 'keyedge.cjs');
let dir: string;
let config: string;

function keyedge(...args: string[]): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [KEYEDGE, ...args], { encoding: 'utf8', cwd: dir });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/**
 * The same command line in this process (cli-in-process.ts): keyedge.ts's dispatch, its usage errors and the status
 * it returns, without a node start (some 0.8 s of CPU each). For a row of a table of usage refusals or help topics
 * whose first row the built executable answers: what a row adds is the command's parsing, not the process.
 */
async function keyedgeHere(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  const result = await runInProcess(args);
  return { status: result.code, stdout: result.stdout, stderr: result.stderr };
}

/** How many objects (of any class) the token of `configFile` holds under CKA_ID `keyId`, as another process finds them. */
function objectsWithId(configFile: string, keyId: string): number {
  const dist = (path: string): string => pathToFileURL(join(import.meta.dirname, '..', 'dist', path)).href;
  const script = `
    import { loadKeyserverConfig } from '${dist('config/load.js')}';
    import { tokenOptions } from '${dist('keyserver/token/open-options.js')}';
    import { Token } from '${dist('keyserver/token/token.js')}';
    const token = Token.open(tokenOptions(loadKeyserverConfig(process.argv[1])));
    token.pkcs11.C_FindObjectsInit(token.management, [{ type: 0x102, value: Buffer.from(process.argv[2], 'hex') }]);
    const found = token.pkcs11.C_FindObjects(token.management, 100);
    token.pkcs11.C_FindObjectsFinal(token.management);
    token.close();
    process.stdout.write(String(found.length));`;
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script, configFile, keyId], { encoding: 'utf8', cwd: dir });
  expect(result.status, result.stderr).toBe(0);
  return Number(result.stdout);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-cli-'));
  config = join(dir, 'keyserver.json');
  writeFileSync(config, JSON.stringify({ stateDir: './state', admin: null }));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('keyedge key', () => {
  it('generates keys and lists them without material', () => {
    const ec = keyedge('key', 'generate', '--config', config, '--type', 'ec-p384', '--label', 'edge-ec');
    expect(ec.status, ec.stderr).toBe(0);
    expect(ec.stdout).toMatch(/generated ec-p384 key 'edge-ec'.*\nkey id: [0-9a-f]{64}\n/);
    expect(keyedge('key', 'generate', '--config', config, '--type', 'rsa-2048', '--label', 'edge-rsa').status).toBe(0);
    const list = keyedge('key', 'list', '--config', config, '--json');
    const keys = JSON.parse(list.stdout) as { keyId: string; label: string; type: string; extractable: boolean; sensitive: boolean; ski: string }[];
    expect(keys.map((k) => [k.label, k.type, k.extractable, k.sensitive])).toEqual(
      expect.arrayContaining([
        ['edge-ec', 'ec-p384', false, true],
        ['edge-rsa', 'rsa-2048', false, true],
      ]),
    );
    expect(keys.every((k) => /^[0-9a-f]{40}$/.test(k.ski))).toBe(true);
    expect(keyedge('key', 'list', '--config', config).stdout).toMatch(/KEY ID \(SPKI SHA-256\)\s+LABEL\s+TYPE/);
  });

  it("--pin-stdin: the PIN variable's value comes from stdin (the proxy's ACME key children), not the environment", () => {
    const envConfig = join(dir, 'keyserver-env-pin.json');
    writeFileSync(envConfig, JSON.stringify({ stateDir: './state', admin: null, pkcs11: { pin: { env: 'KEYEDGE_TEST_STDIN_PIN' } } }));
    const pin = readFileSync(join(dir, 'state', 'token', 'user.pin'), 'utf8').trim();
    const env = { ...process.env };
    delete env.KEYEDGE_TEST_STDIN_PIN;
    const list = (input: string, ...flags: string[]) =>
      spawnSync(process.execPath, [KEYEDGE, 'key', 'list', '--json', '--config', envConfig, ...flags], { encoding: 'utf8', cwd: dir, env, input });
    const piped = list(pin, '--pin-stdin');
    expect(piped.status, piped.stderr).toBe(0);
    expect((JSON.parse(piped.stdout) as { label: string }[]).map((k) => k.label)).toContain('edge-ec');
    // As `echo "$PIN" | keyedge key list --pin-stdin` sends it: the line ending is not part of the PIN.
    const echoed = list(`${pin}\n`, '--pin-stdin');
    expect(echoed.status, echoed.stderr).toBe(0);
    const unset = list(pin);
    expect(unset.status).toBe(1);
    expect(unset.stderr).toContain('KEYEDGE_ERR_TOKEN_PIN: the PIN variable KEYEDGE_TEST_STDIN_PIN is not set');
    expect(`${piped.stdout}${piped.stderr}${echoed.stderr}${unset.stderr}`.includes(pin), 'the PIN in the output').toBe(false);
    // Read to 64 KiB at most, as a PIN file is: stdin was read whole (`< /dev/zero` until memory ran out).
    const endless = list('0'.repeat(64 * 1024 + 1), '--pin-stdin');
    expect(endless.status).toBe(1);
    expect(endless.stderr).toBe('keyedge: KEYEDGE_ERR_TOKEN_PIN: cannot read the PIN from standard input (--pin-stdin): more than 65536 bytes\n');
  });

  it('--pin-stdin with a config that takes the PIN from a file is a usage error naming both, stdin unread (it was ignored)', () => {
    const pinFile = join(dir, 'state', 'token', 'user.pin');
    const pin = readFileSync(pinFile, 'utf8').trim();
    // The embedded default's PIN file, and a config naming one: the flag said stdin, the file was used without a word.
    const cases: [string[], string][] = [
      [['--config', config], pinFile],
      [[], join(dir, 'var', 'token', 'user.pin')],
    ];
    for (const [args, file] of cases) {
      const result = spawnSync(process.execPath, [KEYEDGE, 'key', 'list', '--json', '--pin-stdin', ...args], {
        encoding: 'utf8',
        cwd: dir,
        input: 'not-the-pin\n',
      });
      expect(result.status, result.stdout).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toMatch(/^keyedge: KEYEDGE_ERR_USAGE: --pin-stdin gives the PIN in place of a PIN variable \(pkcs11\.pin\.env\), but /);
      expect(result.stderr).toContain(`takes it from the file ${file} (pkcs11.pin.file)`);
      expect(result.stderr.includes(pin), 'the PIN in the output').toBe(false);
    }
  });

  it('imports a PEM key non-extractable and reminds that the file remains', () => {
    const pem = join(dir, 'import.pem');
    writeFileSync(pem, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' }));
    const result = keyedge('key', 'import', '--config', config, '--in', pem, '--label', 'imported');
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toContain(`${pem} still exists and holds the private key in the clear`);
    expect(existsSync(pem)).toBe(true);
    const again = keyedge('key', 'import', '--config', config, '--in', pem, '--label', 'imported-again');
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/KEYEDGE_ERR_KEY_EXISTS: .*already in the token/);
  });

  it("a key object that cannot be read (another tool's compressed EC point) is skipped with a warning naming it; the others are listed", () => {
    const badConfig = join(dir, 'keyserver-bad-object.json');
    writeFileSync(badConfig, JSON.stringify({ stateDir: './state-bad-object', admin: null }));
    const good = keyedge('key', 'generate', '--config', badConfig, '--type', 'ec-p256', '--label', 'good', '--json');
    expect(good.status, good.stderr).toBe(0);
    // X9.62 allows a compressed point (0x02/0x03 || x) in CKA_EC_POINT, as another tool may store it.
    const dist = (path: string): string => pathToFileURL(join(import.meta.dirname, '..', 'dist', path)).href;
    const script = `
      import { ECDH, generateKeyPairSync } from 'node:crypto';
      import pkcs11js from 'pkcs11js';
      import { loadKeyserverConfig } from '${dist('config/load.js')}';
      import { tokenOptions } from '${dist('keyserver/token/open-options.js')}';
      import { Token } from '${dist('keyserver/token/token.js')}';
      const token = Token.open(tokenOptions(loadKeyserverConfig(process.argv[1])));
      const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
      const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
      const compressed = ECDH.convertKey(point, 'prime256v1', undefined, undefined, 'compressed');
      const common = [
        { type: pkcs11js.CKA_TOKEN, value: true }, { type: pkcs11js.CKA_LABEL, value: 'other-tool' }, { type: pkcs11js.CKA_ID, value: Buffer.from([7]) },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC }, { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') },
      ];
      token.pkcs11.C_CreateObject(token.management, [...common, { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_EC_POINT, value: Buffer.concat([Buffer.from([4, compressed.length]), compressed]) }]);
      token.pkcs11.C_CreateObject(token.management, [...common, { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_SENSITIVE, value: true }, { type: pkcs11js.CKA_SIGN, value: true },
        { type: pkcs11js.CKA_VALUE, value: Buffer.from(jwk.d, 'base64url') }]);
      token.close();`;
    const made = spawnSync(process.execPath, ['--input-type=module', '-e', script, badConfig], { encoding: 'utf8', cwd: join(import.meta.dirname, '..') });
    expect(made.status, made.stderr).toBe(0);
    // Before: every action failed "unexpected failure: TypeError: Invalid JWK EC key", naming nothing.
    const list = keyedge('key', 'list', '--config', badConfig, '--json');
    expect(list.status, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { label: string }[]).map((k) => k.label)).toEqual(['good']);
    expect(list.stderr).toBe("keyedge warning: key object 'other-tool' (CKA_ID 07) skipped: it cannot be read as a key (Invalid JWK EC key)\n");
    const another = keyedge('key', 'generate', '--config', badConfig, '--type', 'ec-p256', '--label', 'another');
    expect(another.status, another.stderr).toBe(0);
  });

  it('an import the token fails half-way leaves no object behind (a file-size limit cut the private object): a retry stores one key', () => {
    const limitedConfig = join(dir, 'keyserver-fsize.json');
    writeFileSync(limitedConfig, JSON.stringify({ stateDir: './state-fsize', admin: null }));
    // The token is made before the limit applies.
    expect(keyedge('key', 'list', '--config', limitedConfig).status).toBe(0);
    const pem = join(dir, 'large-rsa.pem');
    writeFileSync(pem, largeRsaPem());
    const keyId = createHash('sha256')
      .update(createPublicKey(readFileSync(pem)).export({ type: 'spki', format: 'der' }))
      .digest('hex');
    // SoftHSM2 writes an object's file through a 4 KiB stdio buffer: under a 3 KiB limit (bash counts KiB) the public
    // object (1.6 KiB) is written whole, the private one (over 4 KiB) fails, and C_CreateObject says so.
    const limited = spawnSync(
      'bash',
      ['-c', 'ulimit -f 3 && exec "$@"', 'bash', process.execPath, KEYEDGE, 'key', 'import', '--config', limitedConfig, '--in', pem, '--label', 'large'],
      { encoding: 'utf8', cwd: dir },
    );
    expect(limited.status, limited.stdout).toBe(1);
    expect(limited.stderr).toContain('KEYEDGE_ERR_TOKEN_OPERATION: C_CreateObject failed');
    // The public object stayed: unlisted (a key is listed by its private object), and a retry added a second twin.
    expect(objectsWithId(limitedConfig, keyId)).toBe(0);
    const retry = keyedge('key', 'import', '--config', limitedConfig, '--in', pem, '--label', 'large');
    expect(retry.status, retry.stderr).toBe(0);
    expect(retry.stdout).toMatch(/imported rsa-7[0-9]{3} key 'large'/);
    expect(objectsWithId(limitedConfig, keyId)).toBe(2);
  });

  it('an EC key the token accepts but stores cut short (a file-size limit) is an error, with no NOTE to shred the only copy', () => {
    const limitedConfig = join(dir, 'keyserver-fsize-ec.json');
    writeFileSync(limitedConfig, JSON.stringify({ stateDir: './state-fsize-ec', admin: null }));
    expect(keyedge('key', 'list', '--config', limitedConfig).status).toBe(0);
    const pem = join(dir, 'small-ec.pem');
    writeFileSync(pem, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    // Under 700 bytes SoftHSM2 writes the EC objects cut short and C_CreateObject (C_GenerateKeyPair) still says CKR_OK.
    const limited = (...args: string[]) =>
      spawnSync('prlimit', ['--fsize=700', process.execPath, KEYEDGE, 'key', ...args, '--config', limitedConfig], { encoding: 'utf8', cwd: dir });
    const imported = limited('import', '--in', pem, '--label', 'cut-short');
    // Before: status 0, "imported ec-p256 key 'cut-short'" and the NOTE to shred small-ec.pem, and no such key listed.
    expect(imported.status, imported.stdout).toBe(1);
    expect(imported.stdout).toBe('');
    expect(imported.stderr).toMatch(
      /^keyedge: KEYEDGE_ERR_TOKEN_OPERATION: key 'cut-short' \(key id [0-9a-f]{64}\) is not in token 'keyedge' when read back: .*; .*small-ec\.pem is still the only copy of the key: keep it\n$/,
    );
    const generated = limited('generate', '--type', 'ec-p256', '--label', 'cut-short-too');
    expect(generated.status, generated.stdout).toBe(1);
    expect(generated.stderr).toContain('is not in token');
    const list = keyedge('key', 'list', '--config', limitedConfig, '--json');
    expect(list.status, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
  });

  it('a standard output that cannot be written (/dev/full) is said without a stack, with the key id of the key generated', () => {
    const full = openSync('/dev/full', 'w');
    try {
      const run = (...args: string[]) =>
        spawnSync(process.execPath, [KEYEDGE, 'key', ...args, '--config', config], { encoding: 'utf8', cwd: dir, stdio: ['ignore', full, 'pipe'] });
      // Before: Node's stack for the ENOSPC write ("Error: ENOSPC: no space left on device, write"), no key id.
      const generated = run('generate', '--type', 'ec-p256', '--label', 'to-full');
      expect(generated.status).toBe(1);
      expect(generated.stderr).toMatch(
        /^keyedge: KEYEDGE_ERR_SETUP: cannot write to standard output: ENOSPC; key 'to-full' \(key id [0-9a-f]{64}\) was generated in token 'keyedge'\n$/,
      );
      const csr = run('csr', '--key', 'to-full', '--domain', 'full.example');
      expect(csr.status).toBe(1);
      expect(csr.stderr).toMatch(
        /^keyedge: KEYEDGE_ERR_SETUP: cannot write to standard output: ENOSPC; the CSR for key 'to-full' \(key id [0-9a-f]{64}\) was not written whole\n$/,
      );
    } finally {
      closeSync(full);
    }
  });

  it('reads a key file to 1 MiB at most: a large file or an endless device (/dev/zero) is refused unread past that, a pipe is read', () => {
    const big = join(dir, 'big.pem');
    writeFileSync(big, Buffer.alloc(50 * 1024 * 1024, 0x41));
    const large = keyedge('key', 'import', '--config', config, '--in', big, '--label', 'big');
    expect(large.status).toBe(1);
    expect(large.stderr).toBe(`keyedge: KEYEDGE_ERR_KEY_INPUT: cannot read ${big}: more than 1048576 bytes\n`);
    // Read whole, /dev/zero never ended: the command grew by some 90 MB a second and never answered.
    const endless = keyedge('key', 'import', '--config', config, '--in', '/dev/zero', '--label', 'endless');
    expect(endless.status).toBe(1);
    expect(endless.stderr).toBe('keyedge: KEYEDGE_ERR_KEY_INPUT: cannot read /dev/zero: more than 1048576 bytes\n');
    // A pipe (`--in <(vault read …)`, /dev/stdin): the key never on disk.
    const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    // Through a shell's pipe (spawnSync's `input` is a socket, which /dev/stdin cannot be opened on: ENXIO).
    const piped = spawnSync(
      'bash',
      ['-c', 'printf %s "$1" | exec "$2" "$3" key import --config "$4" --in /dev/stdin --label piped', 'bash', pem, process.execPath, KEYEDGE, config],
      {
        encoding: 'utf8',
        cwd: dir,
        timeout: 60_000,
      },
    );
    expect(piped.status, piped.stderr).toBe(0);
    expect(piped.stdout).toContain("imported ec-p256 key 'piped'");
  });

  it('--in - reads the key from standard input, to 1 MiB at most, with no reminder of a file; not with --pin-stdin', () => {
    const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    // `-` was taken for a file name: `cannot read -: ENOENT`.
    const piped = spawnSync(process.execPath, [KEYEDGE, 'key', 'import', '--config', config, '--in', '-', '--label', 'from-stdin'], {
      encoding: 'utf8',
      cwd: dir,
      input: pem,
    });
    expect(piped.status, piped.stderr).toBe(0);
    expect(piped.stdout).toMatch(/^imported ec-p256 key 'from-stdin' into token '[^']+' \(non-extractable\)\nkey id: [0-9a-f]{64}\n$/);
    // An endless pipe is cut at the cap, as /dev/zero is.
    const endless = spawnSync(
      'bash',
      ['-c', 'yes | exec "$@"', 'bash', process.execPath, KEYEDGE, 'key', 'import', '--config', config, '--in', '-', '--label', 'endless-stdin'],
      { encoding: 'utf8', cwd: dir, timeout: 60_000 },
    );
    expect(endless.status).toBe(1);
    expect(endless.stderr).toBe('keyedge: KEYEDGE_ERR_KEY_INPUT: cannot read standard input: more than 1048576 bytes\n');
    const notKey = spawnSync(process.execPath, [KEYEDGE, 'key', 'import', '--config', config, '--in', '-', '--label', 'not-a-key'], {
      encoding: 'utf8',
      cwd: dir,
      input: 'hello\n',
    });
    expect(notKey.status).toBe(1);
    expect(notKey.stderr).toMatch(/^keyedge: KEYEDGE_ERR_KEY_INPUT: standard input is not an unencrypted PEM private key/);
    // One stdin for two inputs: refused before either is read.
    const both = keyedge('key', 'import', '--config', config, '--in', '-', '--label', 'both', '--pin-stdin');
    expect(both.status).toBe(2);
    expect(both.stderr).toMatch(/^keyedge: KEYEDGE_ERR_USAGE: --in - and --pin-stdin both read standard input/);
  });

  it("the reminder's shred command names the key file as one shell word, whatever its name (a space, a quote, a ';')", () => {
    const pem = join(dir, "old key's; copy.pem");
    writeFileSync(pem, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' }));
    const result = keyedge('key', 'import', '--config', config, '--in', pem, '--label', 'odd-path');
    expect(result.status, result.stderr).toBe(0);
    // Pasted as printed, `shred -u /tmp/…/old key's; copy.pem` shredded other files (or ran what follows the ';').
    const hint = /e\.g\. shred -u -- ([\s\S]*)\) once your backup policy/.exec(result.stdout)?.[1];
    expect(hint, result.stdout).toBeDefined();
    const words = execFileSync('bash', ['-c', `printf '%s\\0' ${hint}`], { encoding: 'utf8' })
      .split('\0')
      .slice(0, -1);
    expect(words).toEqual([pem]);
  });

  it.each(['edge-ec', 'edge-rsa', 'imported'])('makes a CSR signed inside the token with key %s', async (label) => {
    const out = join(dir, `${label}.csr`);
    const result = keyedge('key', 'csr', '--config', config, '--key', label, '--domain', 'shop.example', '--domain', '*.shop.example', '--out', out);
    expect(result.status, result.stderr).toBe(0);
    // OpenSSL checks the self-signature independently of our X.509 library.
    expect(execFileSync('openssl', ['req', '-in', out, '-noout', '-verify'], { encoding: 'utf8', stdio: 'pipe' })).toBe('');
    const csr = new x509.Pkcs10CertificateRequest(readFileSync(out, 'utf8'));
    expect(await csr.verify()).toBe(true);
    expect(csr.subject).toBe('CN=shop.example');
    const san = csr.extensions.find((e): e is x509.SubjectAlternativeNameExtension => e instanceof x509.SubjectAlternativeNameExtension);
    expect(san?.names.items.map((n) => n.value)).toEqual(['shop.example', '*.shop.example']);
    const keys = JSON.parse(keyedge('key', 'list', '--config', config, '--json').stdout) as { keyId: string; label: string }[];
    const spki = Buffer.from(csr.publicKey.rawData);
    expect(createHash('sha256').update(spki).digest('hex')).toBe(keys.find((k) => k.label === label)?.keyId);
  });

  it('key csr --out writes a new file renamed into place, never through a symbolic link at FILE', () => {
    const out = join(dir, 'out', 'shop.csr');
    mkdirSync(join(dir, 'out'));
    writeFileSync(out, 'an older request\n');
    const before = statSync(out).ino;
    const result = keyedge('key', 'csr', '--config', config, '--key', 'edge-ec', '--domain', 'shop.example', '--out', out);
    expect(result.status, result.stderr).toBe(0);
    // Written in place, a reader (or a crash) could see the request half-written: a temp file renamed over it is a new inode.
    expect(statSync(out).ino).not.toBe(before);
    expect(readFileSync(out, 'utf8')).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----\n[\s\S]*-----END CERTIFICATE REQUEST-----\n$/);
    expect(statSync(out).mode & 0o777).toBe(0o644);
    expect(readdirSync(join(dir, 'out'))).toEqual(['shop.csr']);
    // A link at FILE (planted, or another tool's): the file it points at was overwritten.
    const victim = join(dir, 'out', 'victim.txt');
    writeFileSync(victim, 'not a request\n');
    const link = join(dir, 'out', 'link.csr');
    symlinkSync(victim, link);
    const linked = keyedge('key', 'csr', '--config', config, '--key', 'edge-ec', '--domain', 'shop.example', '--out', link);
    expect(linked.status).toBe(2);
    expect(linked.stderr).toBe(`keyedge: KEYEDGE_ERR_USAGE: --out ${link} is a symbolic link (to ${victim}): nothing was written; name the file itself\n`);
    expect(readFileSync(victim, 'utf8')).toBe('not a request\n');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readdirSync(join(dir, 'out')).sort()).toEqual(['link.csr', 'shop.csr', 'victim.txt']);
    // A directory that is not there: a stack trace naming the temp file, not FILE.
    const nowhere = join(dir, 'no-such-dir', 'shop.csr');
    const missing = keyedge('key', 'csr', '--config', config, '--key', 'edge-ec', '--domain', 'shop.example', '--out', nowhere);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toBe(`keyedge: KEYEDGE_ERR_USAGE: cannot write --out ${nowhere}: ENOENT\n`);
  });

  it('key csr --out on a full file system: an I/O failure naming FILE and the errno (status 1), not a usage error; nothing left behind', () => {
    const full = join(dir, 'full');
    mkdirSync(full);
    const out = join(full, 'shop.csr');
    const csr = (keyConfig: string, limit: string) =>
      spawnSync(
        'bash',
        [
          '-c',
          'ulimit -f "$1" && shift && exec "$@"',
          'bash',
          limit,
          process.execPath,
          KEYEDGE,
          'key',
          'csr',
          '--config',
          keyConfig,
          '--key',
          'edge-ec',
          '--domain',
          'shop.example',
          '--out',
          out,
        ],
        { encoding: 'utf8', cwd: dir },
      );
    // A real full disk: a 16 KiB tmpfs, filled to its last block (the tests run as root): the temp file is made (an
    // inode), its write is what fails.
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', full]).status === 0;
    let result: ReturnType<typeof csr>;
    let errno: string;
    try {
      if (mounted) {
        spawnSync('dd', ['if=/dev/zero', `of=${join(full, 'filler')}`, 'bs=4k']);
        result = csr(config, 'unlimited');
        errno = 'ENOSPC';
      } else {
        // Where mount(2) is refused, a file-size limit of 0 fails the write as real (EFBIG; Node ignores SIGXFSZ). On a
        // token of its own: SoftHSM2 rewrites its token file at login, which the limit cuts to nothing.
        const limitedConfig = join(dir, 'keyserver-efbig.json');
        writeFileSync(limitedConfig, JSON.stringify({ stateDir: './state-efbig', admin: null }));
        expect(keyedge('key', 'generate', '--config', limitedConfig, '--type', 'ec-p256', '--label', 'edge-ec').status).toBe(0);
        result = csr(limitedConfig, '0');
        errno = 'EFBIG';
      }
      expect(readdirSync(full).filter((f) => f !== 'filler')).toEqual([]);
    } finally {
      if (mounted) spawnSync('umount', [full]);
    }
    expect(result.stderr).toBe(`keyedge: KEYEDGE_ERR_SETUP: cannot write --out ${out}: ${errno}; nothing was written\n`);
    expect(result.status).toBe(1);
    expect(result.stdout).toBe('');
  });

  it('makes a CSR without a CN when the first name is over 64 characters (RFC 5280 ub-common-name): the names are in the SAN', async () => {
    const long = `${'a'.repeat(60)}.shop.example`;
    const out = join(dir, 'long.csr');
    const result = keyedge('key', 'csr', '--config', config, '--key', 'edge-ec', '--domain', long, '--domain', 'shop.example', '--out', out);
    expect(result.status, result.stderr).toBe(0);
    expect(execFileSync('openssl', ['req', '-in', out, '-noout', '-verify'], { encoding: 'utf8', stdio: 'pipe' })).toBe('');
    const csr = new x509.Pkcs10CertificateRequest(readFileSync(out, 'utf8'));
    expect(csr.subject).toBe('');
    const san = csr.extensions.find((e): e is x509.SubjectAlternativeNameExtension => e instanceof x509.SubjectAlternativeNameExtension);
    expect(san?.names.items.map((n) => n.value)).toEqual([long, 'shop.example']);
  });
});

describe('usage and errors', () => {
  it('prints help for the command and each subcommand', () => {
    const top = keyedge('--help');
    expect(top.status).toBe(0);
    for (const name of ['keyserver', 'key', 'ping']) expect(top.stdout).toContain(`  ${name}`);
    expect(keyedge('key', '--help').stdout).toContain('generate --type TYPE --label NAME');
    expect(keyedge('keyserver', '--help').stdout).toContain('Usage: keyedge keyserver');
    expect(keyedge('ping', '--help').stdout).toContain('Usage: keyedge ping');
  });

  it('ping prints a round trip a line, as its help says, and its help promises nothing else (no key listing)', async () => {
    // The help said "then the public keys it serves", which it never printed: the protocol has no listing.
    const help = keyedge('ping', '--help').stdout;
    expect(help).toContain('prints each round trip');
    expect(help).not.toMatch(/public keys/);
    const pingConfig = join(dir, 'keyserver-ping.json');
    const socket = join(dir, 'ping.sock');
    writeFileSync(pingConfig, JSON.stringify({ stateDir: './state', admin: null, listen: { unix: { path: socket, mode: '0600', keys: '*' } } }));
    const server = spawn(process.execPath, [KEYEDGE, 'keyserver', '--config', pingConfig], { cwd: dir, stdio: 'ignore' });
    try {
      const deadline = Date.now() + 30_000;
      while (!existsSync(socket) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      const ping = keyedge('ping', '--socket', socket, '--count', '2');
      expect(ping.status, ping.stderr).toBe(0);
      expect(ping.stdout).toMatch(new RegExp(`^(pong from ${socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: \\d+ µs\\n){2}$`));
    } finally {
      server.kill('SIGTERM');
      await new Promise((resolve) => server.once('close', resolve));
    }
  }, 60_000);

  it.each(['key', 'cert', 'ping'])("`keyedge help %s` is that command's help, not the list of commands", async (name) => {
    // The built executable for the first topic; the others in this process.
    const result = name === 'key' ? keyedge('help', name) : await keyedgeHere('help', name);
    expect(result.status).toBe(0);
    expect(result.stdout).toContain(`Usage: keyedge ${name}`);
  });

  it.each([[[]], [['key']], [['cert']]])('without a command or action (%j): the usage error on stderr, status 2, stdout empty', (args) => {
    // A script's `out=$(keyedge key)` took the usage text for output: it was on stdout, with no error line.
    const result = keyedge(...args);
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/^keyedge: KEYEDGE_ERR_USAGE: missing (command|action)/);
    expect(result.stderr).toContain(`Usage: keyedge ${args[0] ?? '<command>'}`);
  });

  it.each(['keyserver', 'key', 'proxy', 'cert', 'ping', 'demo-origin'])('`keyedge %s --help`: the usage on stdout, status 0, stderr empty', (name) => {
    const result = keyedge(name, '--help');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain(`Usage: keyedge ${name}`);
    expect(result.stderr).toBe('');
  });

  it.each([[['--help']], [['cert', '--help']], [['key', 'list', '--json']]])(
    'output to a reader that went away (`keyedge %j | head -1`): no stack trace, status 0',
    async (args) => {
      // The reader's end is closed before the command writes: Node's EPIPE was an unhandled 'error' event, its stack on stderr.
      const child = spawn(process.execPath, [KEYEDGE, ...args, ...(args[0] === 'key' ? ['--config', config] : [])], {
        cwd: dir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const status = await new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
      expect(stderr).toBe('');
      expect(status).toBe(0);
    },
    60_000,
  );

  it.each([
    [['key', 'list', '--config', 'a.json', '--config', 'b.json'], '--config'],
    [['key', 'delete', '--key', 'edge-ec', '--key', 'edge-rsa', '--config', 'a.json'], '--key'],
    [['cert', 'replace', 'shop', '--chain', 'new.pem', '--chain', 'old.pem'], '--chain'],
    [['ping', '--socket', 'a.sock', '--socket=b.sock'], '--socket'],
    [['proxy', '--config', 'a.json', '--config', 'b.json'], '--config'],
  ])('refuses a value flag given twice (%j): which one was meant is not guessed', async (args, flag) => {
    // The last one won, silently: `key delete --key edge-ec … --key edge-rsa` destroyed edge-rsa.
    // The built executable for the first row and the proxy's (not loaded into this process for its flags); the others here.
    const result = flag === '--config' ? keyedge(...args) : await keyedgeHere(...args);
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(new RegExp(`^keyedge: KEYEDGE_ERR_USAGE: ${flag} given more than once`));
  });

  it.each([
    [['nope'], /unknown command 'nope'/],
    [['key', 'generate', '--type', 'ec-p521', '--label', 'x'], /--type must be one of/],
    [['key', 'generate', '--type', 'ec-p256'], /missing --label/],
    [['key', 'csr', '--key', 'edge-ec', '--domain', 'bad_name!'], /is not a DNS name/],
    [['key', 'list', '--bogus'], /Unknown option '--bogus'/],
  ])('refuses %j with a usage error', async (args, message) => {
    // The built executable for the unknown command; each key action's refusal in this process.
    const line = [...args, ...(args[0] === 'key' ? ['--config', config] : [])];
    const result = args[0] === 'key' ? await keyedgeHere(...line) : keyedge(...line);
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(/^keyedge: KEYEDGE_ERR_USAGE: /);
    expect(result.stderr).toMatch(message);
  });

  it('names the file and key path of a bad config', () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ limits: { maxInflight: 3 } }));
    const result = keyedge('key', 'list', '--config', bad);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('KEYEDGE_ERR_CONFIG');
    expect(result.stderr).toContain(bad);
    expect(result.stderr).toContain('limits.maxInflight');
  });
});
