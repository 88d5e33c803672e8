/**
 * The `keyedge` executable's choice between the CLI bundle (dist/bundle/, package.json's `bundle`) and the compiled
 * modules (keyedge.cts): the bundle when it is at least as new as dist/keyedge.js, the modules otherwise, so a
 * `tsc -p .` after a bundle never runs stale code. After `npm test`'s build (CI), the bundle is there, fresh, and
 * runs from its own directory (its package.json lookup, keyedge.ts's `version`).
 */
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, REPO, removeDir, tempDir } from './helpers/basics.js';

const execFileAsync = promisify(execFile);
const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) removeDir(dir);
});

/** A dist/ with the real keyedge.cjs and two stand-ins that say which one ran; `bundle` is the bundle's age. */
function standIns(bundle: 'newer' | 'older' | 'same' | 'none'): string {
  const dist = tempDir('keyedge-entry-');
  dirs.push(dist);
  copyFileSync(CLI, join(dist, 'keyedge.cjs'));
  const stub = (name: string): string => `export async function run() { process.stdout.write('${name}'); return 0; }\n`;
  writeFileSync(join(dist, 'keyedge.js'), stub('modules'));
  const modulesAt = new Date('2026-01-02T00:00:00Z');
  utimesSync(join(dist, 'keyedge.js'), modulesAt, modulesAt);
  if (bundle !== 'none') {
    mkdirSync(join(dist, 'bundle'));
    writeFileSync(join(dist, 'bundle', 'keyedge.js'), stub('bundle'));
    const offset = { newer: 1000, older: -1000, same: 0 }[bundle];
    const at = new Date(modulesAt.getTime() + offset);
    utimesSync(join(dist, 'bundle', 'keyedge.js'), at, at);
  }
  return dist;
}

const ran = async (dist: string): Promise<string> => (await execFileAsync(process.execPath, [join(dist, 'keyedge.cjs')])).stdout;

describe('which build the keyedge executable runs', () => {
  it('runs the bundle when it was built after the compiled modules', async () => {
    expect(await ran(standIns('newer'))).toBe('bundle');
  });

  it('runs the bundle when both have the same time (npm pack sets one time on every file)', async () => {
    expect(await ran(standIns('same'))).toBe('bundle');
  });

  it('runs the compiled modules when they are newer than the bundle (tsc -p . after a bundle)', async () => {
    expect(await ran(standIns('older'))).toBe('modules');
  });

  it('runs the compiled modules when there is no bundle', async () => {
    expect(await ran(standIns('none'))).toBe('modules');
  });
});

// `npm test` (CI) bundles after its compile; a `tsc -p .` alone does not, and its runs use the compiled modules.
describe.runIf(process.env.CI !== undefined)("npm test's build", () => {
  it('leaves a bundle at least as new as the compiled modules, so every spawned keyedge runs it', () => {
    const bundleAt = statSync(join(REPO, 'dist', 'bundle', 'keyedge.js')).mtimeMs;
    expect(bundleAt).toBeGreaterThanOrEqual(statSync(join(REPO, 'dist', 'keyedge.js')).mtimeMs);
  });

  it("runs from the bundle's directory: --version finds package.json two levels up", async () => {
    const { version } = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
    const script = `const { run } = await import(${JSON.stringify(join(REPO, 'dist', 'bundle', 'keyedge.js'))}); process.exitCode = await run(['--version']);`;
    const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script]);
    expect(stdout.trim()).toBe(version);
  });
});
