/**
 * The admin API's ACME changes: POST /acme/issue (a body of domains, an entry
 * name, whether to replace the entry's domains) and POST /acme/renew/:name,
 * each answering once the certificate serves. Refusals by their code (400,
 * 404, 409); anything else is the CA's or the order's failure, 502.
 */
import type http from 'node:http';
import { KeyedgeError, UsageError } from '../keyserver/shared/errors.js';
import { readBody, tooLarge } from './admin-body.js';
import { entryName, json } from './admin-http.js';
import type { AdminControl } from './admin-sources.js';
import { STORE_ENTRY_NAME } from './certs/store.js';
import { MAX_DNS_NAME } from '../config/proxy-values.js';

/** The body POST /acme/issue takes: some 100 names and an entry name are a few KiB. */
export const ACME_ISSUE_BYTES = 64 * 1024;

/** Answers an ACME request (the token already checked). */
export function answerAcme(req: http.IncomingMessage, res: http.ServerResponse, path: string, control: AdminControl): void {
  if (path.startsWith('/acme/renew/') || control.acmeIssue === undefined) return answer(res, acmeRequest(path, control, ''));
  // A body over the limit is a 413 as an upload's, the connection closed when the rest of it is not read: a 400 left the
  // client writing into a connection whose answer said nothing of its length.
  void readBody(req, ACME_ISSUE_BYTES).then((body) =>
    typeof body === 'string' ? answer(res, acmeRequest(path, control, body)) : tooLarge(res, body.close, ACME_ISSUE_BYTES),
  );
}

function answer(res: http.ServerResponse, request: Promise<unknown>): void {
  request.then(
    (answer) => json(res, 200, answer),
    (err: Error) =>
      json(res, err instanceof KeyedgeError ? (ACME_STATUS[err.code] ?? 502) : 502, {
        error: {
          code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_ACME',
          problem: (err as { problem?: string }).problem,
          message: err.message,
        },
      }),
  );
}

/** The status of an ACME request's refusal by its code; anything else is the CA's or the order's failure, 502. */
const ACME_STATUS: Partial<Record<KeyedgeError['code'], number>> = {
  KEYEDGE_ERR_USAGE: 400,
  KEYEDGE_ERR_CERT_NOT_FOUND: 404,
  // The entry records other names than those asked for (acme/domain-lists.ts): a conflict with its state, nothing ordered.
  KEYEDGE_ERR_ACME_DOMAINS: 409,
};

/** POST /acme/issue and /acme/renew/NAME: the body's domains, or the entry name from the path. */
async function acmeRequest(path: string, control: AdminControl, body: string): Promise<unknown> {
  const { acmeIssue, acmeRenew } = control;
  if (acmeIssue === undefined || acmeRenew === undefined) throw new UsageError('ACME is not configured (the proxy config has no "acme")');
  if (path.startsWith('/acme/renew/')) {
    const name = entryName(path.slice('/acme/renew/'.length));
    if (name === undefined || !STORE_ENTRY_NAME.test(name)) throw new UsageError('not a certificate name');
    return acmeRenew(name);
  }
  const expected = 'expected a JSON body {"domains": ["a.example", ...], "name"?: "entry", "replaceDomains"?: true}';
  let parsed: { domains?: unknown; name?: unknown; replaceDomains?: unknown };
  try {
    parsed = JSON.parse(body) as typeof parsed;
  } catch {
    throw new UsageError(expected);
  }
  // JSON that is no object (`null`, a number, an array): `null` was read as one and answered 502 "Cannot read properties of null".
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError(expected);
  const domains = parsed.domains;
  if (
    !Array.isArray(domains) ||
    domains.length === 0 ||
    domains.length > 100 ||
    !domains.every((d) => typeof d === 'string' && d.length <= MAX_DNS_NAME && DNS_NAME.test(d))
  ) {
    throw new UsageError(`"domains" must be 1-100 lower-case DNS names of at most ${MAX_DNS_NAME} characters`);
  }
  if (parsed.name !== undefined && (typeof parsed.name !== 'string' || !STORE_ENTRY_NAME.test(parsed.name)))
    throw new UsageError('"name" is not a certificate name');
  if (parsed.replaceDomains !== undefined && typeof parsed.replaceDomains !== 'boolean') throw new UsageError('"replaceDomains" must be true or false');
  return acmeIssue(domains as string[], parsed.name as string | undefined, parsed.replaceDomains === true);
}

/** A lower-case DNS name, optionally with one leading wildcard label (RFC 6125 §6.4.3). */
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
