/**
 * Loading a daemon's JSON config: read, parse, validate against a schema that
 * rejects unknown keys, apply defaults, resolve paths, deep-freeze. It runs
 * once, at start, so every mistake surfaces before a socket is opened and no
 * code path can see (or change) a half-valid config later.
 *
 * This file is each daemon's entry to the pipeline (load-json.ts) with its
 * schema and resolver (resolve-keyserver.ts, resolve-proxy.ts). It also
 * re-exports what other parts take from the loader: formatIssues
 * (problems.ts), resolveDomain (resolve-proxy.ts), mergeOverrides (overrides.ts).
 */
import { deepFreeze } from './deep-freeze.js';
import { loadJsonConfig } from './load-json.js';
import { validateConfig } from './problems.js';
import type { ProxyConfig } from './proxy-config.js';
import { proxyFileSchema } from './proxy-schema.js';
import { resolveKeyserver } from './resolve-keyserver.js';
import { resolveProxy } from './resolve-proxy.js';
import { type KeyserverConfig, keyserverFileSchema } from './schema.js';

export { mergeOverrides } from './overrides.js';
export { formatIssues } from './problems.js';
export { resolveDomain } from './resolve-proxy.js';

/**
 * Loads the key server's config from `file` (JSON), or the defaults when no
 * file is given. `overrides` is deep-merged over the file before validation
 * and validated with it. Reads nothing but `file`: modules, PIN files and
 * certificates are opened later by the parts that use them.
 */
export function loadKeyserverConfig(file?: string, overrides?: unknown): KeyserverConfig {
  return loadJsonConfig(file, keyserverFileSchema, resolveKeyserver, overrides);
}

/** Validates an already-parsed config; pure (no I/O), for tests and embedding. */
export function parseKeyserverConfig(raw: unknown, source: string, baseDir: string): KeyserverConfig {
  return deepFreeze(resolveKeyserver(validateConfig(keyserverFileSchema, raw, source), { source, baseDir }));
}

/** Loads the proxy's config from `file` (JSON); same rules as the key server's. */
export function loadProxyConfig(file?: string, overrides?: unknown): ProxyConfig {
  return loadJsonConfig(file, proxyFileSchema, resolveProxy, overrides);
}
