/**
 * What a proxy process loads to start: the fleet's etcd client (etcd3, with
 * gRPC and protobufjs, some 0.3 s of CPU to load) only when `etcd` is set.
 * The primary loads it in cluster-startup.ts's fleetStore, the ticket ring's
 * fleet write in store/tickets.ts; no static import of the primary's or a
 * worker's modules reaches it, so a proxy without a fleet, and each worker it
 * starts or replaces, does not pay for it. Checked by importing both entry
 * modules (proxy/cli.ts's two branches, as built) in a child whose resolve
 * hook records every package it is asked for.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { expect, it } from 'vitest';
import { REPO, tempDir } from './helpers/keyserver.js';

it('neither the primary nor a worker loads the etcd client without a fleet', () => {
  const dir = tempDir('keyedge-start-modules-');
  const hooks = join(dir, 'hooks.mjs');
  const asked = join(dir, 'packages.txt');
  // Written to a file at once, not to stderr: the hooks run on a thread of their own, whose stderr reaches the process's
  // through the main thread and was lost at exit once under load (Node 24).
  writeFileSync(
    hooks,
    `import { appendFileSync } from 'node:fs';\nexport async function resolve(s, c, next) { if (!/^(\\.|node:|file:|\\/)/.test(s)) appendFileSync(${JSON.stringify(asked)}, s + '\\n'); return next(s, c); }\n`,
  );
  const register = join(dir, 'register.mjs');
  writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
  const [primary, worker] = ['cluster.js', 'cluster-worker.js'].map((m) => JSON.stringify(pathToFileURL(join(REPO, 'dist', 'proxy', m)).href));
  const child = spawnSync(process.execPath, ['--import', register, '--input-type=module', '-e', `await import(${primary}); await import(${worker});`], {
    cwd: REPO,
    encoding: 'utf8',
  });
  expect(child.status, child.stderr).toBe(0);
  const packages = new Set(readFileSync(asked, 'utf8').split('\n'));
  // The hook sees packages: the check would pass vacuously if it saw none.
  expect(packages.has('undici')).toBe(true);
  expect([...packages].filter((p) => /etcd|grpc|protobuf/.test(p ?? ''))).toEqual([]);
});
