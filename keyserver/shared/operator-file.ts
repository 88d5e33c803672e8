/**
 * A file an operator names on the command line (`key import --in`, `cert add
 * --chain`), read to its end but never past a cap. Unlike a setting's file
 * (config/setting-file.ts) it may be a pipe: `--in <(vault read …)` or
 * `/dev/stdin` keeps a private key off the disk. Read whole, as before, a
 * path to a device that never ends (/dev/zero, /dev/urandom, a disk) grew the
 * process by some 90 MB a second until memory ran out, the command never
 * answering.
 *
 * `-` is standard input (`vault read … | keyedge key import --in -`), under
 * the same cap: it was taken for a file named `-` (ENOENT).
 */
import { closeSync, openSync, readSync } from 'node:fs';

/** The file held more than the cap: it was not read further. */
export class OperatorFileTooLarge extends Error {
  override readonly name = 'OperatorFileTooLarge';
}

const CHUNK_BYTES = 64 * 1024;

/** What names standard input where a file is asked for, as in most Unix tools. */
export const STANDARD_INPUT = '-';

/** How `file` is named in messages: standard input by its name, not as `-`. */
export function operatorFileName(file: string): string {
  return file === STANDARD_INPUT ? 'standard input' : file;
}

/**
 * The bytes of `file`, or of standard input for `-` (errors of open(2) and read(2) thrown as they come), or
 * OperatorFileTooLarge past `maxBytes`.
 */
export function readOperatorFile(file: string, maxBytes: number): Buffer {
  const stdin = file === STANDARD_INPUT;
  const fd = stdin ? 0 : openSync(file, 'r');
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.alloc(Math.min(CHUNK_BYTES, maxBytes + 1 - total));
      const read = readSync(fd, chunk, 0, chunk.length, null);
      if (read === 0) break;
      chunks.push(chunk.subarray(0, read));
      total += read;
      if (total > maxBytes) {
        for (const c of chunks) c.fill(0);
        throw new OperatorFileTooLarge(`more than ${maxBytes} bytes`);
      }
    }
    const bytes = Buffer.concat(chunks, total);
    // What may be a private key is left in one buffer only, which the caller wipes.
    for (const c of chunks) c.fill(0);
    return bytes;
  } finally {
    // Standard input is the process's: what it does not read stays for no one else, but it is not closed under it.
    if (!stdin) closeSync(fd);
  }
}

/** How a read failure is named in an error: the cap passed, or the errno code; never the content. */
export function operatorFileFailure(err: unknown): string {
  return err instanceof OperatorFileTooLarge ? err.message : ((err as NodeJS.ErrnoException).code ?? 'error');
}
