/**
 * What a proxy process loads to start: the fleet's etcd client (etcd3, with
 * gRPC and protobufjs, some 0.3 s of CPU to load) only when `etcd` is set.
 * The primary loads it in cluster-startup.ts's fleetStore, the ticket ring's
 * fleet write in store/tickets.ts; no static import of the primary's or a
 * worker's modules reaches it, so a proxy without a fleet, and each worker it
 * starts or replaces, does not pay for it. Checked by importing both entry
 * modules (proxy/cli.ts's two branches, as built) in a child whose resolve
 * hook records every package it is asked for. The same for `keyedge key`,
 * which the proxy's ACME key children run. Where a run loads the CLI bundle
 * (dist/bundle/, config/bundle.mjs), the packages inside it are not asked for
 * by name: those of each chunk it loads are read from the chunk's module
 * comments (`// node_modules/<package>/…`, esbuild's mark of where each
 * bundled module came from).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect, it } from 'vitest';
import { REPO, tempDir } from './helpers/basics.js';

/** The packages (bare specifiers) a child asks for while it runs `args` (node's own flags first), with a resolve hook that records them. */
function packagesAsked(args: readonly string[]): { status: number | null; stderr: string; packages: Set<string> } {
  const dir = tempDir('keyedge-start-modules-');
  const hooks = join(dir, 'hooks.mjs');
  const asked = join(dir, 'packages.txt');
  // Written to a file at once, not to stderr: the hooks run on a thread of their own, whose stderr reaches the process's
  // through the main thread and was lost at exit once under load (Node 24).
  // Each line: the specifier, a tab, the URL it resolved to.
  writeFileSync(
    hooks,
    `import { appendFileSync } from 'node:fs';\nexport async function resolve(s, c, next) { const r = await next(s, c); appendFileSync(${JSON.stringify(asked)}, s + '\\t' + r.url + '\\n'); return r; }\n`,
  );
  const register = join(dir, 'register.mjs');
  writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
  const child = spawnSync(process.execPath, ['--import', register, ...args], { cwd: REPO, encoding: 'utf8' });
  // No file: the run resolved nothing.
  const lines = existsSync(asked)
    ? readFileSync(asked, 'utf8')
        .split('\n')
        .filter((line) => line !== '')
    : [];
  const packages = new Set<string>();
  for (const [specifier = '', url = ''] of lines.map((line) => line.split('\t'))) {
    if (!/^(\.|node:|file:|\/)/.test(specifier)) packages.add(specifier);
    if (url.startsWith(BUNDLE)) for (const [, name] of readFileSync(fileURLToPath(url), 'utf8').matchAll(BUNDLED_MODULE)) packages.add(name ?? '');
  }
  return { status: child.status, stderr: child.stderr, packages };
}

const BUNDLE = pathToFileURL(join(REPO, 'dist', 'bundle')).href;
/** esbuild's comment above each module it bundled from a package: `// node_modules/@scope/name/file.js`. */
const BUNDLED_MODULE = /^\/\/ node_modules\/((?:@[^/]+\/)?[^/]+)\//gm;

it('neither the primary nor a worker loads the etcd client without a fleet', () => {
  const [primary, worker] = ['cluster.js', 'cluster-worker.js'].map((m) => JSON.stringify(pathToFileURL(join(REPO, 'dist', 'proxy', m)).href));
  const { status, stderr, packages } = packagesAsked(['--input-type=module', '-e', `await import(${primary}); await import(${worker});`]);
  expect(status, stderr).toBe(0);
  // The hook sees packages: the check would pass vacuously if it saw none.
  expect(packages.has('undici')).toBe(true);
  expect([...packages].filter((p) => /etcd|grpc|protobuf/.test(p ?? ''))).toEqual([]);
});

/**
 * `keyedge key` (the proxy's ACME key children run `key generate` and `key delete` for each certificate key) opens the
 * token without the key server's daemon (its metrics: prom-client) and without X.509 (only `list` and `csr` need it):
 * loading them took `keyedge key` from 0.38 to 0.74 s of CPU.
 */
it('a keyedge key run loads neither the key server daemon nor X.509 code', () => {
  const { status, stderr, packages } = packagesAsked([join(REPO, 'dist', 'keyedge.cjs'), 'key', '--help']);
  expect(status, stderr).toBe(0);
  expect(packages.has('pkcs11js')).toBe(true);
  expect([...packages].filter((p) => /x509|reflect-metadata|prom-client/.test(p ?? ''))).toEqual([]);
});

/**
 * `keyedge cert` loads each action's modules when it runs: `--help` and usage errors need none, and `issue` (a request
 * to the running proxy) its config only, no X.509 code and no key server client. Loading every action's took
 * `cert --help` 0.62 s of CPU, now about 0.1.
 */
it('keyedge cert --help loads no package, and cert issue neither X.509 code nor the token', () => {
  const help = packagesAsked([join(REPO, 'dist', 'keyedge.cjs'), 'cert', '--help']);
  expect(help.status, help.stderr).toBe(0);
  expect([...help.packages].filter((p) => p !== '')).toEqual([]);
  // It fails on the config file it cannot read, once the config schema (zod) is loaded: the hook is seen working.
  const missing = join(tempDir('keyedge-start-modules-'), 'missing.json');
  const issue = packagesAsked([join(REPO, 'dist', 'keyedge.cjs'), 'cert', 'issue', '--domain', 'a.example', '--config', missing]);
  expect(issue.status, issue.stderr).toBe(1);
  expect(issue.packages.has('zod')).toBe(true);
  expect([...issue.packages].filter((p) => /x509|reflect-metadata|pkcs11js/.test(p ?? ''))).toEqual([]);
});
