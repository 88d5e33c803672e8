/**
 * config/setting-file.ts, the one door for a file a setting names, on real files: a FIFO (open(2) would wait for a
 * writer), a link to /dev/zero (read for ever), a file over its reader's cap, a missing one, and a regular one.
 */
import { execFileSync } from 'node:child_process';
import { symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readSettingFile, SettingFileError } from '../config/setting-file.js';
import { removeDir, tempDir } from './helpers/basics.js';

const dir = tempDir('keyedge-setting-file-');
afterAll(() => removeDir(dir));

/** What readSettingFile threw: its reason and errno code; or the bytes' text when it read the file. */
function outcome(file: string, maxBytes: number, look?: () => void): { reason: string; code: string | undefined } | string {
  try {
    return readSettingFile(file, maxBytes, look).toString('utf8');
  } catch (err) {
    expect(err).toBeInstanceOf(SettingFileError);
    return { reason: (err as SettingFileError).message, code: (err as SettingFileError).code };
  }
}

describe('readSettingFile', () => {
  it('refuses unread a FIFO, a link to /dev/zero and a file past the cap; says a missing file by its errno; reads a regular file', () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const zero = join(dir, 'zero');
    symlinkSync('/dev/zero', zero);
    const big = join(dir, 'big');
    writeFileSync(big, 'x'.repeat(101));
    const good = join(dir, 'good');
    writeFileSync(good, 'secret-value\n');
    let looked = 0;
    expect(outcome(fifo, 100, () => looked++)).toEqual({ reason: 'not a regular file', code: undefined });
    expect(outcome(zero, 100, () => looked++)).toEqual({ reason: 'not a regular file', code: undefined });
    expect(outcome(big, 100, () => looked++)).toEqual({ reason: '101 bytes, more than 100', code: undefined });
    expect(looked, 'a refused file is not looked at').toBe(0);
    expect(outcome(join(dir, 'missing'), 100)).toEqual({ reason: 'ENOENT', code: 'ENOENT' });
    expect(outcome(good, 100, () => looked++)).toBe('secret-value\n');
    expect(looked).toBe(1);
  });
});
