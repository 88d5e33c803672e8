/** Moved to stats.ts (ClosedLoop, nowNs); this path stays for its importers. */
export { ClosedLoop, nowNs } from './stats.js';
