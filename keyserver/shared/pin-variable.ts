/**
 * The key server PIN of a variable (pkcs11.pin.env), taken out of the
 * environment into this process's memory.
 *
 * Why: /proc/<pid>/environ shows a process's environment to every process of
 * the same user for its whole life. The key server reads the PIN again each
 * time it opens the token again (live-token.ts: the variable it started
 * with), so it keeps the value, in memory only, as the environment held it
 * (the process is non-dumpable besides: no-dump.ts). Taking it out of
 * process.env (unsetenv(3)) leaves its bytes in the block execve(2) wrote:
 * they are wiped there too (environ-wipe.ts).
 */
import { wipeFromEnviron } from './environ-wipe.js';

/** Variables takePinVariable took out of the environment, by name. */
const taken = new Map<string, string>();

/** The variable's value: the environment's, or the one taken out of it; undefined when neither has it. */
export function pinVariable(name: string): string | undefined {
  return process.env[name] ?? taken.get(name);
}

/**
 * Takes `name` out of process.env (pinVariable still gives it) and wipes its bytes from the environment block the
 * process was started with. True when the block no longer holds it (or it was never set); false where the wipe could not
 * be done (no /proc, or a /proc/self/mem this process may not write).
 */
export function takePinVariable(name: string): boolean {
  const value = process.env[name];
  if (value === undefined) return true;
  taken.set(name, value);
  delete process.env[name];
  return wipeFromEnviron(name);
}
