/** Moved to keyserver.ts (LabPki); this path stays for its importers. */
export { type KeyType, LabPki } from './keyserver.js';
