/**
 * On-demand issuance, the worker's half and what both halves share: which
 * names are plain DNS names a CA could issue for (gate 1's syntax check), the
 * IPC message a worker sends for a name no certificate covers (with the
 * client that sent it, for the per-client bound of gate 4), and the worker's
 * reporter that sends each such name at most once per interval.
 * Apart from on-demand.ts (the primary's gates) so that a worker loads neither
 * the gate nor the Public Suffix List it uses (about 10 MB of RSS per worker).
 */
import { isIP } from 'node:net';
import { domainToASCII, domainToUnicode } from 'node:url';
import { LRUCache } from 'lru-cache';
import { clientKey } from '../tls/connection-limits.js';

const WANTED = 'keyedge:acme-wanted';
/** Longer than any clientKey ('ffff:ffff:ffff:ffff::/64', an IPv4 address). */
const MAX_CLIENT_KEY = 64;
/** LDH labels of 1-63 characters (RFC 1035 §2.3.1), at least two (a CA issues for no single-label name). */
const LDH_NAME = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/**
 * The last label all digits (RFC 3696 §2): without this, an IPv4 literal in the SNI (`192.0.2.1`) passed as a DNS name
 * and went on to the ask endpoint, the hourly limits and the CA (a token key made, an order refused).
 */
const NUMERIC_TLD = /(^|\.)[0-9]+$/;

/**
 * A label with `--` in its third and fourth characters is reserved (R-LDH, RFC 5890 §2.3.1) unless it is an A-label
 * (`xn--`). A CA refuses it: Let's Encrypt answers rejectedIdentifier.
 */
const RESERVED_LDH = /(^|\.)(?!xn)[a-z0-9]{2}--/;

/** A label that is still an A-label after decoding: one that did not decode. */
const A_LABEL = /(^|\.)xn--/;

/**
 * Why a name is not a DNS name a CA could issue for, as a metric label (a bounded set): `too_long` (over 253
 * characters, RFC 1035 §2.3.4), `ip_address` (an IP literal), `numeric_tld` (a last label of digits only),
 * `syntax` (anything but lower-case LDH labels of 1-63 characters, at least two: an underscore, a `*`, an empty
 * label, a trailing dot, a label starting or ending with `-`), `reserved_label` (R-LDH), `bad_idn` (an A-label
 * that is not the Punycode of a valid U-label).
 */
export type NameFault = 'too_long' | 'ip_address' | 'numeric_tld' | 'syntax' | 'reserved_label' | 'bad_idn';

/** Why `name` is not a DNS name a CA could issue for; undefined when it is one. Pure: no Public Suffix List here (workers). */
export function dnsNameFault(name: string): NameFault | undefined {
  if (name.length > 253) return 'too_long';
  if (isIP(name) !== 0) return 'ip_address';
  if (!LDH_NAME.test(name)) return 'syntax';
  if (NUMERIC_TLD.test(name)) return 'numeric_tld';
  if (!name.includes('--')) return undefined;
  return RESERVED_LDH.test(name) ? 'reserved_label' : validALabels(name) ? undefined : 'bad_idn';
}

/** At most 253 characters (RFC 1035 §2.3.4), LDH labels, the last one not all digits, its A-labels valid. */
export function isDnsName(name: string): boolean {
  return dnsNameFault(name) === undefined;
}

/**
 * Each A-label the Punycode (RFC 3492) of a U-label that IDNA lookup (UTS 46, as browsers do it) encodes back to it
 * (RFC 5891 §5.3-5.4): `xn--zz` decodes to nothing, `xn--bucher-xyd` to a `u` and a combining diaeresis (not NFC).
 * Such names went on to the ask endpoint, took a slot of the hourly limits and reached the CA, which refuses them
 * (Let's Encrypt: "malformed punycode"): a client sending them through a wildcard CNAME spent its registrant's hour
 * on orders no CA makes.
 */
function validALabels(name: string): boolean {
  // An A-label that does not decode comes back as '' (Node 20, 22) or unchanged, still `xn--` (Node 24's ada).
  const unicode = domainToUnicode(name);
  return unicode !== '' && !A_LABEL.test(unicode) && domainToASCII(unicode) === name;
}

/** `client`: who sent the name, as the gate's per-client bound counts it (clientOf); none for a trusted proxy. */
export function wantedMessage(name: string, client: string | undefined): { type: typeof WANTED; name: string; client?: string } {
  return client === undefined ? { type: WANTED, name } : { type: WANTED, name, client };
}

export function wantedName(message: unknown): string | undefined {
  if (typeof message !== 'object' || message === null || (message as { type?: unknown }).type !== WANTED) return undefined;
  const name = (message as { name?: unknown }).name;
  return typeof name === 'string' && name.length <= 253 ? name.toLowerCase() : undefined;
}

/** The client of a wanted message (wantedName's); undefined when it has none (a trusted proxy's), or not a short string. */
export function wantedClient(message: unknown): string | undefined {
  const client = typeof message === 'object' && message !== null ? (message as { client?: unknown }).client : undefined;
  return typeof client === 'string' && client.length <= MAX_CLIENT_KEY ? client : undefined;
}

/**
 * Who a handshake's peer counts as for the gate's per-client bound (on-demand-clients.ts): as for the connection caps,
 * its IPv4 address or its IPv6 address's /64 (clientKey); none for a trusted proxy, whose connections carry many
 * clients, or a peer already gone (no address).
 */
export function clientOf(address: string | undefined, trusted: (address: string) => boolean): string | undefined {
  return address === undefined || trusted(address) ? undefined : clientKey(address);
}

/**
 * The worker's side: report each unknown name at most once per `intervalMs`
 * (bounded memory), so a flood of handshakes costs the primary one message
 * per name, not one per handshake; a name that is not a DNS name is not
 * reported (nor remembered). Each name goes with the client of the handshake
 * that reported it (clientOf; `trusted`: the peers not counted as one client).
 */
export function missReporter(
  send: (name: string, client: string | undefined) => void,
  trusted: (address: string) => boolean = () => false,
  intervalMs = 10_000,
): (name: string, address?: string) => void {
  const recent = new LRUCache<string, true>({ max: 10_000, ttl: intervalMs });
  return (name, address) => {
    // The gate would ignore it: not kept, not sent. An SNI may be 16 KB, and 10,000 of them were kept here and sent over IPC.
    if (!isDnsName(name)) return;
    if (recent.has(name)) return;
    recent.set(name, true);
    send(name, clientOf(address, trusted));
  };
}
