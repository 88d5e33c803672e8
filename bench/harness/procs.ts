/** Moved to proc-cpu.ts (affinity, online CPUs, process-group snapshots); this path stays for its importers. */
export { onlineCpus, perUnit, setAffinity, snapshot, type TrackedGroup, usageBetween, type WindowUsage } from './proc-cpu.js';
