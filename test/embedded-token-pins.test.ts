import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { embeddedTokenPaths, prepareEmbeddedToken, readPinFile } from '../keyserver/token/embedded.js';
import { CLI } from './helpers/basics.js';

// The embedded token's PINs are written once, when the token is made. A link left where a PIN file goes (a dangling
// one: the PIN file "does not exist") was written through: the PIN landed wherever the link pointed, outside the
// state directory, with that file's own mode if it existed.
let dir: string;
let outside: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-pins-'));
  outside = mkdtempSync(join(tmpdir(), 'keyedge-pins-outside-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

describe('the embedded token’s PIN files', () => {
  it('are written in the state directory, 0600, never through a link left in their place', () => {
    const paths = embeddedTokenPaths(dir);
    mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
    symlinkSync(join(outside, 'user-pin-here'), paths.pinFile);
    symlinkSync(join(outside, 'so-pin-here'), paths.soPinFile);
    const token = prepareEmbeddedToken(dir, 'keyedge-pins');
    expect({
      userThrough: existsSync(join(outside, 'user-pin-here')),
      soThrough: existsSync(join(outside, 'so-pin-here')),
      user: [lstatSync(paths.pinFile).isFile(), (lstatSync(paths.pinFile).mode & 0o777).toString(8)],
      so: [lstatSync(paths.soPinFile).isFile(), (lstatSync(paths.soPinFile).mode & 0o777).toString(8)],
    }).toEqual({ userThrough: false, soThrough: false, user: [true, '600'], so: [true, '600'] });
    expect(readPinFile(token.pinFile).length).toBe(32);
  });
});

/** `keyedge key list` (the built CLI) on the embedded default under `cwd`/var. */
/** `keyedge key list` in `cwd`; `lockedFirst`: its own pid written to the first run's lock first, as a killed earlier life of the pid left it. */
function keyList(cwd: string, lockedFirst = false): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = lockedFirst
      ? spawn('bash', ['-c', 'mkdir -p var/token && echo $$ > var/token/init.lock && exec "$0" "$1" key list', process.execPath, CLI], {
          cwd,
          stdio: ['ignore', 'ignore', 'pipe'],
        })
      : spawn(process.execPath, [CLI, 'key', 'list'], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

/** The tokens SoftHSM2 keeps in the embedded objects directory: one directory each. */
const tokenDirs = (cwd: string): string[] => readdirSync(join(cwd, 'var', 'token', 'objects'));

describe('the embedded token’s first run', () => {
  it('run by several processes at once makes one token, which every later run opens', async () => {
    // Before: 2-3 tokens labelled keyedge, one user.pin kept, and every later run failed CKR_PIN_INCORRECT.
    const cwd = mkdtempSync(join(dir, 'concurrent-'));
    const runs = await Promise.all([keyList(cwd), keyList(cwd), keyList(cwd), keyList(cwd)]);
    expect(runs.map((r) => [r.status, r.stderr])).toEqual(Array(4).fill([0, '']));
    expect(tokenDirs(cwd)).toHaveLength(1);
    expect(await keyList(cwd)).toEqual({ status: 0, stderr: '' });
  }, 60_000);

  it("takes over a first run's lock holding its own pid, left by an earlier life of the pid (a container's restarted process)", async () => {
    // Before: the run waited 60 s for itself, then failed 'being set up by process <its own pid>', and so did every later one.
    const cwd = mkdtempSync(join(dir, 'own-pid-'));
    expect(await keyList(cwd, true)).toEqual({ status: 0, stderr: '' });
    expect(tokenDirs(cwd)).toHaveLength(1);
    expect(readdirSync(join(cwd, 'var', 'token')).filter((name) => name.startsWith('init.lock'))).toEqual([]);
  }, 30_000);

  it('finishes a first run killed between renaming its SO PIN and its user PIN into place', async () => {
    const cwd = mkdtempSync(join(dir, 'between-renames-'));
    expect((await keyList(cwd)).status).toBe(0);
    // so.pin renamed, user.pin still pending: what a kill between the two renames left.
    const token = join(cwd, 'var', 'token');
    renameSync(join(token, 'user.pin'), join(token, 'user.pin.new'));
    // Before: refused, 'no PIN file', pointing the operator at moving a working token aside.
    expect(await keyList(cwd)).toEqual({ status: 0, stderr: '' });
    expect(existsSync(join(token, 'user.pin'))).toBe(true);
    expect(tokenDirs(cwd)).toHaveLength(1);
  }, 60_000);

  it('refuses a token whose PIN file is missing, naming its directory, and makes no second token', async () => {
    const cwd = mkdtempSync(join(dir, 'interrupted-'));
    expect((await keyList(cwd)).status).toBe(0);
    // What a run killed between C_InitToken and writing user.pin left behind.
    rmSync(join(cwd, 'var', 'token', 'user.pin'));
    const again = await keyList(cwd);
    expect(again.status).toBe(1);
    expect(again.stderr).toBe(
      `keyedge: KEYEDGE_ERR_TOKEN_PIN: the embedded token's directory ${join(cwd, 'var', 'token', 'objects')} holds a token 'keyedge' but there is no PIN file ` +
        `${join(cwd, 'var', 'token', 'user.pin')} for it (a first run interrupted, or the file removed): restore the PIN file, or move the directory aside to start a new, empty token\n`,
    );
    expect(tokenDirs(cwd)).toHaveLength(1);
  }, 60_000);
});
