/**
 * The judgement of a secret file's mode (keyserver/shared/secret-file.ts) on
 * real files: links are judged by the file they lead to (a Kubernetes secret
 * mount: key -> ..data/key, ..data -> a dated directory), an owner-only file
 * is silent, whoever owns it, and a file that cannot be read says nothing
 * here (its reader says why).
 */
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { looseSecretFile } from '../keyserver/shared/secret-file.js';
import { removeDir, tempDir } from './helpers/basics.js';

const dir = tempDir();
afterAll(() => removeDir(dir));

/** A secret mount holding `name` with this mode in a 0755 dated directory, reached through `..data`. */
function mounted(mount: string, name: string, mode: number): string {
  mkdirSync(join(dir, mount, '..2026_12_05'), { recursive: true, mode: 0o755 });
  writeFileSync(join(dir, mount, '..2026_12_05', name), 'secret-value-81x\n', { mode });
  chmodSync(join(dir, mount, '..2026_12_05', name), mode);
  symlinkSync('..2026_12_05', join(dir, mount, '..data'));
  symlinkSync(join('..data', name), join(dir, mount, name));
  return join(dir, mount, name);
}

describe('a secret file judged by its mode', () => {
  it('through links to an owner-only file (the links 0777, the directory 0755): silent', () => {
    expect(looseSecretFile('the PIN file', mounted('tight', 'pin', 0o600))).toBeUndefined();
    expect(looseSecretFile('the PIN file', mounted('readonly', 'pin', 0o400))).toBeUndefined();
  });

  it("through links to a file others may read (a secret volume's default 0644): named with the target's mode, never the content", () => {
    const path = mounted('loose', 'pin', 0o644);
    const warning = looseSecretFile('the PIN file', path);
    expect(warning).toBe(`the PIN file ${path} is open to its group or others (mode 0644): chmod 600 it, readable by its owner only`);
    expect(warning).not.toContain('secret-value-81x');
  });

  it('a missing file or a dangling link: nothing said here', () => {
    expect(looseSecretFile('the PIN file', join(dir, 'absent'))).toBeUndefined();
    symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
    expect(looseSecretFile('the PIN file', join(dir, 'dangling'))).toBeUndefined();
  });
});
