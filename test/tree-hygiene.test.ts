/**
 * The tree as committed: no file git tracks holds a merge's leftover
 * conflict markers. Biome parses only code, so a marker left in a Markdown
 * file (README, SPEC, bench notes) would otherwise ship unnoticed. And no
 * symbolic link is tracked: a checkout's node_modules or native build linked
 * from elsewhere, once committed, replaces the real directory of every
 * checkout that merges it. And the top level holds only what README's layout
 * names: a profile or a scratch file written where a command ran, once
 * committed, ships in every clone.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from './helpers/basics.js';

/** A conflict marker line as git writes it (seven characters at the start of a line). */
const MARKER = /^(?:<{7}|>{7})(?: |$)|^={7}$/m;
const TEXT = /\.(?:ts|cts|mts|js|cjs|mjs|json|md|sh|c|h|gyp|yml|yaml|conf|txt)$|^\.ci\/run$/;

describe('tree hygiene', () => {
  it('no tracked text file holds a conflict marker', () => {
    const files = execFileSync('git', ['ls-files'], { cwd: REPO, encoding: 'utf8' })
      .split('\n')
      .filter((file) => TEXT.test(file) && file !== 'package-lock.json');
    expect(files.length).toBeGreaterThan(100);
    const marked = files.filter((file) => MARKER.test(readFileSync(path.join(REPO, file), 'utf8')));
    expect(marked).toEqual([]);
  });

  it('no symbolic link is tracked', () => {
    // `git ls-files -s`: mode 120000 is a symbolic link.
    const links = execFileSync('git', ['ls-files', '-s'], { cwd: REPO, encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.startsWith('120000 '));
    expect(links).toEqual([]);
  });

  it('the top level holds only what the layout names', () => {
    // README's layout: the project's folders, its manifests and configs, the CLI's entry files; dotfiles (.ci/, .gitignore).
    const allowed = new Set([
      'bench',
      'config',
      'keyserver',
      'proxy',
      'test',
      'README.md',
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'biome.jsonc',
      'keyedge.ts',
      'keyedge.cts',
    ]);
    const top = new Set(
      execFileSync('git', ['ls-files'], { cwd: REPO, encoding: 'utf8' })
        .split('\n')
        .filter((file) => file !== '')
        .map((file) => file.split('/')[0]!),
    );
    expect([...top].filter((entry) => !entry.startsWith('.') && !allowed.has(entry))).toEqual([]);
  });
});
