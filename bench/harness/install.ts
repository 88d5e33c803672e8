/**
 * The benchmarks' one installer of Debian packages (nginx, caddy, ab, libengine-pkcs11-openssl, p11-kit): find a
 * binary, or as root with apt-get install what is missing (an `apt-get update` only when the first attempt fails), or
 * say why not. A comparison that cannot run is skipped with that reason, never a crash. apt may start a package's
 * system service (Debian's postinst does unless a policy-rc.d forbids it); the benches run their own instance with
 * their own config, so a service started by an install is stopped again.
 */
import { execFileSync } from 'node:child_process';

export type Found = { readonly ok: true; readonly path: string } | { readonly ok: false; readonly reason: string };

/** The absolute path of `binary` on PATH (or in /usr/sbin, which a non-root PATH may lack), or undefined. */
export function which(binary: string): string | undefined {
  try {
    const out = execFileSync('sh', ['-c', `command -v "$1" || { test -x "/usr/sbin/$1" && echo "/usr/sbin/$1"; }`, 'sh', binary], {
      encoding: 'utf8',
      timeout: 5000,
    }).trim();
    return out === '' ? undefined : out;
  } catch {
    return undefined;
  }
}

export function isInstalled(pkg: string): boolean {
  try {
    return /Status: install ok installed/.test(execFileSync('dpkg', ['-s', pkg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 }));
  } catch {
    return false;
  }
}

function run(command: string, args: readonly string[]): void {
  execFileSync(command, args, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
}

/** Stops the system service apt may have started; best effort (a container without an init system is fine). */
function stopSystemService(service: string): void {
  const ways: [string, string[]][] = [
    ['systemctl', ['stop', service]],
    ['service', [service, 'stop']],
  ];
  for (const [command, args] of ways) {
    if (which(command) === undefined) continue;
    try {
      return run(command, args);
    } catch {
      // not running, or this init system does not manage it: try the next way
    }
  }
}

/** Installs the packages of `packages` not installed yet; undefined when done, else why not. `services`: stopped after. */
export function aptInstall(packages: readonly string[], log: (line: string) => void, services: readonly string[] = []): string | undefined {
  const missing = packages.filter((p) => !isInstalled(p));
  if (missing.length === 0) return undefined;
  const hint = `install with: apt-get install -y ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) return `not root (${hint})`;
  if (which('apt-get') === undefined) return `no apt-get to install ${missing.join(' ')}`;
  const args = ['install', '-y', '-qq', '--no-install-recommends', ...missing];
  log(`installing ${missing.join(' ')} (apt-get)`);
  try {
    try {
      run('apt-get', args);
    } catch {
      log('apt-get install failed; running apt-get update and trying again');
      run('apt-get', ['update', '-qq']);
      run('apt-get', args);
    }
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim().split('\n').slice(-2).join(' ') ?? '';
    return `installing ${missing.join(' ')} failed: ${stderr || (err as Error).message}`;
  }
  for (const s of services) stopSystemService(s);
  return undefined;
}

/** `binary` from PATH; when missing and `install` is true, installs `aptPackage` (and stops the service it may start). */
export function findOrInstall(binary: string, aptPackage: string, install: boolean, log: (line: string) => void): Found {
  const present = which(binary);
  if (present !== undefined) return { ok: true, path: present };
  if (!install) return { ok: false, reason: `${binary} is not installed (install it with: apt-get install -y ${aptPackage})` };
  const failed = aptInstall([aptPackage], log, [aptPackage]);
  if (failed !== undefined) return { ok: false, reason: `${binary} is not installed: ${failed}` };
  const installed = which(binary);
  return installed === undefined ? { ok: false, reason: `${aptPackage} was installed but ${binary} is still not found` } : { ok: true, path: installed };
}

/** First line of `binary args` (a version string; nginx -v writes to stderr), or undefined. */
export function versionOf(binary: string, args: readonly string[]): string | undefined {
  try {
    const out = execFileSync('sh', ['-c', '"$0" "$@" 2>&1', binary, ...args], { encoding: 'utf8', timeout: 5000 });
    return out.split('\n')[0]?.trim() || undefined;
  } catch {
    return undefined;
  }
}
