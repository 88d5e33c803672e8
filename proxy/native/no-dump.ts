/**
 * The primary made non-dumpable while it holds the key server PIN
 * (src/no_dump.c: prctl(PR_SET_DUMPABLE, 0), Linux).
 *
 * Why: with `acme` on and the PIN in a variable, the primary keeps the PIN in
 * memory for its `keyedge key` children (proxy/acme/token-keys.ts). Its
 * workers face the clients and run as the same user: one taken over could
 * read the primary's /proc/<pid>/mem (or ptrace it) wherever ptrace is not
 * restricted (kernel.yama.ptrace_scope 0). A non-dumpable process's memory
 * (and, to a user other than root, its environment and descriptors in /proc)
 * needs CAP_SYS_PTRACE, as for ssh-agent. Side effects: no core dump of the
 * primary, and debugging it (gdb -p, strace -p, lsof) needs root.
 */
import { createRequire } from 'node:module';
import { builtAddon } from './addon-path.js';

/** True when the process is now non-dumpable; false where the call does nothing (not Linux). */
export function setNotDumpable(): boolean {
  const addon = createRequire(import.meta.url)(builtAddon('no_dump.node', 'the no-dump addon')) as { setNotDumpable(): boolean };
  return addon.setNotDumpable();
}
