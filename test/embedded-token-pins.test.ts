import { existsSync, lstatSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { embeddedTokenPaths, prepareEmbeddedToken, readPinFile } from '../keyserver/token/embedded.js';

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
