/**
 * `npm run bundle`: the compiled CLI (dist/keyedge.js, after `tsc -p .`) and everything it imports as a few ES
 * module files in dist/bundle/, which dist/keyedge.cjs runs when they are newer than the compiled modules.
 *
 * Why: a process of ours (the proxy's primary and each worker, the key server, each `keyedge key` or `cert` run)
 * spent most of its start loading some hundreds of modules, ours and the libraries'. Bundled, a proxy worker's
 * imports cost about half the CPU (bench/results/2026-12-07-cli-bundle.md); a replacement worker serves sooner
 * and the test suite, which starts several hundred such processes, runs in less time.
 *
 * What stays outside: pkcs11js (a native addon, found beside its JavaScript) and etcd3 (its gRPC client reads its
 * .proto files from its own directory at run time; loaded only by a fleet's proxy). The native bridge is found by
 * path from the bundle as from dist/ (keyserver/shared/addon-path.ts).
 */
import { existsSync, renameSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

const target = 'dist/bundle';
// Written beside, then swapped in by two renames: a keyedge process starting meanwhile (a replacement worker of a
// running proxy) finds the whole earlier bundle, none (and runs the compiled modules), or the whole new one, never
// an entry whose chunks are not written yet. Chunks of an earlier bundle go with it: they would otherwise stay beside
// the new ones and go into `npm pack`'s package.
const next = `${target}.next`;
const old = `${target}.old`;
rmSync(next, { recursive: true, force: true });
await build({
  entryPoints: ['dist/keyedge.js'],
  outdir: next,
  bundle: true,
  // Each subcommand's modules stay in their own chunks, loaded by the `import()` that loads them now.
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // jsonc-parser's `main` is a UMD build whose `require`s of its own files esbuild cannot follow; its ES build can.
  mainFields: ['module', 'main'],
  // Class and function names as written: pino's error serialiser logs `err.constructor.name` as the error's type.
  keepNames: true,
  sourcemap: true,
  external: ['pkcs11js', 'etcd3'],
  // The CommonJS libraries inside call `require('node:…')`; an ES module has no `require` of its own.
  banner: { js: "import { createRequire as keyedgeCreateRequire } from 'node:module'; const require = keyedgeCreateRequire(import.meta.url);" },
  chunkNames: '[name]-[hash]',
  logLevel: 'warning',
});
rmSync(old, { recursive: true, force: true });
if (existsSync(target)) renameSync(target, old);
renameSync(next, target);
rmSync(old, { recursive: true, force: true });
