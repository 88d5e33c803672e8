/**
 * The headers of a forwarded exchange, both ways (forward.ts, upgrade.ts).
 *
 * Hop-by-hop headers are removed both ways (RFC 9110 §7.6.1: the fixed list
 * plus whatever Connection names); Host is the client's for http:// origins
 * and the origin's own for https:// ones unless `originHost` says otherwise;
 * the client's address and scheme go in X-Forwarded-For/-Proto/-Host and
 * Forwarded (RFC 7239). What a client sent in those is dropped, unless it is
 * a trusted peer (trusted-peers.ts): then it is kept and appended to.
 *
 * The other forwarding fields, in names keyedge does not set (the client's
 * address, scheme, host, port or path prefix, what it asked for, or its
 * certificate: forwarding-fields.ts lists them and who reads them), are
 * dropped from a peer not trusted and passed from a trusted one; all of them
 * spelt with `_` for `-` are dropped from everyone, a trusted peer included.
 *
 * Two shapes: objects for node:http's client (upgrades), and flat
 * [name, value, …] lists for the forward path, which undici takes as they are
 * and `writeHead` stores without building an object: the origin's answer
 * head goes to the client in its own order, case and repetitions (two
 * Set-Cookie stay two), with no per-header object property or spread on a
 * request's path.
 *
 * An answer's transfer codings (`refuseTransferCodings`): one chunked, or the
 * answer is not relayed.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { OriginAnswerRefused } from './errors.js';
import { CLIENT_SET, namesClientCertificate, spellsForwarding, UNTRUSTED } from './forwarding-fields.js';
import type { OriginTarget } from './origins.js';
import type { TrustedPeers } from './trusted-peers.js';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]);
/** A trusted peer's request: its forwarding fields are kept, their `_` spellings are not (`spellsForwarding`). */
const KEPT: ReadonlySet<string> = new Set();
const NOTHING: ReadonlySet<string> = new Set();

/** The header names a Connection value lists (RFC 9110 §7.6.1); none when there is no Connection header. */
function connectionNamed(value: string | string[] | undefined): ReadonlySet<string> {
  // Nearly every Connection header is one of these two, which name no header to drop.
  if (value === undefined || value === 'keep-alive' || value === 'close' || value === 'Keep-Alive' || value === 'Close') return NOTHING;
  const named = new Set<string>();
  for (const token of String(value).split(',')) {
    const name = token.trim().toLowerCase();
    if (name !== '') named.add(name);
  }
  return named;
}

export function endToEndHeaders(headers: IncomingHttpHeaders, dropAlso: ReadonlySet<string> = NOTHING): Record<string, string | string[]> {
  const named = connectionNamed(headers.connection);
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name) || dropAlso.has(name)) continue;
    if (dropAlso === UNTRUSTED && namesClientCertificate(name)) continue;
    if ((dropAlso === UNTRUSTED || dropAlso === KEPT) && spellsForwarding(name)) continue;
    out[name] = value;
  }
  return out;
}

/** RFC 7239 §6: an IPv6 address is quoted and bracketed. */
function forwardedFor(address: string): string {
  return address.includes(':') ? `"[${address}]"` : address;
}

/** RFC 9110 §5.6.4 quoted-string. */
function quoted(value: string): string {
  return value.includes('"') || value.includes('\\') ? `"${value.replace(/["\\]/g, '\\$&')}"` : `"${value}"`;
}

const joined = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value.join(', ') : value);

/** The forwarding headers of one request, as `originRequestHeaders` sets them; undefined: leave the client's (a trusted peer's) as it is. */
interface Forwarding {
  readonly xff: string;
  readonly proto: string | undefined;
  readonly host: string | undefined;
  readonly forwarded: string;
  readonly targetHost: string | undefined;
}

function forwarding(headers: IncomingHttpHeaders, keep: boolean, peer: string | undefined, proto: 'https' | 'http', target: OriginTarget): Forwarding {
  const address = peer ?? 'unknown';
  const host = headers.host;
  const xff = keep ? joined(headers['x-forwarded-for']) : undefined;
  // RFC 7239 §4: each proxy appends its own element to the list.
  const element = `for=${forwardedFor(address)};proto=${proto}${host !== undefined ? `;host=${quoted(host)}` : ''}`;
  const previous = keep ? joined(headers.forwarded) : undefined;
  return {
    xff: xff === undefined || xff === '' ? address : `${xff}, ${address}`,
    // -Proto and -Host describe the original request: a trusted peer's are what its client used.
    proto: !keep || headers['x-forwarded-proto'] === undefined ? proto : undefined,
    host: (!keep || headers['x-forwarded-host'] === undefined) && host !== undefined ? host : undefined,
    forwarded: previous === undefined || previous === '' ? element : `${previous}, ${element}`,
    targetHost: target.host(host),
  };
}

/**
 * The headers to send to `target` for a request received from `peer`: the
 * client's end-to-end headers, Host by the target's rule, and the forwarding
 * headers (kept and appended to from a trusted peer, replaced otherwise).
 */
export function originRequestHeaders(
  headers: IncomingHttpHeaders,
  peer: string | undefined,
  proto: 'https' | 'http',
  target: OriginTarget,
  trusted: TrustedPeers | undefined,
): Record<string, string | string[]> {
  const keep = trusted?.trusts(peer) ?? false;
  const out = endToEndHeaders(headers, keep ? KEPT : UNTRUSTED);
  const f = forwarding(headers, keep, peer, proto, target);
  out['x-forwarded-for'] = f.xff;
  if (f.proto !== undefined) out['x-forwarded-proto'] = f.proto;
  if (f.host !== undefined) out['x-forwarded-host'] = f.host;
  out.forwarded = f.forwarded;
  // RFC 9110 §10.1.1: the expectation is met at the edge (expect.ts), not passed on.
  delete out.expect;
  if (f.targetHost === undefined) delete out.host;
  else out.host = f.targetHost;
  return out;
}

