/**
 * An HTTP/2 request's header list as the HTTP/1.1 forward path reads it,
 * and an origin's HTTP/1.1 answer head as an HTTP/2 answer may carry it.
 * Pure: no I/O.
 *
 * Requests (RFC 9113 §8.3.1): the pseudo-headers go (`:method` and `:path`
 * travel separately, `:scheme` is ours), `:authority` becomes Host (§8.3.1:
 * it takes precedence over a Host field; one that differs is noted, for
 * own-answers.ts to refuse), and split `cookie` fields are joined
 * with "; " (§8.2.3) since HTTP/1.1 allows one. Connection-specific fields
 * (§8.2.2) cannot arrive (nghttp2 refuses the stream), but the forward path
 * drops hop-by-hop fields anyway (forward.ts endToEndHeaders).
 *
 * Answers: an HTTP/2 answer must not carry connection-specific fields
 * (§8.2.2; Node refuses to send them), nor `:`-names; what the origin sent in
 * them (Connection and what it names, Keep-Alive, Transfer-Encoding, Upgrade,
 * Proxy-Connection) is dropped; values lose the spaces and tabs around them
 * (§8.2.1); of a field Node sends only once (Content-Type, Date, ETag, …)
 * repeated by the origin, the first is kept.
 * A head or trailer section larger than nghttp2 sends in one block is not
 * relayed (`sendableFieldSection`).
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { IncomingHttpHeaders as Http2Headers, OutgoingHttpHeaders } from 'node:http2';

/** The request's method, target and authority, and its other fields as HTTP/1.1 names them. */
export interface Http1Request {
  readonly method: string;
  /** Origin-form (`/path?query`), or `*`; whatever nghttp2 let through otherwise. */
  readonly path: string;
  /** From `:authority`, else Host (RFC 9113 §8.3.1); undefined when neither came. */
  readonly authority: string | undefined;
  /** A Host field came with an `:authority` that names something else (RFC 9113 §8.3.1: malformed). */
  readonly hostDiffers: boolean;
  readonly headers: IncomingHttpHeaders;
}

/**
 * `rawHeaders`: the stream's [name, value, …] as Node received them (the
 * 'stream' event's fourth argument). Names are taken from it and values from
 * `h2`, Node's folded object (its rules for repeated fields kept): a for-in
 * over that null-prototype object enumerates a dictionary, sorting its keys
 * on every request.
 */
export function http1Request(h2: Http2Headers, rawHeaders?: readonly string[]): Http1Request {
  const headers: IncomingHttpHeaders = {};
  if (rawHeaders !== undefined) for (let i = 0; i < rawHeaders.length; i += 2) copyField(h2, rawHeaders[i]!, headers);
  else for (const name in h2) copyField(h2, name, headers);
  const host = single(h2.host);
  const authority = single(h2[':authority']) ?? host;
  if (authority !== undefined) headers.host = authority;
  // Host names are case-insensitive (RFC 9110 §4.2.3); anything else that differs names another entity.
  const hostDiffers = host !== undefined && host !== authority && host.toLowerCase() !== authority?.toLowerCase();
  return { method: single(h2[':method']) ?? 'GET', path: single(h2[':path']) ?? '/', authority, hostDiffers, headers };
}

