/** Moved to summary.ts (comparing two results); this path stays for its importers. */
export { compareSummaries, formatComparison, pct, relativeChange } from './summary.js';
