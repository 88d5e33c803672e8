import { describe, expect, it } from 'vitest';
import { judgeName, type NameRefusal } from '../proxy/acme/on-demand-ca-names.js';

// On-demand gate 1 as a table (proxy/acme/on-demand-ca-names.ts): the names a CA refuses by policy, each with the
// reason the `ignored` metric counts it under, and names it issues for with the registered domain the hourly limit
// counts them under. These went on to the ask endpoint, took an order slot of their registrant's hour and reached
// the CA, which refused them (Let's Encrypt's Boulder, policy package: validDomain, its blocked names).
// End to end (a handshake for such a name never reaches the ask endpoint): test/acme-on-demand.test.ts.

/** Eleven labels: one more than Boulder's maxLabels. */
const ELEVEN = 'a.b.c.d.e.f.g.h.i.example-shop.com';
/** 253 characters, the most a name may have (RFC 1035 §2.3.4). */
const LONGEST = `${'a'.repeat(63)}.`.repeat(3).concat('a'.repeat(57), '.com');

const refusedByEveryCa: [string, NameRefusal][] = [
  [`a${LONGEST}`, 'too_long'],
  ['192.0.2.1', 'ip_address'],
  ['::1', 'ip_address'],
  ['2001:db8::1', 'ip_address'],
  ['host.123', 'numeric_tld'],
  ['www.example-shop.com.', 'syntax'],
  ['a_b.example-shop.com', 'syntax'],
  ['*.example-shop.com', 'syntax'],
  ['WWW.example-shop.com', 'syntax'],
  ['a..example-shop.com', 'syntax'],
  ['-a.example-shop.com', 'syntax'],
  ['a-.example-shop.com', 'syntax'],
  [`${'a'.repeat(64)}.example-shop.com`, 'syntax'],
  ['localhost', 'syntax'],
  ['', 'syntax'],
  ['ab--cd.example-shop.com', 'reserved_label'],
  ['xn--zz.example-shop.com', 'bad_idn'],
  ['xn--bucher-xyd.example-shop.com', 'bad_idn'],
  ['com', 'syntax'],
  ['co.uk', 'public_suffix'],
  ['github.io', 'public_suffix'],
  ['x.kawasaki.jp', 'public_suffix'],
];

const refusedByPublicCas: [string, NameRefusal][] = [
  ['www.x.test', 'special_use'],
  ['printer.local', 'special_use'],
  ['app.localhost', 'special_use'],
  ['db.internal', 'special_use'],
  ['a.example', 'special_use'],
  ['a.invalid', 'special_use'],
  ['www.example.com', 'special_use'],
  ['example.org', 'special_use'],
  ['shop.example.net', 'special_use'],
  ['x.alt', 'special_use'],
  ['duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion', 'special_use'],
  ['router.home.arpa', 'special_use'],
  ['1.2.0.192.in-addr.arpa', 'special_use'],
  ['intranet.corp', 'not_icann_tld'],
  ['nas.lan', 'not_icann_tld'],
  ['a.home', 'not_icann_tld'],
  ['www.alice.github.invalidtld', 'not_icann_tld'],
  [ELEVEN, 'too_many_labels'],
];

const issued: [string, string][] = [
  ['www.example-shop.com', 'example-shop.com'],
  ['example-shop.com', 'example-shop.com'],
  ['1.example-shop.com', 'example-shop.com'],
  ['a.b.shop.co.uk', 'shop.co.uk'],
  ['www.alice.github.io', 'alice.github.io'],
  ['xn--bcher-kva.example-shop.com', 'example-shop.com'],
  ['xn--zca.xn--p1ai', 'xn--zca.xn--p1ai'],
  ['b.c.d.e.f.g.h.i.example-shop.com', 'example-shop.com'],
  [LONGEST, `${'a'.repeat(57)}.com`],
];

describe('names a CA refuses by policy (on-demand gate 1)', () => {
  it('every CA: not a DNS name, an IP address, a bad A-label, a public suffix', () => {
    for (const publicNamesOnly of [true, false]) {
      for (const [name, refusal] of refusedByEveryCa) expect(judgeName(name, publicNamesOnly), `${name} (${publicNamesOnly})`).toEqual({ refusal });
    }
  });

  it('a publicly-trusted CA: special-use names, a TLD not in the root zone, more than 10 labels; a private CA issues them', () => {
    expect(LONGEST).toHaveLength(253);
    expect(ELEVEN.split('.')).toHaveLength(11);
    for (const [name, refusal] of refusedByPublicCas) {
      expect(judgeName(name, true), name).toEqual({ refusal });
      expect(judgeName(name, false), name).toHaveProperty('domain');
    }
    expect(judgeName('www.x.test', false)).toEqual({ domain: 'x.test' });
  });

  it('names a public CA issues for, with the registered domain their hourly limit counts', () => {
    for (const publicNamesOnly of [true, false]) {
      for (const [name, domain] of issued) expect(judgeName(name, publicNamesOnly), name).toEqual({ domain });
    }
  });
});
