/**
 * A process holding the key server PIN made non-dumpable
 * (proxy/native/src/no_dump.c: prctl(PR_SET_DUMPABLE, 0), Linux): the proxy's
 * primary with a PIN variable for its key children (proxy/acme/token-keys.ts),
 * the key server (keyserver/cli/keyserver-commands.ts) and every `keyedge key`
 * (keyserver/cli/key-commands.ts).
 *
 * Why: each keeps the PIN, or a session logged in with it, in memory. Any
 * process of the same user (a proxy worker taken over, which faces the
 * clients) could read that memory through /proc/<pid>/mem, or ptrace it,
 * wherever ptrace is not restricted (kernel.yama.ptrace_scope 0). A
 * non-dumpable process's memory (and, to a user other than root, its
 * environment and descriptors in /proc) needs CAP_SYS_PTRACE, as for
 * ssh-agent. Side effects: no core dump, and debugging it (gdb -p, strace -p,
 * lsof) needs root.
 */
import { createRequire } from 'node:module';
import { builtAddon } from './addon-path.js';

/**
 * True when the process is now non-dumpable; false where the call does nothing (not Linux). KEYEDGE_ERR_SETUP when the
 * addon was never built (addon-path.ts).
 */
export function setNotDumpable(): boolean {
  const addon = createRequire(import.meta.url)(builtAddon('no_dump.node', 'the no-dump addon')) as { setNotDumpable(): boolean };
  return addon.setNotDumpable();
}
