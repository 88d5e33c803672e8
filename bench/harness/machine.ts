/** Moved to report.ts (describeMachine, MachineInfo); this path stays for its importers. */
export { describeMachine, type MachineInfo } from './report.js';
