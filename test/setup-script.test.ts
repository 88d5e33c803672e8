import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO, removeDir, tempDir } from './helpers/keyserver.js';

// config/setup.sh (`npm test`, `npm run up`) skips `npm ci` when node_modules
// matches the lock file and the native addons are built. An addon added to
// proxy/native/binding.gyp (no_dump.node) changes no lock file: a checkout
// installed before it was taken as complete, the addon never built, and a
// proxy with an ACME PIN variable refused to start (KEYEDGE_ERR_SETUP).
const SETUP = join(REPO, 'config', 'setup.sh');
const dir = tempDir('keyedge-setup-');

afterAll(() => removeDir(dir));

describe('config/setup.sh: ensure_node_modules', () => {
  it('knows every addon proxy/native/binding.gyp builds', () => {
    const gyp = readFileSync(join(REPO, 'proxy', 'native', 'binding.gyp'), 'utf8');
    const targets = [...gyp.matchAll(/"target_name":\s*"([^"]+)"/g)].map((m) => m[1]);
    expect(targets.length).toBeGreaterThanOrEqual(2);
    const script = readFileSync(SETUP, 'utf8');
    for (const target of targets) expect(script.includes(`proxy/native/build/Release/${target}.node`), `${target}.node in setup.sh`).toBe(true);
  });

  it('runs npm ci in a tree installed from the same lock file whose proxy/native lacks one of its addons', () => {
    // The tree as an install from before no_dump.node: the lock's stamp, pkcs11js and the keyless bridge built.
    const lock = '{"lockfileVersion": 3}\n';
    writeFileSync(join(dir, 'package-lock.json'), lock);
    mkdirSync(join(dir, 'node_modules', 'pkcs11js', 'build', 'Release'), { recursive: true });
    writeFileSync(join(dir, 'node_modules', '.keyedge-lock.sha256'), `${createHash('sha256').update(lock).digest('hex')}\n`);
    writeFileSync(join(dir, 'node_modules', 'pkcs11js', 'build', 'Release', 'pkcs11.node'), '');
    mkdirSync(join(dir, 'proxy', 'native', 'build', 'Release'), { recursive: true });
    writeFileSync(join(dir, 'proxy', 'native', 'build', 'Release', 'keyless_bridge.node'), '');
    // The script's own function and list, with npm, say and die recording what they were asked.
    const harness = `
      eval "$(sed -n '/^NATIVE_ADDONS=/p;/^ensure_node_modules() {/,/^}/p' "$0")"
      say() { echo "say: $*"; }
      die() { echo "die: $*"; exit 1; }
      npm() { echo "npm $*"; }
      cd "$1" && ensure_node_modules && echo "skipped"`;
    let out: string;
    try {
      out = execFileSync('bash', ['-c', harness, SETUP, dir], { encoding: 'utf8', timeout: 10_000 });
    } catch (err) {
      out = String((err as { stdout?: string }).stdout);
    }
    expect(out).toContain('npm ci');
    // The stubbed npm built nothing: the missing addon is named.
    expect(out).toContain('die: proxy/native/build/Release/no_dump.node was not built');
  });
});
