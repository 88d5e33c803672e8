/**
 * Who may change something through the admin API: every POST, PUT and DELETE
 * needs `Authorization: Bearer <token>` (RFC 6750 §2.1), the token read from
 * admin.tokenFile on each request so it can be rotated live; without a token
 * in the file (or no file), changes are disabled, as with a file that is not a
 * regular one or is over 64 KiB, never read, or one that cannot be read (its
 * errno said: readToken). The comparison takes the
 * same time whatever the token, and no answer or log line ever holds it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import { readSettingFile, SettingFileError } from '../config/setting-file.js';

/** The methods that change something: each needs the admin token. */
export const CHANGES: ReadonlySet<string> = new Set(['POST', 'PUT', 'DELETE']);

/** The 401 or 403 of a change without the token; with `close`, the connection ends after it. */
export function refuse(res: http.ServerResponse, denied: { status: number; message: string }, close: boolean): void {
  res
    .writeHead(denied.status, {
      'content-type': 'text/plain; charset=utf-8',
      ...(denied.status === 401 ? { 'www-authenticate': 'Bearer realm="keyedge-admin"' } : {}),
      ...(close ? { connection: 'close' } : {}),
    })
    .end(`${denied.message}\n`);
}

/** Undefined when the request carries the admin token; else the answer to give. */
export function authorisationFailure(req: http.IncomingMessage, tokenFile: string): { status: number; message: string } | undefined {
  const expected = readToken(tokenFile);
  if (typeof expected !== 'string') {
    const why = expected.errno === undefined ? `is ${expected.unread}, not read` : `cannot be read (${expected.errno})`;
    return { status: 403, message: `admin changes are disabled: ${tokenFile} (admin.tokenFile) ${why}` };
  }
  if (expected === '') return { status: 403, message: `admin changes are disabled: no token in ${tokenFile} (admin.tokenFile)` };
  // The scheme is case-insensitive (RFC 9110 §11.1: "bearer" and "BEARER" are Bearer), followed by 1*SP.
  const presented = /^bearer +([!-~]+)$/i.exec(req.headers.authorization ?? '')?.[1];
  if (presented === undefined) return { status: 401, message: 'a bearer token is required' };
  // Digests have equal length, so the comparison time says nothing about the token.
  const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(presented), digest(expected)) ? undefined : { status: 401, message: 'wrong bearer token' };
}

/** Far past any bearer token: a larger file is not one. */
const MAX_TOKEN_BYTES = 64 * 1024;

/**
 * The token in `tokenFile` ('' when there is none, or no such file), or why the file is not read: it is read in the
 * primary on each change, so a FIFO there (blocking open(2) until a writer comes) or a link to /dev/zero (read for
 * ever) held the primary's event loop, and every admin answer, reload and worker replacement with it
 * (config/setting-file.ts).
 */
function readToken(tokenFile: string): string | { unread: string; errno?: string } {
  try {
    return readSettingFile(tokenFile, MAX_TOKEN_BYTES).toString('utf8').trim();
  } catch (err) {
    // Refused by its type or size: said. Missing: no token, as before it is written. Any other errno (EACCES, ELOOP)
    // is said with its code: it read as "no token in FILE", sending the operator to a file that holds one.
    if (!(err instanceof SettingFileError) || err.code === 'ENOENT') return '';
    return err.code === undefined ? { unread: err.message } : { unread: err.message, errno: err.code };
  }
}
