/**
 * The request-target (RFC 9112 §3.2) as Node's parser hands it over in
 * `req.url`, brought to the form keyedge routes and forwards:
 *
 * - origin-form (`/path?query`) is kept as received; it has no fragment
 *   (§3.2.1): Node's parser lets `#` through, and `/a#/../admin` reached the
 *   origin's request line as it came, to be read as a path by one
 *   application and cut at the `#` by another: 400;
 * - absolute-form (`https://host/path`, §3.2.2) is parsed by WHATWG URL: its
 *   authority replaces Host ("the server MUST ignore the received Host header
 *   field and replace it with the host information of the request-target"),
 *   so the 421 tenant check and routing run on it, and the origin receives
 *   origin-form (path and query as URL normalises them, dot segments
 *   resolved). Only http and https are accepted, and no userinfo (RFC 9110
 *   §4.2.4: never sent in a request); anything else is 400;
 * - asterisk-form (`*`, §3.2.4) is only for OPTIONS, which asks about the
 *   server as a whole (RFC 9110 §9.3.7), which no origin is: keyedge answers
 *   it, 200 with the methods it forwards (all but CONNECT; which of them an
 *   origin accepts is that origin's business). nginx answers 400 to it. Any
 *   other method with `*` is 400.
 *
 * Authority-form is CONNECT's, which Node hands to 'connect': not served, 400 (upgrade.ts).
 *
 * The Host routed on must be `host[:port]` (RFC 9112 §3.2: a Host with an
 * invalid value is 400; HTTP/2's :authority alike, RFC 9113 §8.3.1).
 */
import type { IncomingMessage } from 'node:http';
import type { Refusal } from './handler.js';

export type RequestTarget =
  /** Forward `path` for `host` (the Host header's value unless the target carried its own). */
  { readonly path: string; readonly host: string | undefined } | { readonly asterisk: true } | { readonly refusal: Refusal; readonly path: string };

const badTarget = (why: string): Refusal => ({ status: 400, code: 'KEYEDGE_HTTP_BAD_TARGET', body: `bad request target: ${why}\n` });
const FORWARDED_METHODS = 'GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH';
/**
 * `host[:port]` (RFC 3986 §3.2.2, §3.2.3): an IP literal or a host name, a
 * port of digits. Routing reads the name before the first `:`, so without
 * this `a.example:1@evil.example` (userinfo, which Host and :authority never
 * carry) was routed to a.example and reached its origin as Host and
 * X-Forwarded-Host, which an application building links from them reads as
 * evil.example (Host header poisoning). The name is a DNS name's characters
 * (letters, digits, `-`, `.`, and `_`, which some names carry), not all that
 * RFC 3986's reg-name allows: a wildcard routes any leftmost label, and
 * `216.58.214.206,a.victim.example` (or `3627734734,a…`) reached the
 * origin of `*.victim.example` as X-Forwarded-Host, whose first
 * comma-separated element an application behind a proxy takes for the host
 * (Express's `trust proxy`): that IP address, in its links. No name served
 * over TLS has a sub-delimiter, `~` or `%` in it. An empty Host passes: it
 * routes nowhere.
 */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]*)(?::[0-9]*)?$/;
const BAD_HOST = badTarget('the Host is not host[:port]');
const FRAGMENT = badTarget('a fragment (#) is not sent in a request');
/**
 * RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400, whatever
 * its target's form; and the connection closes after it, as Node's own
 * check did (handler.ts's answer() then processes nothing after it).
 */
const NO_HOST: Refusal = { ...badTarget('an HTTP/1.1 request without a Host'), headers: { connection: 'close' } };
/**
 * RFC 9112 §3.2 again: more than one Host field line is answered 400, as nginx
 * does. Node keeps the first and drops the others without a word; the route
 * and the origin's Host both come from that first one, so nothing went astray,
 * but which one a client meant is not ours to guess.
 */
const TWO_HOSTS: Refusal = { ...badTarget('more than one Host'), headers: { connection: 'close' } };

/** Whether `raw` (a request's [name, value, …] as received) holds more than one Host line: a look at each name's length. */
function repeatsHost(raw: readonly string[]): boolean {
  let seen = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== 4 || name.toLowerCase() !== 'host') continue;
    if (seen) return true;
    seen = true;
  }
  return false;
}

/** Our 400 for a Host (or HTTP/2 :authority) that is not `host[:port]`; undefined when it is, or absent. */
export function hostRefusal(host: string | undefined): Refusal | undefined {
  return host === undefined || AUTHORITY.test(host) ? undefined : BAD_HOST;
}

const SERVER_OPTIONS: Refusal = { status: 200, code: 'KEYEDGE_HTTP_SERVER_OPTIONS', body: '', headers: { allow: FORWARDED_METHODS } };

/** What `method target` with Host `host` asks for; `path` of a refusal is safe to log (no userinfo, no query). */
export function requestTarget(method: string | undefined, target: string | undefined, host: string | undefined): RequestTarget {
  if (target === undefined || target.startsWith('/')) return { path: target ?? '/', host };
  if (target === '*') return method === 'OPTIONS' ? { asterisk: true } : { refusal: badTarget('* is only for OPTIONS'), path: '*' };
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return { refusal: badTarget('not a URL'), path: '' };
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return { refusal: badTarget('not an http or https URL'), path: '' };
  if (url.username !== '' || url.password !== '') return { refusal: badTarget('userinfo is not allowed'), path: url.pathname };
  return { path: `${url.pathname}${url.search}`, host: url.host };
}

/**
 * Brings `req` to origin-form in place (`url`, and Host from an absolute-form
 * target) before it is routed; or our answer instead, when the target is not
 * one to forward (400, or `OPTIONS *`). Shared by requests and upgrades.
 */
export function normaliseTarget(req: IncomingMessage): Refusal | undefined {
  if (req.headers.host === undefined) {
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 1) return NO_HOST;
  } else if (repeatsHost(req.rawHeaders)) return TWO_HOSTS;
  // Origin-form, nearly every request: nothing to change, nothing to allocate.
  if (req.url?.startsWith('/') === true) return req.url.includes('#') ? FRAGMENT : hostRefusal(req.headers.host);
  const target = requestTarget(req.method, req.url, req.headers.host);
  if ('asterisk' in target) return hostRefusal(req.headers.host) ?? SERVER_OPTIONS;
  // A refused target is logged by its path only: the raw one may hold a password.
  req.url = target.path;
  if ('refusal' in target) return target.refusal;
  if (target.host === undefined) return undefined;
  // The target's authority replaces Host, and is held to the same rule: WHATWG URL keeps `,` and `;` in a host.
  const refused = hostRefusal(target.host);
  if (refused === undefined) req.headers.host = target.host;
  return refused;
}
