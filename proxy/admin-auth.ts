/**
 * Who may change something through the admin API: every POST, PUT and DELETE
 * needs `Authorization: Bearer <token>` (RFC 6750 §2.1), the token read from
 * admin.tokenFile on each request so it can be rotated live; without a token
 * in the file, changes are disabled, as with a file that is not a regular
 * one or is over 64 KiB, never read (readToken). The comparison takes the
 * same time whatever the token, and no answer or log line ever holds it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import type http from 'node:http';

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
  if (typeof expected !== 'string')
    return { status: 403, message: `admin changes are disabled: ${tokenFile} (admin.tokenFile) is ${expected.unread}, not read` };
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
 * ever) held the primary's event loop, and every admin answer, reload and worker replacement with it.
 */
function readToken(tokenFile: string): string | { unread: string } {
  let fd: number;
  try {
    fd = openSync(tokenFile, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return '';
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) return { unread: 'not a regular file' };
    if (stat.size > MAX_TOKEN_BYTES) return { unread: `${stat.size} bytes, more than ${MAX_TOKEN_BYTES}` };
    return readFileSync(fd, 'utf8').trim();
  } catch {
    return '';
  } finally {
    closeSync(fd);
  }
}
