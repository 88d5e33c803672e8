/** Moved to spawn.ts (load clients as processes); this path stays for its importers. */
export { type ClientOutput, type ClientProcess, exitedCleanly, shownCommand, startClient } from './spawn.js';
