/** Moved to runner.ts (the clean-round rule and the cells every report shares); this path stays for its importers. */
export * from './runner.js';
