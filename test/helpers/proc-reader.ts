/**
 * Reading another process's /proc files as a process of its user would: one
 * without CAP_SYS_PTRACE (a worker of the proxy taken over, another daemon of
 * the same user). Used to show that a process holding the key server PIN
 * keeps it out of that reader's reach.
 */
import { spawnSync } from 'node:child_process';

/**
 * The command prefix that runs a reader as a process of the test's user. As root here, the reader (and the process read)
 * lack CAP_SYS_PTRACE, as any other user's processes or a container's root do; undefined: root without setpriv.
 */
export const SAME_USER: readonly string[] | undefined =
  process.getuid?.() !== 0 ? [] : spawnSync('setpriv', ['--version']).status === 0 ? ['setpriv', '--bounding-set=-sys_ptrace'] : undefined;

/** Run as `node -e SCAN_MEMORY PID NEEDLE`: prints whether the needle is in the process's writable memory, or why it cannot be read. */
export const SCAN_MEMORY = `
const fs = require('node:fs');
const [pid, needle] = process.argv.slice(1);
let fd;
try { fd = fs.openSync('/proc/' + pid + '/mem', 'r'); } catch (err) { console.log(JSON.stringify({ error: err.code })); process.exit(0); }
const want = Buffer.from(needle);
let found = false;
for (const line of fs.readFileSync('/proc/' + pid + '/maps', 'utf8').split('\\n')) {
  const m = /^([0-9a-f]+)-([0-9a-f]+) rw/.exec(line);
  if (m === null || found) continue;
  const start = parseInt(m[1], 16), end = parseInt(m[2], 16);
  for (let at = start; at < end && !found; at += 1 << 20) {
    const buf = Buffer.alloc(Math.min((1 << 20) + want.length, end - at));
    try { fs.readSync(fd, buf, 0, buf.length, at); } catch { break; }
    found = buf.includes(want);
  }
}
console.log(JSON.stringify({ found }));
`;

/**
 * Run as `node -e AWAIT_MEMORY_CLOSED PID MS EXE`: tries to open the process's /proc/<pid>/mem every few milliseconds
 * until that is refused once the process runs EXE (prints { error }), the process is gone ({ gone: true }) or MS pass with
 * it readable ({ readable: true }). EXE: a refusal while the pid is still a launcher (setpriv, before its execve) says
 * nothing of the program's own memory.
 */
export const AWAIT_MEMORY_CLOSED = `
const fs = require('node:fs');
const [pid, ms, exe] = process.argv.slice(1);
const deadline = Date.now() + Number(ms);
const poll = () => {
  try { fs.closeSync(fs.openSync('/proc/' + pid + '/mem', 'r')); }
  catch (err) {
    if (err.code === 'ENOENT' || err.code === 'ESRCH') { console.log(JSON.stringify({ gone: true })); return; }
    let running;
    try { running = fs.readFileSync('/proc/' + pid + '/cmdline', 'latin1').split('\\0')[0]; } catch { running = undefined; }
    if (running === exe) { console.log(JSON.stringify({ error: err.code })); return; }
  }
  if (Date.now() > deadline) console.log(JSON.stringify({ readable: true }));
  else setTimeout(poll, 5);
};
poll();
`;
