/**
 * Who may change something through the admin API: every POST, PUT and DELETE
 * needs `Authorization: Bearer <token>` (RFC 6750 §2.1), the token read from
 * admin.tokenFile on each request so it can be rotated live; without a token
 * in the file, changes are disabled. The comparison takes the same time
 * whatever the token, and no answer or log line ever holds it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
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
  let expected: string;
  try {
    expected = readFileSync(tokenFile, 'utf8').trim();
  } catch {
    expected = '';
  }
  if (expected === '') return { status: 403, message: `admin changes are disabled: no token in ${tokenFile} (admin.tokenFile)` };
  // The scheme is case-insensitive (RFC 9110 §11.1: "bearer" and "BEARER" are Bearer), followed by 1*SP.
  const presented = /^bearer +([!-~]+)$/i.exec(req.headers.authorization ?? '')?.[1];
  if (presented === undefined) return { status: 401, message: 'a bearer token is required' };
  // Digests have equal length, so the comparison time says nothing about the token.
  const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(presented), digest(expected)) ? undefined : { status: 401, message: 'wrong bearer token' };
}
