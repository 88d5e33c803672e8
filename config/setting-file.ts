/**
 * Reading a file a setting names from a process that serves (a reload, an
 * ACME order, a key server's reopen of its token, a connection to a key
 * server): opened without blocking and read only once fstat of that same
 * descriptor says it is a regular file within the reader's cap. A FIFO at
 * the path held open(2) until a writer came, and a link to /dev/zero was
 * read for ever, with the event loop of the process reading it: every
 * answer, reload and signature it owed waited. O_NONBLOCK changes nothing
 * for a regular file.
 *
 * The reason given (SettingFileError) is the file's type, its size, or the
 * errno code, never its content: the caller names the file and its setting
 * in its own words. In config/, the lowest layer, so that the config
 * loader, both daemons and the proxy read through the same door.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, type Stats } from 'node:fs';

/** How such a file is opened: a FIFO's open(2) returns at once instead of waiting for a writer. */
export const OPEN_UNBLOCKED = constants.O_RDONLY | constants.O_NONBLOCK;

/** Why a file was not read: `code` is the errno code ('ENOENT'...) when it could not be, undefined when it was refused unread. */
export class SettingFileError extends Error {
  override readonly name = 'SettingFileError';
  readonly code: string | undefined;
  constructor(reason: string, code: string | undefined, options?: ErrorOptions) {
    super(reason, options);
    this.code = code;
  }
}

/** Why a file with this stat is not to be read ('not a regular file', its size past `maxBytes`), or undefined. */
export function refusal(stat: Pick<Stats, 'isFile' | 'size'>, maxBytes: number): string | undefined {
  if (!stat.isFile()) return 'not a regular file';
  if (stat.size > maxBytes) return `${stat.size} bytes, more than ${maxBytes}`;
  return undefined;
}

/**
 * The bytes of `file`, opened without blocking and read only once `check` accepted what fstat says of it (check
 * throws to refuse): the stat returned describes the bytes returned. Errors from open(2) and read(2) are thrown as
 * they come.
 */
export function readChecked(file: string, check: (stat: Stats) => void): { readonly bytes: Buffer; readonly stat: Stats } {
  const fd = openSync(file, OPEN_UNBLOCKED);
  try {
    const stat = fstatSync(fd);
    check(stat);
    return { bytes: readFileSync(fd), stat };
  } finally {
    closeSync(fd);
  }
}

/**
 * The bytes of the file a setting names, or a SettingFileError saying why not: not a regular file, over `maxBytes`
 * (both unread), or the errno code. `look` sees the stat of a file about to be read (e.g. to warn of its mode).
 */
export function readSettingFile(file: string, maxBytes: number, look?: (stat: Stats) => void): Buffer {
  try {
    return readChecked(file, (stat) => {
      const refused = refusal(stat, maxBytes);
      if (refused !== undefined) throw new SettingFileError(refused, undefined);
      look?.(stat);
    }).bytes;
  } catch (err) {
    if (err instanceof SettingFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new SettingFileError(code, code, { cause: err });
  }
}
