/**
 * A variable's bytes wiped from the environment block this process was
 * started with (Linux), once the variable is out of process.env.
 *
 * Why: taking a variable out of process.env (unsetenv(3)) only drops libc's
 * pointer to it. The string stays where execve(2) put it, at the top of the
 * stack, and /proc/<pid>/environ shows that block (mm->env_start to env_end,
 * proc(5)) for the process's whole life to any process of the same user: a
 * worker of the proxy, which faces the clients, could read its primary's
 * /proc/<ppid>/environ, or the key server's /proc/<pid>/environ, and find the
 * key server PIN there (proxy/acme/token-keys.ts, keyserver/shared/pin-variable.ts
 * take it out). The block's bounds
 * are fields 50 and 51 of /proc/self/stat (proc(5), since Linux 3.5) and a
 * process may write its own memory through /proc/self/mem; the entry is
 * overwritten with NULs in place (nothing points to it once unset: moving the
 * entries after it would leave libc's pointers to them wrong).
 *
 * Elsewhere (no /proc, or a /proc without those fields) nothing is wiped and
 * the caller is told so.
 */
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';

/** The bounds of the environment block, from /proc/self/stat; undefined where it does not say. */
function environBlock(): { start: number; end: number } | undefined {
  const stat = readFileSync('/proc/self/stat', 'latin1');
  // Field 2 (comm, in parentheses) may hold spaces and parentheses: fields 3 on follow its last ')'.
  const fields = stat
    .slice(stat.lastIndexOf(')') + 2)
    .trim()
    .split(' ');
  const start = fields[50 - 3];
  const end = fields[51 - 3];
  if (start === undefined || end === undefined || !/^\d+$/.test(start) || !/^\d+$/.test(end)) return undefined;
  // fs.writeSync takes a number: user addresses fit in 47 bits; one past 2^53 (5-level paging) is not tried.
  const bounds = { start: Number(start), end: Number(end) };
  const sane = Number.isSafeInteger(bounds.end) && bounds.start > 0 && bounds.end > bounds.start && bounds.end - bounds.start <= 1 << 24;
  return sane ? bounds : undefined;
}

/**
 * Overwrites every `name=…` entry of the environment block with NULs. Call it only once `name` is out of
 * process.env. True when the block no longer holds such an entry; false where it could not be read or written.
 */
export function wipeFromEnviron(name: string): boolean {
  let fd: number | undefined;
  try {
    const block = environBlock();
    if (block === undefined) return false;
    const bytes = Buffer.alloc(block.end - block.start);
    fd = openSync('/proc/self/mem', 'r+');
    if (readSync(fd, bytes, 0, bytes.length, block.start) !== bytes.length) return false;
    const prefix = Buffer.from(`${name}=`, 'latin1');
    for (let at = 0; at < bytes.length; ) {
      const nul = bytes.indexOf(0, at);
      const next = nul < 0 ? bytes.length : nul;
      if (next - at >= prefix.length && bytes.subarray(at, at + prefix.length).equals(prefix)) {
        bytes.fill(0, at, next);
        if (writeSync(fd, bytes, at, next - at, block.start + at) !== next - at) return false;
      }
      at = next + 1;
    }
    return true;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
