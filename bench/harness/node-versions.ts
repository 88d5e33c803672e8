/**
 * Other Node majors for the benches' Node servers (--node 20,22,24): the machine's own node stays as it is; another
 * major is the npm package `node@<major>` (the official binaries) installed once with npm into
 * ~/.cache/keyedge-bench/node-<major>, and its binary used in place of process.execPath. The product's native parts
 * are N-API (the keyless bridge) and load on every major; whether they work there is for the run to show (a server
 * that does not start is skipped with its log's tail).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export const OWN_MAJOR = Number(process.versions.node.split('.')[0]);

export function parseMajors(list: string | undefined): number[] {
  if (list === undefined) return [OWN_MAJOR];
  const majors = list.split(',').map((s) => Number(s.trim()));
  for (const m of majors) if (!Number.isInteger(m) || m < 18) throw new Error(`--node takes Node majors such as 20,22,24; got '${list}'`);
  return [...new Set(majors)];
}

/** The node binary of `major`: this process's own, or the npm package's (installed on first use). */
export function nodeBinary(major: number, log: (line: string) => void): string {
  if (major === OWN_MAJOR) return process.execPath;
  const dir = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'keyedge-bench', `node-${major}`);
  const bin = join(dir, 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(bin)) {
    log(`installing Node ${major} (npm install --prefix ${dir} node@${major})`);
    mkdirSync(dir, { recursive: true });
    execFileSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--loglevel=error', '--prefix', dir, `node@${major}`], {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 600_000,
    });
    if (!existsSync(bin)) throw new Error(`npm installed node@${major} but ${bin} is missing`);
  }
  return bin;
}

/** `v22.23.3 (OpenSSL 3.5.8)` of a node binary. */
export function nodeVersionOf(bin: string): string {
  return execFileSync(bin, ['-p', 'process.version + " (OpenSSL " + process.versions.openssl + ")"'], { encoding: 'utf8', timeout: 30_000 }).trim();
}
