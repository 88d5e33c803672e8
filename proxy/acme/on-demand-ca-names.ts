/**
 * On-demand gate 1 (on-demand.ts): whether a CA would refuse a name by its
 * policy, judged before the ask endpoint, the hourly limits and the CA. A
 * name a CA refuses costs, when it gets through, an ask request, an order
 * the CA answers rejectedIdentifier or malformed (RFC 8555 §6.7), a failed
 * entry's backoff and a slot of its registrant's hourly limit; a client picks
 * the SNI, so it picks how many of them come.
 *
 * Every CA's rules (on-demand-names.ts, the syntax a worker checks too): a
 * DNS name of LDH labels, no IP literal, valid A-labels. Then, the rule that
 * the name has a registrant (the Public Suffix List, private section
 * included): a public suffix itself (co.uk, github.io) is refused, as it
 * would be counted with no registrant or all of them.
 *
 * A publicly-trusted CA's rules (`onDemand.publicNamesOnly`, on by default),
 * as Let's Encrypt's Boulder applies them (its policy package, validDomain and
 * its blocked-names list):
 *  - `special_use`: a special-use name (RFC 6761 §6, the IANA registry:
 *    test, example, invalid, localhost, local (RFC 6762), onion (RFC 7686),
 *    alt (RFC 9476), internal (ICANN's private-use TLD), example.com/net/org,
 *    and arpa, the infrastructure TLD (RFC 3172): home.arpa, in-addr.arpa…);
 *  - `not_icann_tld`: a name under a TLD not in the IANA root zone (no ICANN
 *    rule of the Public Suffix List matches it: corp, lan, home); CA/Browser
 *    Forum Baseline Requirements §4.2.2 forbid them (Internal Names);
 *  - `too_many_labels`: more than 10 labels (Boulder's maxLabels).
 * A private CA (step-ca, pebble) issues for internal names: with
 * `publicNamesOnly: false` only every CA's rules apply.
 *
 * Pure functions of the name: table-tested without a CA
 * (test/acme-on-demand-ca-names.test.ts).
 */
import { getDomain, parse } from 'tldts';
import { dnsNameFault, type NameFault } from './on-demand-names.js';

/** Why gate 1 ignores a name: a bounded set, the `reason` label of the `ignored` outcome. */
export type NameRefusal = NameFault | 'public_suffix' | 'special_use' | 'not_icann_tld' | 'too_many_labels';

/** Boulder's maxLabels: more are refused ("Domain name has more than 10 labels"). */
const MAX_LABELS = 10;

/** Special-use names (RFC 6761 and the IANA Special-Use Domain Names registry) and ICANN's private-use TLD: no public CA issues under them. */
const SPECIAL_USE = new Set([
  'alt',
  'arpa',
  'example',
  'example.com',
  'example.net',
  'example.org',
  'internal',
  'invalid',
  'local',
  'localhost',
  'onion',
  'test',
]);

/** Whether `name` is a special-use name or under one. */
function specialUse(name: string): boolean {
  const labels = name.split('.');
  return labels.some((_, i) => SPECIAL_USE.has(labels.slice(i).join('.')));
}

/** Why a publicly-trusted CA refuses `name` (a DNS name, dnsNameFault), beyond every CA's rules; undefined when it does not. */
export function publicCaRefusal(name: string): NameRefusal | undefined {
  if (specialUse(name)) return 'special_use';
  // The list's ICANN section only: a private rule (github.io) is not a TLD, and its default rule `*` is no ICANN rule.
  if (!parse(name, { allowPrivateDomains: false, extractHostname: false, validateHostname: false }).isIcann) return 'not_icann_tld';
  if (name.split('.').length > MAX_LABELS) return 'too_many_labels';
  return undefined;
}

/**
 * The name's registrable domain (public suffix and one label more), private suffixes honoured; undefined for a public
 * suffix itself. `name` is a DNS name (lower case, no trailing dot).
 */
export function registeredDomain(name: string): string | undefined {
  return getDomain(name, { allowPrivateDomains: true, extractHostname: false, validateHostname: false }) ?? undefined;
}

/**
 * Gate 1's judgement of a name: its registered domain (the per-domain limit's key), or why it is ignored. Every CA's
 * rules first, then a publicly-trusted CA's when `publicNamesOnly`, then the registrant.
 */
export function judgeName(name: string, publicNamesOnly: boolean): { readonly domain: string } | { readonly refusal: NameRefusal } {
  const refusal = dnsNameFault(name) ?? (publicNamesOnly ? publicCaRefusal(name) : undefined);
  if (refusal !== undefined) return { refusal };
  const domain = registeredDomain(name);
  return domain === undefined ? { refusal: 'public_suffix' } : { domain };
}
