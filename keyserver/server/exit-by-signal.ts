/**
 * Ending the key server's process by a signal, after its log is written out.
 *
 * Why a signal: a thread stuck inside the PKCS#11 module (a sign the token
 * never answers) cannot be joined, and Node joins its threads on a normal
 * exit (process.exit() included), so only a signal ends such a process. The
 * caller picks it: the signal that asked for a stop (death by SIGTERM is what
 * a supervisor expects of a stop), or SIGKILL where the process ends for its
 * supervisor to start it again (systemd's Restart=on-failure restarts after
 * SIGKILL, not after SIGTERM; never a core-dumping signal: the core of a
 * process with an in-process token holds its keys and the PIN).
 */
import type { Logger } from '../shared/log.js';

/** How long the exit waits for the log to be written out. */
const LOG_FLUSH_WAIT_MS = 1_000;

/** Ends the process by `signal` with its default action, once the log is flushed or LOG_FLUSH_WAIT_MS have passed. */
export function exitBySignal(log: Logger, signal: NodeJS.Signals): void {
  const exit = (): void => {
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  };
  // A pipe to a collector that takes nothing more must not hold the exit.
  // Not unref'd: an event loop left empty would end the process normally, and that waits for the stuck thread.
  setTimeout(exit, LOG_FLUSH_WAIT_MS);
  log.flush(exit);
}
