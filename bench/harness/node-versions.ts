/** Moved to install.ts (other Node majors, installed as npm packages); this path stays for its importers. */
export { nodeBinary, nodeVersionOf, OWN_MAJOR, parseMajors } from './install.js';
