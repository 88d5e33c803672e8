/**
 * The CA's JSON answers checked for the shape RFC 8555 gives them before the
 * issuer reads them: the directory (§7.1.1), an order (§7.1.3) and an
 * authorization with its challenges (§7.1.4, §8).
 *
 * Why: the issuer read them as typed. A directory URL that reached a JSON
 * service other than a CA (a mistyped path, a proxy's error page in JSON), or
 * a CA answering an order or authorization without a field, failed the order
 * with whatever the first missing field caused ("order.authorizations is not
 * iterable", "POST undefined: Failed to parse URL from undefined"), naming
 * neither the request nor what was wrong. Each is now an AcmeError saying the
 * request (its URL masked, as every ACME error: client.ts) and what the answer
 * is not. A challenge token outside the base64url alphabet (§8.1) is refused
 * too: it goes into the HTTP-01 path and onto the workers' board.
 * Pure: no I/O.
 */
import type { AcmeAuthorization, AcmeDirectory, AcmeOrder } from './client.js';
import { AcmeError } from './errors.js';

const ORDER_STATUSES = new Set(['pending', 'ready', 'processing', 'valid', 'invalid']);
const AUTHORIZATION_STATUSES = new Set(['pending', 'valid', 'invalid', 'deactivated', 'expired', 'revoked']);
/** RFC 8555 §8.1: a token is base64url, at least 128 bits of entropy (22 characters); no CA sends a kilobyte. */
const TOKEN = /^[A-Za-z0-9_-]{1,1024}$/;
/** The challenge types whose token the key authorization is made of. */
const TOKEN_TYPES = new Set(['http-01', 'dns-01', 'tls-alpn-01']);

function isUrl(value: unknown): value is string {
  return typeof value === 'string' && URL.canParse(value) && /^https?:$/.test(new URL(value).protocol);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The directory (§7.1.1): its newNonce, newAccount and newOrder URLs, and renewalInfo (RFC 9773 §3) when there is one. */
export function checkedDirectory(body: unknown, request: string): AcmeDirectory {
  if (!isObject(body)) throw notA('directory (RFC 8555 §7.1.1)', request, undefined);
  const wrong = ['newNonce', 'newAccount', 'newOrder'].filter((field) => !isUrl(body[field]));
  if (body.renewalInfo !== undefined && !isUrl(body.renewalInfo)) wrong.push('renewalInfo');
  if (wrong.length > 0) throw notA('directory (RFC 8555 §7.1.1)', request, wrong);
  return body as unknown as AcmeDirectory;
}

/** An order (§7.1.3): its status, its authorizations' URLs, its finalize URL, and its certificate's URL when it has one. */
export function checkedOrder(body: unknown, request: string): AcmeOrder {
  if (!isObject(body)) throw notA('order (RFC 8555 §7.1.3)', request, undefined);
  const wrong = [
    ...(ORDER_STATUSES.has(body.status as string) ? [] : ['status']),
    ...(Array.isArray(body.authorizations) && body.authorizations.every(isUrl) ? [] : ['authorizations']),
    ...(isUrl(body.finalize) ? [] : ['finalize']),
    ...(body.certificate === undefined || isUrl(body.certificate) ? [] : ['certificate']),
  ];
  if (wrong.length > 0) throw notA('order (RFC 8555 §7.1.3)', request, wrong);
  return body as unknown as AcmeOrder;
}

/** An authorization (§7.1.4): its status, its identifier, and challenges each with a type, a URL, a base64url token and a status. */
export function checkedAuthorization(body: unknown, request: string): AcmeAuthorization {
  if (!isObject(body)) throw notA('authorization (RFC 8555 §7.1.4)', request, undefined);
  const identifier = body.identifier;
  const wrong = [
    ...(AUTHORIZATION_STATUSES.has(body.status as string) ? [] : ['status']),
    ...(isObject(identifier) && typeof identifier.type === 'string' && typeof identifier.value === 'string' ? [] : ['identifier']),
    ...(Array.isArray(body.challenges) && body.challenges.every(isChallenge) ? [] : ['challenges']),
  ];
  if (wrong.length > 0) throw notA('authorization (RFC 8555 §7.1.4)', request, wrong);
  return body as unknown as AcmeAuthorization;
}

/** `request`'s answer is not an ACME `what`: not a JSON object (`fields` undefined), or these fields are missing or invalid. */
function notA(what: string, request: string, fields: readonly string[] | undefined): AcmeError {
  const why = fields === undefined ? 'not a JSON object' : `${fields.join(', ')} missing or invalid`;
  return new AcmeError(`${request}: not an ACME ${what}: ${why}`, {});
}

function isChallenge(value: unknown): boolean {
  return (
    isObject(value) &&
    typeof value.type === 'string' &&
    isUrl(value.url) &&
    typeof value.status === 'string' &&
    // RFC 8555 §8.3, §8.4, RFC 8737 §3: these types carry a token; another type may carry none.
    (value.token === undefined ? !TOKEN_TYPES.has(value.type) : typeof value.token === 'string' && TOKEN.test(value.token))
  );
}
