/**
 * The key server and `keyedge key` processes, which hold the key server PIN
 * (or a session logged in with it), kept from other processes of their user:
 * a PIN variable taken out of the environment and wiped from the block
 * /proc/<pid>/environ shows (pin-variable.ts), and the process made
 * non-dumpable (no-dump.ts), so /proc/<pid>/mem and ptrace need
 * CAP_SYS_PTRACE, and SIGUSR1 kept from opening the inspector
 * (inspector-signal.ts), as the proxy's primary does (proxy/acme/token-keys.ts).
 *
 * In the commands, not in startKeyserver(): both change the whole process,
 * which is the command's to change (tests run key servers inside theirs).
 * Either failing is warned about, naming the variable, never the PIN: the
 * key server still serves (an operator without /proc, or without the addon
 * built, keeps what they had). An inspector a SIGUSR1 opened as the process
 * started is refused instead, before any PIN is read: code sent to it stays.
 */
import type { KeyserverConfig } from '../../config/schema.js';
import { SetupError } from '../shared/errors.js';
import { keepInspectorClosed, strayInspector } from '../shared/inspector-signal.js';
import { setNotDumpable } from '../shared/no-dump.js';
import { takePinVariable } from '../shared/pin-variable.js';

/**
 * For `keyedge keyserver`, before the token is opened: the PIN variable, if the config names one, taken and wiped; then
 * the process made non-dumpable, whatever the PIN's source (its memory holds the PIN and a logged-in session).
 */
export function guardKeyserver(config: KeyserverConfig, warn: (message: string) => void): void {
  noInspector('the key server', warn);
  // In this order: a non-dumpable process's /proc/self/mem belongs to root, which the wipe writes through.
  if ('env' in config.pkcs11.pin && !takePinVariable(config.pkcs11.pin.env)) {
    warn(
      `the key server PIN variable ${config.pkcs11.pin.env} could not be wiped from the environment block the key server was started with ` +
        `(/proc/self/stat or /proc/self/mem not usable): processes of its user may read the PIN in /proc/${process.pid}/environ`,
    );
  }
  notDumpable('the key server', warn);
}

/** For `keyedge key`, before it reads a PIN (its variable, its file, or stdin) or a key to import. */
export function guardKeyCommand(warn: (message: string) => void): void {
  noInspector('keyedge key', warn);
  notDumpable('keyedge key', warn);
}

/** SIGUSR1 ignored from now on; refused (SetupError) when one already opened an inspector, before any PIN is read. */
function noInspector(who: string, warn: (message: string) => void): void {
  keepInspectorClosed(() => warn(`SIGUSR1 ignored: ${who} opens no inspector (it would run the code of any local process, which could read the PIN)`));
  if (strayInspector()) {
    throw new SetupError(
      `an inspector was opened in ${who} (SIGUSR1) as it started, which runs the code of any local process: it reads no PIN; start it again`,
    );
  }
}

function notDumpable(who: string, warn: (message: string) => void): void {
  let done: boolean;
  let why = 'no prctl here';
  try {
    done = setNotDumpable();
  } catch (err) {
    // The addon not built (KEYEDGE_ERR_SETUP): the message says how to build it.
    done = false;
    why = (err as Error).message;
  }
  if (!done) warn(`${who} could not be made non-dumpable (${why}): processes of its user may read the PIN, or its session with the token, in its memory`);
}
