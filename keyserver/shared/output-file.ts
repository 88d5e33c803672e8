/**
 * A file an operator names for a command's output (`key csr --out FILE`):
 * written whole or not at all, and never through a symbolic link. Written in
 * place, as it was, a reader (a script picking the request up, a crash)
 * could find it half-written, and a link at FILE (planted by another user in
 * a shared directory, or another tool's) had the file it points at
 * overwritten.
 *
 * A temp file beside FILE (O_CREAT|O_EXCL, so not a link either), fsync'd,
 * renamed over FILE: rename(2) replaces the name, never what a link there
 * points at, so a link made between the check and the rename is replaced,
 * not written through. It is the certificate store's way (proxy/certs/
 * store-files.ts, writeAtomic), which this layer may not import (README,
 * "Layout"); its temp names carry what the store's sweep of leftovers needs,
 * which an operator's file does not.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, fsyncSync, openSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { linkTarget } from './link-target.js';

/** FILE is a symbolic link: nothing was written. */
export class OutputFileIsLink extends Error {
  override readonly name = 'OutputFileIsLink';
  constructor(
    readonly file: string,
    readonly target: string,
  ) {
    super(`${file} is a symbolic link (to ${target})`);
  }
}

/** Writes `content` to `file` by a renamed temp file; OutputFileIsLink when `file` is a link, dangling or not. */
export function writeOutputFile(file: string, content: string | Buffer, mode: number): void {
  const target = linkTarget(file);
  if (target !== undefined) throw new OutputFileIsLink(file, target);
  const temp = join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(temp, 'wx', mode);
  try {
    try {
      // The umask may have narrowed the mode given to open().
      fchmodSync(fd, mode);
      writeFileSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, file);
  } catch (err) {
    try {
      unlinkSync(temp);
    } catch {
      // Renamed already, or never made.
    }
    throw err;
  }
}
