/**
 * The certificate-store entry a managed certificate is kept under, named
 * after its first domain.
 *
 * Guarantees: the name passes the store's entry-name check (certs/store.ts
 * STORE_ENTRY_NAME: 1-64 of letters, digits, `_ . -`; the etcd store serves
 * only such names), and two different first domains never get one name.
 * A first domain of at most 64 characters is its own entry name (`*`
 * spelled `_`), as it always was. A longer one (a DNS name is up to 253)
 * was cut to 64 characters, so two names alike in their first 64 shared an
 * entry: the second one's order renewed the first one's certificate, and its
 * on-demand handshake was taken as managed. It is now a readable prefix, `_`
 * and 16 hex digits of the SHA-256 of the whole name:
 *  - `_` is in no lower-case DNS name (admin-acme.ts and on-demand.ts let no
 *    other name through) except as the leading spelling of `*`, so such a
 *    name is never the entry name of a short domain;
 *  - 64 bits of digest: finding a name whose entry is an existing long name's
 *    (a second preimage, 2^64 tries) is out of reach of a client cycling
 *    on-demand names; 32 or 48 bits were within a GPU's day.
 *
 * An entry made before under the cut name keeps that name (its chain, its
 * renewals, its state record): `entryOf` finds it by the first domain its
 * state records, so it is renewed in place rather than ordered a second time.
 */
import { createHash } from 'node:crypto';
import type { ManagedState } from './state.js';

/** The store's longest entry name (certs/store.ts STORE_ENTRY_NAME). */
const ENTRY_NAME_MAX = 64;
/** Hex digits of the digest a long first domain's entry name ends with: 64 bits. */
const DIGEST_HEX = 16;

/** The first domain, `*` spelled `_` (the store's names have no `*`). */
function spelled(domains: readonly string[]): string {
  return (domains[0] ?? 'acme').replace(/^\*/, '_');
}

/** The store entry name for a set of domains: the first one, `*` spelled `_`; over 64 characters, its first 47, `_` and a digest of it whole. */
export function entryNameFor(domains: readonly string[]): string {
  const name = spelled(domains);
  if (name.length <= ENTRY_NAME_MAX) return name;
  const digest = createHash('sha256')
    .update(domains[0] ?? '')
    .digest('hex')
    .slice(0, DIGEST_HEX);
  return `${name.slice(0, ENTRY_NAME_MAX - 1 - DIGEST_HEX)}_${digest}`;
}

/**
 * The managed entry of `domains` among `certificates` (the state's): its entry name, or, for a first domain over 64
 * characters, the name it was cut to before when an entry of that name records this very first domain (made before
 * entry names had a digest: it stays where its chain is). The cut entry of another name alike in its first 64 is not it.
 */
export function entryOf(domains: readonly string[], certificates: Readonly<Record<string, ManagedState>>): string {
  const name = entryNameFor(domains);
  if (certificates[name] !== undefined) return name;
  const cut = spelled(domains).slice(0, ENTRY_NAME_MAX);
  return cut !== name && certificates[cut]?.domains[0] === domains[0] ? cut : name;
}
