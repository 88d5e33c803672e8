/**
 * SIGUSR1 kept from opening the inspector of a process holding the key
 * server PIN: the key server, every `keyedge key`, the proxy's primary with a
 * PIN variable (keyserver/cli/pin-guard.ts, proxy/acme/token-keys.ts).
 *
 * Why: Node opens its inspector on 127.0.0.1:9229 when it receives SIGUSR1
 * (`node inspect -p <pid>` sends it), and any process of the same user may
 * send it. The inspector runs any code it is sent in the process, so such a
 * process (a proxy worker taken over) got the PIN the process keeps, though
 * non-dumpable (no-dump.ts) shut /proc/<pid>/mem; and once open, any local
 * user may connect to it. A listener of our own takes the signal instead
 * (libuv installs its handler over Node's), as `--disable-sigusr1` would
 * (Node 22.14 and later only). Side effect: `node inspect -p` cannot attach;
 * start the process with `node --inspect` to debug it.
 *
 * A SIGUSR1 that came before the listener (as the process started) left an
 * inspector open, and code sent to it stays in the process: the caller is
 * told, to read no PIN (strayInspector).
 */
import { createRequire } from 'node:module';

let kept = false;

/** From now on, SIGUSR1 opens no inspector; `ignored` (the first caller's) hears of each one received. Once per process. */
export function keepInspectorClosed(ignored: () => void = () => {}): void {
  if (kept) return;
  kept = true;
  process.on('SIGUSR1', ignored);
}

/**
 * True when an inspector is open that the operator did not ask for (`node --inspect…`, or in NODE_OPTIONS): one a
 * SIGUSR1 opened before keepInspectorClosed.
 */
export function strayInspector(): boolean {
  let open: boolean;
  try {
    open = (createRequire(import.meta.url)('node:inspector') as { url(): string | undefined }).url() !== undefined;
  } catch {
    // A Node built without the inspector: SIGUSR1 opens none.
    return false;
  }
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  // --inspect-port alone sets the port a later SIGUSR1 would use: it opens nothing.
  return open && !flags.some((flag) => /^--inspect(-brk|-wait)?(=|$)/.test(flag));
}
