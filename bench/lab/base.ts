/** Moved to keyserver.ts (LabBase, probe); this path stays for its importers. */
export { LabBase, probe } from './keyserver.js';
