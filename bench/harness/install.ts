/**
 * The benchmarks' one installer. Debian packages: found, or as root apt-get installed (`apt-get update` only when the
 * first attempt fails; a service apt starts is stopped again), or a reason why not: a comparison that cannot run is
 * skipped with it, never a crash. Other Node majors: the npm package `node@<major>` (the official binaries), installed
 * once into ~/.cache/keyedge-bench; the product's native parts are N-API and load on every major.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

type Log = (line: string) => void;
type Found = { readonly ok: true; readonly path: string } | { readonly ok: false; readonly reason: string };

function output(command: string, args: readonly string[], timeoutMs = 5000): string | undefined {
  try {
    return execFileSync(command, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return undefined;
  }
}

/** The absolute path of `binary` on PATH (or in /usr/sbin, which a non-root PATH may lack), or undefined. */
export const which = (binary: string): string | undefined =>
  output('sh', ['-c', `command -v "$1" || { test -x "/usr/sbin/$1" && echo "/usr/sbin/$1"; }`, 'sh', binary])?.trim() || undefined;

/** First line of `binary args` (a version string; nginx -v writes to stderr), or undefined. */
export function versionOf(binary: string, args: readonly string[]): string | undefined {
  const text = output('sh', ['-c', '"$0" "$@" 2>&1', binary, ...args]);
  return text?.split('\n')[0]?.trim() || undefined;
}

const aptGet = (args: readonly string[]) =>
  execFileSync('apt-get', args, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });

/** Installs those of `packages` not installed yet; undefined when done, else why not. `services`: stopped after (best effort). */
export function aptInstall(packages: readonly string[], log: Log, services: readonly string[] = []): string | undefined {
  const missing = packages.filter((p) => !/Status: install ok installed/.test(output('dpkg', ['-s', p], 10_000) ?? ''));
  if (missing.length === 0) return undefined;
  if (process.getuid?.() !== 0) return `not root (install with: apt-get install -y ${missing.join(' ')})`;
  if (which('apt-get') === undefined) return `no apt-get to install ${missing.join(' ')}`;
  const args = ['install', '-y', '-qq', '--no-install-recommends', ...missing];
  log(`installing ${missing.join(' ')} (apt-get)`);
  try {
    try {
      aptGet(args);
    } catch {
      log('apt-get install failed; running apt-get update and trying again');
      aptGet(['update', '-qq']);
      aptGet(args);
    }
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim().split('\n').slice(-2).join(' ') ?? '';
    return `installing ${missing.join(' ')} failed: ${stderr || (err as Error).message}`;
  }
  // A container without an init system is fine: not running, or not this init system's.
  for (const service of services) output('sh', ['-c', 'systemctl stop "$1" || service "$1" stop', 'sh', service], 300_000);
  return undefined;
}

/** `binary` from PATH; when missing and `install` is true, installs `aptPackage` (and stops the service it may start). */
export function findOrInstall(binary: string, aptPackage: string, install: boolean, log: Log): Found {
  const failed = install && which(binary) === undefined ? aptInstall([aptPackage], log, [aptPackage]) : undefined;
  const path = which(binary);
  if (path !== undefined) return { ok: true, path };
  const why = failed ?? (install ? `${aptPackage} was installed but ${binary} is still not found` : `install it with: apt-get install -y ${aptPackage}`);
  return { ok: false, reason: `${binary} is not installed (${why})` };
}

export const OWN_MAJOR = Number(process.versions.node.split('.')[0]);

export function parseMajors(list: string | undefined): number[] {
  if (list === undefined) return [OWN_MAJOR];
  const majors = list.split(',').map((s) => Number(s.trim()));
  for (const m of majors) if (!Number.isInteger(m) || m < 18) throw new Error(`--node takes Node majors such as 20,22,24; got '${list}'`);
  return [...new Set(majors)];
}

export function nodeBinary(major: number, log: Log): string {
  if (major === OWN_MAJOR) return process.execPath;
  const dir = join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'keyedge-bench', `node-${major}`);
  const bin = join(dir, 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(bin)) {
    log(`installing Node ${major} (npm install --prefix ${dir} node@${major})`);
    mkdirSync(dir, { recursive: true });
    const args = ['install', '--no-save', '--no-audit', '--no-fund', '--loglevel=error', '--prefix', dir, `node@${major}`];
    execFileSync('npm', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 600_000 });
    if (!existsSync(bin)) throw new Error(`npm installed node@${major} but ${bin} is missing`);
  }
  return bin;
}

export const nodeVersionOf = (bin: string): string =>
  execFileSync(bin, ['-p', 'process.version + " (OpenSSL " + process.versions.openssl + ")"'], { encoding: 'utf8', timeout: 30_000 }).trim();