/**
 * `originRequestHeaders` as a flat [name, value, …] list, for undici:
 * Host first (RFC 9112 §3.2 asks it first), then the client's end-to-end
 * headers, then the forwarding ones.
 */
export function originRequestHeaderList(
  headers: IncomingHttpHeaders,
  peer: string | undefined,
  proto: 'https' | 'http',
  target: OriginTarget,
  trusted: TrustedPeers | undefined,
): string[] {
  const keep = trusted?.trusts(peer) ?? false;
  const named = connectionNamed(headers.connection);
  const f = forwarding(headers, keep, peer, proto, target);
  // CLIENT_SET's go below, kept or replaced; a trusted peer's CLAIMS pass with its other fields.
  const dropped = keep ? CLIENT_SET : UNTRUSTED;
  const out: string[] = f.targetHost === undefined ? [] : ['host', f.targetHost];
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || name === 'host' || name === 'expect' || HOP_BY_HOP.has(name) || named.has(name) || dropped.has(name)) continue;
    if ((!keep && namesClientCertificate(name)) || spellsForwarding(name)) continue;
    if (typeof value === 'string') out.push(name, value);
    else for (const one of value) out.push(name, one);
  }
  out.push('x-forwarded-for', f.xff);
  if (f.proto !== undefined) out.push('x-forwarded-proto', f.proto);
  else out.push('x-forwarded-proto', joined(headers['x-forwarded-proto'])!);
  if (f.host !== undefined) out.push('x-forwarded-host', f.host);
  else if (headers['x-forwarded-host'] !== undefined) out.push('x-forwarded-host', joined(headers['x-forwarded-host'])!);
  out.push('forwarded', f.forwarded);
  return out;
}

/** Headers set on every answer of a route (HSTS), prepared once: a flat list and its lower-case names, which replace the origin's. */
export interface ExtraHeaders {
  readonly list: readonly string[];
  readonly names: ReadonlySet<string>;
}

const prepared = new WeakMap<Readonly<Record<string, string>>, ExtraHeaders>();

/** `headers` as ExtraHeaders, prepared once per object (the handler keeps one per domain). */
export function extraHeaders(headers: Readonly<Record<string, string>>): ExtraHeaders {
  let extra = prepared.get(headers);
  if (extra === undefined) {
    const list: string[] = [];
    for (const name in headers) list.push(name, headers[name]!);
    extra = { list, names: new Set(Object.keys(headers).map((n) => n.toLowerCase())) };
    prepared.set(headers, extra);
  }
  return extra;
}

/** Whether `name` (raw bytes) is `connection` in any case, without making a string of every header name. */
function isConnection(name: Buffer | string): boolean {
  if (name.length !== 10) return false;
  return (typeof name === 'string' ? name : name.toString('latin1')).toLowerCase() === 'connection';
}

/**
 * The origin's raw answer head (undici's [name, value, …] Buffers) as the
 * flat list to give `writeHead`: end-to-end headers only, bytes kept as
 * latin1 (RFC 9110 §5.5: field values are octets; node writes the list as
 * latin1), then `extra`, which replaces any the origin sent of the same name.
 * `noLength` (a 204) drops Content-Length: a server must not send one in a
 * 204 (RFC 9110 §8.6), and nginx drops it too; HTTP/2 clients never get it
 * (http2/origin-handler.ts).
 */
export function answerHeaderList(raw: readonly (Buffer | string)[], extra: ExtraHeaders, noLength = false): string[] {
  let named = NOTHING;
  for (let i = 0; i < raw.length; i += 2) {
    if (!isConnection(raw[i]!)) continue;
    const more = connectionNamed(text(raw[i + 1]!));
    if (more.size > 0) named = new Set([...named, ...more]);
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = text(raw[i]!);
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named.has(lower) || extra.names.has(lower)) continue;
    if (noLength && lower === 'content-length') continue;
    out.push(name, text(raw[i + 1]!));
  }
  for (const item of extra.list) out.push(item);
  return out;
}

const text = (value: Buffer | string): string => (typeof value === 'string' ? value : value.toString('latin1'));

/**
 * Refuses (throws OriginAnswerRefused) an origin answer whose Transfer-Encoding
 * is anything but one `chunked`, in one or more fields (RFC 9112 §6.1). undici
 * takes the chunked framing off (or, with no final chunked, reads to the
 * close, §6.3) and the field goes as hop-by-hop, so a body still gzip- (or
 * otherwise) coded would reach the client as if it were the content, and
 * chunked applied twice would leave its framing in the content. HTTP/2 has no
 * Transfer-Encoding at all (RFC 9113 §8.2.2) to say it. An origin may send a
 * coding besides chunked only to a client that asked for it in TE (RFC 9110
 * §10.1.4), which is hop-by-hop and never forwarded. Later nginx versions
 * refuse these answers as well ("upstream sent unknown Transfer-Encoding");
 * 1.22 relays them as keyedge did, the coding dropped.
 */
export function refuseTransferCodings(raw: readonly (Buffer | string)[]): void {
  let codings: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== 17 || text(name).toLowerCase() !== 'transfer-encoding') continue;
    codings = codings === undefined ? text(raw[i + 1]!) : `${codings}, ${text(raw[i + 1]!)}`;
  }
  if (codings === undefined || codings.trim().toLowerCase() === 'chunked') return;
  throw new OriginAnswerRefused(`the origin answer's transfer codings are not one chunked (Transfer-Encoding: ${JSON.stringify(codings.slice(0, 100))})`);
}
