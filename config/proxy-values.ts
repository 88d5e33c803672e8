/**
 * Validators of single values in the proxy's config file: domain names,
 * origin URLs, etcd endpoints and key prefixes, addresses and CIDR blocks.
 * Each states what it expects in its error message. parseAddressBlock is
 * also used at run time (proxy/http/trusted-peers.ts), so the file and the
 * proxy read an address block the same way.
 */
import net from 'node:net';
import { z } from 'zod';

/** An exact DNS name or a single leading wildcard label (RFC 6125 §6.4.3), lower-case. */
const DOMAIN_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** A DNS name's length at most, dots included (RFC 1035 §2.3.4's 255 octets on the wire): no certificate or SNI names a longer one. */
export const MAX_DNS_NAME = 253;
export const domainName = z
  .string({ error: 'expected a lower-case DNS name or *.wildcard' })
  .max(MAX_DNS_NAME, { error: `expected a DNS name of at most ${MAX_DNS_NAME} characters` })
  .regex(DOMAIN_NAME, { error: 'expected a lower-case DNS name, optionally with one leading "*." label' });

const ORIGIN_URL_EXPECTED = 'expected an http:// or https:// origin URL: scheme, host and optional port, no credentials, path or query';
export const originUrl = z.string({ error: ORIGIN_URL_EXPECTED }).refine(
  (u) => {
    try {
      const url = new URL(u);
      // A Pool is per origin (RFC 6454 §4): a path here would be silently ignored.
      return (
        (url.protocol === 'http:' || url.protocol === 'https:') &&
        url.username === '' &&
        url.password === '' &&
        url.pathname === '/' &&
        url.search === '' &&
        url.hash === ''
      );
    } catch {
      return false;
    }
  },
  { error: ORIGIN_URL_EXPECTED },
);

/** Two spellings of one origin (`http://a` and `http://a:80`) are one origin. */
export function originKey(u: string): string {
  try {
    return new URL(u).origin;
  } catch {
    return u;
  }
}

const ETCD_ENDPOINT_EXPECTED = 'expected an etcd endpoint URL: http://host:port or https://host:port, no path, query or fragment, no credentials (etcd.auth)';
export const etcdEndpoint = z.string({ error: ETCD_ENDPOINT_EXPECTED }).refine(
  (u) => {
    try {
      const url = new URL(u);
      // No user or password: etcd's auth is `auth` with a password file, and a password here would be dropped unused.
      // No path, query or fragment: etcd's client takes a host and port only, and dropped them unsaid. Not `search` and
      // `hash` alone: the URL parser gives an empty '?' or '#' as '', so the text itself must have neither.
      const bare = url.pathname === '/' && !u.includes('?') && !u.includes('#');
      return (url.protocol === 'http:' || url.protocol === 'https:') && bare && url.username === '' && url.password === '';
    } catch {
      return false;
    }
  },
  { error: ETCD_ENDPOINT_EXPECTED },
);
const ACME_DIRECTORY_EXPECTED = 'expected the ACME directory URL (https://…), no credentials';
/**
 * The CA's directory URL: http(s), without a user or password. ACME authenticates with the account key (RFC 8555
 * §6.2) and EAB (`acme.eab`), never with the URL's userinfo: fetch refused such a URL with an error quoting it, and
 * the URL went into the start-up log line, every order's error and the ACME state (on disk and in a fleet's etcd).
 */
export const acmeDirectory = z
  .url({ protocol: /^https?$/, error: ACME_DIRECTORY_EXPECTED })
  .refine((u) => URL.canParse(u) && new URL(u).username === '' && new URL(u).password === '', { error: ACME_DIRECTORY_EXPECTED });
export const ETCD_PREFIX_EXPECTED = 'expected a key prefix such as "/keyedge/fleet-a/": starts and ends with "/", letters, digits, _ . - between';

export const HOST_NAME = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const ADDRESS_BLOCK_EXPECTED = 'expected an IPv4 or IPv6 address, or a CIDR block such as "10.0.0.0/8" or "fd00::/8"';
/** An address or `address/prefix`, IPv4 or IPv6 (RFC 4632, RFC 4291 §2.3). */
export function parseAddressBlock(text: string): { readonly address: string; readonly prefix: number; readonly family: 'ipv4' | 'ipv6' } | undefined {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const version = net.isIP(address);
  if (version === 0) return undefined;
  const bits = version === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(bits) : text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > bits) return undefined;
  return { address, prefix: Number(prefixText), family: version === 4 ? 'ipv4' : 'ipv6' };
}
export const addressBlock = z.string({ error: ADDRESS_BLOCK_EXPECTED }).refine((t) => parseAddressBlock(t) !== undefined, { error: ADDRESS_BLOCK_EXPECTED });
