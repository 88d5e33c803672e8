/** Moved to runner.ts (Ctrl-C and the exit status of a bench's main); this path stays for its importers. */
export { exitOnInterrupt, runBench } from './runner.js';
