/**
 * Where a built addon of proxy/native is: proxy/native/build/Release/<file>,
 * where node-gyp builds it (`npm ci`, proxy/native/build.cjs), found from
 * this file as the ts sources (tests) or as dist/keyserver/shared/ (compiled,
 * in the checkout and in an installed package alike). Shared by the keyless
 * bridge (proxy/native/index.ts) and the no-dump call (no-dump.ts) of the
 * proxy's primary, the key server and `keyedge key`.
 *
 * Here, not in proxy/native: the key server may not import the proxy
 * (README, "Layout"). It looks the file up on disk; it imports nothing of it.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KeyedgeError } from './errors.js';

/** The built addon's path; KEYEDGE_ERR_SETUP, naming `what`, when it was never built. */
export function builtAddon(file: string, what: string): string {
  const rel = `proxy/native/build/Release/${file}`;
  // keyserver/shared/ is two levels below the root; dist/keyserver/shared/ three.
  const candidates = [fileURLToPath(new URL(`../../${rel}`, import.meta.url)), fileURLToPath(new URL(`../../../${rel}`, import.meta.url))];
  const path = candidates.find((candidate) => existsSync(candidate));
  if (path === undefined) {
    throw new KeyedgeError('KEYEDGE_ERR_SETUP', `${what} is not built (${rel}): run \`npm ci\`, or \`npx node-gyp rebuild\` in proxy/native`);
  }
  return path;
}