/** One field of `h2` into `headers` (a repeated name is copied again, to the same value). */
function copyField(h2: Http2Headers, name: string, headers: IncomingHttpHeaders): void {
  if (name.charCodeAt(0) === 58 /* ':' */) return;
  const value = h2[name];
  if (value === undefined) return;
  // Node joins repeated cookie fields already; a list is joined here in case it did not (RFC 9113 §8.2.3).
  if (name === 'cookie') headers.cookie = Array.isArray(value) ? value.join('; ') : value;
  else (headers as Record<string, string | string[]>)[name] = value;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** Connection values that name no other field. */
const NAMES_NOTHING = new Set(['keep-alive', 'close', 'Keep-Alive', 'Close']);

/** Never allowed in an HTTP/2 field section (RFC 9113 §8.2.2); Node throws ERR_HTTP2_INVALID_CONNECTION_HEADERS on them. */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings', 'te']);

/**
 * The fields Node's HTTP/2 layer refuses to send more than once
 * (ERR_HTTP2_HEADER_SINGLE_VALUE, lib/internal/http2/util.js
 * kSingleValueHeaders; the same on Node 20, 22 and 24). HTTP/1.1 allows an
 * origin to repeat them (two identical Content-Length, RFC 9110 §8.6; an
 * X-Content-Type-Options set by both the application and its server), and
 * an HTTP/1.1 client gets them as sent; an HTTP/2 one got a 502 for the whole
 * answer. The first is kept, as Node itself keeps the first when it reads them.
 */
const SINGLE_VALUE = new Set([
  'access-control-allow-credentials',
  'access-control-max-age',
  'access-control-request-method',
  'age',
  'authorization',
  'content-encoding',
  'content-language',
  'content-length',
  'content-location',
  'content-md5',
  'content-range',
  'content-type',
  'date',
  'dnt',
  'etag',
  'expires',
  'from',
  'host',
  'if-match',
  'if-modified-since',
  'if-none-match',
  'if-range',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'range',
  'referer',
  'retry-after',
  'tk',
  'upgrade-insecure-requests',
  'user-agent',
  'x-content-type-options',
]);

/**
 * An origin's raw head or trailers (undici's [name, value, …], bytes as
 * latin1, RFC 9110 §5.5) as an HTTP/2 field section, in one pass and one
 * object: `:status` first when given, names lower-cased and values without
 * the whitespace around them (RFC 9113 §8.2.1), a repeated field as a list
 * (two Set-Cookie stay two; of one Node sends once, SINGLE_VALUE, the
 * first), what HTTP/2 forbids dropped (connection-specific fields, what
 * Connection names, `:`-names), then `extra`, which replaces what the origin
 * sent of the same name.
 */
export function http2Fields(raw: readonly (Buffer | string)[], extra: Readonly<Record<string, string>>, status?: number): OutgoingHttpHeaders {
  // Most answers name nothing in Connection (keep-alive, close): no set is made for them.
  let named: Set<string> | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]!.length !== 10 || latin1(raw[i]!).toLowerCase() !== 'connection') continue;
    const value = latin1(raw[i + 1]!);
    if (NAMES_NOTHING.has(value)) continue;
    for (const token of value.split(',')) {
      const name = token.trim().toLowerCase();
      if (name !== '') (named ??= new Set()).add(name);
    }
  }
  // A plain object: what Node's respond copies fastest.
  const out: OutgoingHttpHeaders = status === undefined ? {} : { ':status': status };
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = latin1(raw[i]!).toLowerCase();
    if (CONNECTION_SPECIFIC.has(name) || named?.has(name) || name.charCodeAt(0) === 58) continue;
    const value = withoutOws(latin1(raw[i + 1]!));
    const seen = out[name];
    if (seen === undefined) out[name] = value;
    else if (SINGLE_VALUE.has(name)) continue;
    else if (typeof seen === 'string') out[name] = [seen, value];
    else if (Array.isArray(seen)) seen.push(value);
    // A name Object.prototype has (constructor, __proto__): defined, not set, so it is just a field.
    else Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
  }
  return Object.assign(out, extra);
}

/**
 * The largest header block nghttp2 sends (NGHTTP2_MAX_HEADERSLEN, which Node
 * keeps unless `maxSendHeaderBlockLength` is set), as nghttp2 sizes a block
 * before compressing it: 12 octets, and per field 12 more than its name and
 * value (`nghttp2_hd_deflate_bound`). A larger one is not sent: Node reports a
 * 'frameError' and then closes the whole session (GOAWAY), refusing the
 * client's next streams, whoever's they are. An origin gets past undici's
 * 16 KiB head bound with thousands of short fields (5,000 `a:` are 5 KB).
 */
const MAX_SEND_HEADER_BLOCK = 65_536;
/** What is added to the origin's fields: `:status`, Node's `date`, `extra` (HSTS), the frame header; with room to spare. */
const ADDED_FIELDS = 512;

/** Whether the field section made of `raw` (an origin's head or trailers) fits in what nghttp2 sends, counted as above. */
export function sendableFieldSection(raw: readonly (Buffer | string)[]): boolean {
  let size = 12 + ADDED_FIELDS;
  for (let i = 0; i < raw.length; i++) size += raw[i]!.length + (i & 1) * 12;
  return size <= MAX_SEND_HEADER_BLOCK;
}

/**
 * A field value without the whitespace around it. RFC 9110 §5.5 makes the
 * spaces and tabs around a value no part of it, and undici leaves the ones at
 * its end (`Content-Length: 37 `); RFC 9113 §8.2.1 makes a value that starts
 * or ends with them malformed, and nghttp2 clients take it so: nghttp2 1.70
 * (Node 24's client) resets the stream of an answer whose Content-Length has
 * a trailing space (PROTOCOL_ERROR) though the answer was whole, and 1.61 and
 * 1.69 (Node 20's, 22's) drop the field. Only SP and HTAB: String's trim()
 * would take a latin1 0xA0 too, which is obs-text, part of a value.
 */
function withoutOws(value: string): string {
  let end = value.length;
  while (end > 0 && isOws(value.charCodeAt(end - 1))) end--;
  let start = 0;
  while (start < end && isOws(value.charCodeAt(start))) start++;
  return start === 0 && end === value.length ? value : value.slice(start, end);
}

function isOws(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

function latin1(bytes: Buffer | string): string {
  return typeof bytes === 'string' ? bytes : bytes.toString('latin1');
}

/** Named answer fields (our own answers) with what HTTP/2 forbids removed, and `:status` set. */
export function http2Answer(
  status: number,
  headers: Record<string, string | string[] | undefined>,
  extra: Readonly<Record<string, string>>,
): OutgoingHttpHeaders {
  // Most answers name nothing in Connection: no set is made for them.
  const connection = headers.connection;
  const named =
    connection === undefined
      ? undefined
      : new Set(
          String(connection)
            .split(',')
            .map((t) => t.trim().toLowerCase())
            .filter((t) => t !== ''),
        );
  const out: OutgoingHttpHeaders = { ':status': status };
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || CONNECTION_SPECIFIC.has(name) || named?.has(name) || name.charCodeAt(0) === 58) continue;
    out[name] = value;
  }
  return Object.assign(out, extra);
}
