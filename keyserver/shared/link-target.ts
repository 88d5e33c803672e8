/**
 * What a path points at when it is a symbolic link: for the writers that
 * refuse to write through one (the CLI's output files, the certificate
 * store's entries), which name the link and its target in their refusal.
 * Node built-ins only: both daemons' layers use it.
 */
import { lstatSync, readlinkSync } from 'node:fs';

/**
 * The target of `file` as written in the link (a relative one as it is: what
 * `ls -l` shows); undefined when it is not a link or not there (a directory
 * that cannot be read: the write that follows reports it). A link removed or
 * replaced between the two looks is still one, its target unknown:
 * `(unreadable: ERRNO)`.
 */
export function linkTarget(file: string): string | undefined {
  try {
    if (!lstatSync(file).isSymbolicLink()) return undefined;
  } catch {
    return undefined;
  }
  try {
    return readlinkSync(file);
  } catch (err) {
    return `(unreadable: ${(err as NodeJS.ErrnoException).code ?? 'error'})`;
  }
}
