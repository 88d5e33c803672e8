/**
 * A file holding a secret (the token PIN, the proxy's admin token, etcd
 * password, ACME EAB key, a TLS private key) that its group or others may
 * read or write, judged as PostgreSQL judges .pgpass and OpenSSH a private
 * key: any bit of mode & 0o077. Such a file is warned about, not refused:
 * refusing would stop a working deployment at its next restart, and saying
 * nothing left the secret readable by every local user without a word. The
 * warning names the file and its mode, never its content. A link is judged
 * by the file it leads to (stat follows it): a Kubernetes secret mount's
 * `..data` links are 0777 themselves and say nothing of the secret's mode.
 */
import { statSync } from 'node:fs';

/** The warning for `what` (e.g. "the PIN file") at `path` with this `mode` (stat's), or undefined when only its owner has it. */
export function openToOthers(what: string, path: string, mode: number): string | undefined {
  const bits = mode & 0o777;
  if ((bits & 0o077) === 0) return undefined;
  return `${what} ${path} is open to its group or others (mode 0${bits.toString(8)}): chmod 600 it, readable by its owner only`;
}

/** openToOthers for the file `path` now leads to; undefined too when it cannot be read (its reader says why when it reads it). */
export function looseSecretFile(what: string, path: string): string | undefined {
  try {
    return openToOthers(what, path, statSync(path).mode);
  } catch {
    return undefined;
  }
}
