/**
 * Where a built addon of proxy/native is: build/Release/<file> next to the
 * sources (tests, ts sources) or, from dist/proxy/native/ (compiled), in the
 * source tree node-gyp built it in. Shared by the keyless bridge (index.ts)
 * and the primary's no-dump call (no-dump.ts).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KeyedgeError } from '../../keyserver/shared/errors.js';

/** The built addon's path; KEYEDGE_ERR_SETUP, naming `what`, when it was never built. */
export function builtAddon(file: string, what: string): string {
  const rel = `build/Release/${file}`;
  const candidates = [fileURLToPath(new URL(`./${rel}`, import.meta.url)), fileURLToPath(new URL(`../../../proxy/native/${rel}`, import.meta.url))];
  const path = candidates.find((candidate) => existsSync(candidate));
  if (path === undefined) {
    throw new KeyedgeError('KEYEDGE_ERR_SETUP', `${what} is not built (proxy/native/${rel}): run \`npm ci\`, or \`npx node-gyp rebuild\` in proxy/native`);
  }
  return path;
}
