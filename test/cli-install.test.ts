import { cpSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from './helpers/clients.js';
import { REPO, removeDir, tempDir } from './helpers/basics.js';

// `keyedge` as an operator gets it: `npm pack`, then `npm install -g` into a
// prefix, then the command by name from PATH (what README's certbot hook
// runs). Without a shebang the bin link is run by the shell ("use strict:
// command not found"). Dependencies come from npm's cache when there
// (--prefer-offline; the registry otherwise); install scripts are skipped, so
// the native PKCS#11 addon this checkout already built is copied in instead of
// rebuilt: what is under test is the package and its bin, not node-gyp.
let dir: string;
let prefix: string;

beforeAll(async () => {
  dir = tempDir('keyedge-install-');
  prefix = join(dir, 'prefix');
  const pack = await run('sh', ['-c', `cd "${REPO}" && exec npm pack --silent --pack-destination "${dir}"`], '', 120_000);
  expect(pack.code, pack.stderr).toBe(0);
  const tarball = join(dir, pack.stdout.trim().split('\n').pop()!);
  const install = await run(
    'npm',
    ['install', '-g', '--prefix', prefix, '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error', tarball],
    '',
    240_000,
  );
  expect(install.code, install.stderr).toBe(0);
  const addon = join('node_modules', 'pkcs11js', 'build');
  cpSync(join(REPO, addon), join(prefix, 'lib', 'node_modules', 'keyedge', addon), { recursive: true });
}, 300_000);
afterAll(() => {
  if (dir !== undefined) removeDir(dir);
});

describe('the installed command', () => {
  it('is linked onto PATH as `keyedge`, an executable script with a node shebang', () => {
    const bin = join(prefix, 'bin', 'keyedge');
    expect(existsSync(bin)).toBe(true);
    expect(readFileSync(bin, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  });

  it("runs by name: --version, --help and a subcommand's help", async () => {
    // By name from PATH, from a directory outside the checkout, as a certbot hook runs it.
    const inPrefix = (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
      run('sh', ['-c', `cd "${dir}" && PATH="${join(prefix, 'bin')}:$PATH" exec keyedge ${args.join(' ')}`]);
    const version = await inPrefix(['--version']);
    expect(version.stderr).toBe('');
    expect(version.code).toBe(0);
    expect(version.stdout.trim()).toBe((JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version);
    const help = await inPrefix(['--help']);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toContain('Usage: keyedge <command>');
    const cert = await inPrefix(['cert', '--help']);
    expect(cert.code, cert.stderr).toBe(0);
    expect(cert.stdout).toContain('keyedge cert');
  });
});
