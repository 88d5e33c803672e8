/**
 * Finding a third-party server (nginx, caddy) for a comparison scenario, and
 * installing its Debian package when allowed.
 *
 * A comparison that cannot run is skipped with the reason, never a crash:
 * `findOrInstall` returns either the binary's path or why there is none (not
 * installed and not root, no apt-get, the install failed), and the caller
 * marks the scenario skipped with that text.
 *
 * apt may start the package's system service (Debian's postinst does, unless
 * a policy-rc.d forbids it); the benchmarks start their own instance with
 * their own config, so a service started by this install is stopped again.
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

function run(command: string, args: readonly string[]): void {
  execFileSync(command, args, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
}

/** Stops the system service apt may have started for `service`; best effort (no init system in a container is fine). */
function stopSystemService(service: string): void {
  for (const [command, args] of [
    ['systemctl', ['stop', service]],
    ['service', [service, 'stop']],
  ] as const) {
    if (which(command) === undefined) continue;
    try {
      run(command, args);
      return;
    } catch {
      // not running, or this init system does not manage it: try the next way
    }
  }
}

/**
 * `binary` from PATH; when missing and `install` is true, as root with
 * apt-get, installs `aptPackage` (an `apt-get update` only when the first
 * attempt fails) and stops the service the package may have started.
 */
export function findOrInstall(binary: string, aptPackage: string, install: boolean, log: (line: string) => void): Found {
  const present = which(binary);
  if (present !== undefined) return { ok: true, path: present };
  const hint = `install it with: apt-get install -y ${aptPackage}`;
  if (!install) return { ok: false, reason: `${binary} is not installed (${hint})` };
  if (process.getuid?.() !== 0) return { ok: false, reason: `${binary} is not installed and this is not root (${hint})` };
  if (which('apt-get') === undefined) return { ok: false, reason: `${binary} is not installed and there is no apt-get to install ${aptPackage}` };
  const args = ['install', '-y', '-qq', '--no-install-recommends', aptPackage];
  log(`${binary} not found: installing ${aptPackage} (apt-get)`);
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
    return { ok: false, reason: `installing ${aptPackage} failed: ${stderr || (err as Error).message}` };
  }
  stopSystemService(aptPackage);
  const installed = which(binary);
  return installed === undefined ? { ok: false, reason: `${aptPackage} was installed but ${binary} is still not found` } : { ok: true, path: installed };
}

/** First line of `binary args` (a version string), or undefined. */
export function versionOf(binary: string, args: readonly string[]): string | undefined {
  try {
    // nginx -v writes to stderr.
    const out = execFileSync('sh', ['-c', '"$0" "$@" 2>&1', binary, ...args], { encoding: 'utf8', timeout: 5000 });
    return out.split('\n')[0]?.trim() || undefined;
  } catch {
    return undefined;
  }
}
