/**
 * The answers an HTTP/2 stream gets from us before any routing or
 * forwarding (stream.ts): 431 for a header list over its bound, `OPTIONS *`,
 * and 400 for a request target or authority HTTP/2 does not allow. Pure:
 * the request as headers.ts reads it in, a refusal or undefined out.
 */
import type { Refusal } from '../http/handler.js';
import { hostRefusal } from '../http/target.js';
import type { Http1Request } from './headers.js';
import { FIELD_OVERHEAD } from './settings.js';

const SERVER_OPTIONS: Refusal = {
  status: 200,
  code: 'KEYEDGE_HTTP_SERVER_OPTIONS',
  body: '',
  headers: { allow: 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS' },
};
export const HEADERS_TOO_LARGE: Refusal = { status: 431, code: 'KEYEDGE_HTTP_HEADERS_TOO_LARGE', body: 'request header fields too large\n' };
const BAD_TARGET: Refusal = {
  status: 400,
  code: 'KEYEDGE_HTTP_BAD_TARGET',
  body: 'bad request target: expected an origin-form :path\n',
};
const HOST_DIFFERS: Refusal = {
  status: 400,
  code: 'KEYEDGE_HTTP_BAD_TARGET',
  body: 'bad request target: the Host field differs from :authority\n',
};

/**
 * Whether the header list is over `maxBytes`, counted as RFC 9113 §6.5.2
 * does (name + value + 32 per field, pseudo-headers included). Node checks
 * SETTINGS_MAX_HEADER_LIST_SIZE against the settings the client has
 * acknowledged (nghttp2's local settings): a client that never sends the
 * SETTINGS ACK meets Node's default bound instead, and had 100 KB header
 * lists forwarded to the origin past a 16 KiB `limits.maxHeaderBytes` (Node
 * 20.20, nghttp2 1.61; test/abuse-http2-framing.test.ts).
 */
export function headersOverLimit(rawHeaders: readonly string[], maxBytes: number): boolean {
  let size = 0;
  for (let i = 0; i < rawHeaders.length; i++) size += rawHeaders[i]!.length + (i & 1) * FIELD_OVERHEAD;
  return size > maxBytes;
}

/**
 * `OPTIONS *` (RFC 9113 §8.3.1 allows `*` there), a `:path` that is not
 * origin-form (CONNECT has none: extended CONNECT is not offered), or an
 * authority that is not `host[:port]` (http/target.ts: nghttp2 lets `@` and
 * `,` through, RFC 9113 §8.3.1 forbids userinfo there).
 *
 * Origin-form has no fragment (RFC 9112 §3.2.1, RFC 9113 §8.3.1: path and
 * query): nghttp2 lets `#` through, and `/a#/../admin` reached the origin's
 * request line as it came, to be read as a path by one application and cut
 * at the `#` by another. A Host field that names another entity than
 * `:authority` makes the request malformed (RFC 9113 §8.3.1, a SHOULD):
 * routing and the origin's Host follow `:authority`, and an application
 * reading the Host it expected from the client would have been told of a
 * name nobody routed on.
 */
export function ownAnswer(request: Http1Request): Refusal | undefined {
  const { method, path, authority } = request;
  const badAuthority = hostRefusal(authority);
  if (badAuthority !== undefined) return badAuthority;
  if (request.hostDiffers) return HOST_DIFFERS;
  if (method === 'OPTIONS' && path === '*') return SERVER_OPTIONS;
  return method === 'CONNECT' || !path.startsWith('/') || path.includes('#') ? BAD_TARGET : undefined;
}
