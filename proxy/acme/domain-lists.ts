/**
 * What an operator's issue (admin API `POST /acme/issue`, `keyedge cert
 * issue`) does with an entry that is managed already when the domains asked
 * for are not the ones its state records.
 *
 * Guarantees: an issue never answers success for a list its certificate does
 * not cover, and never drops a name the entry's certificate serves unless the
 * operator said so.
 *  - Same names (in any order): a renewal, as before.
 *  - More names (every recorded one kept): a new certificate for the list asked
 *    for, under the same entry; once it serves, the list asked for is the one
 *    recorded and renewed. The entry's first domain names it, and a
 *    certificate covers a list, not one name: certbot's `--expand` and lego's
 *    `run` on an existing certificate do this, and nothing served is lost.
 *    Before, the entry was renewed with its recorded names and the added
 *    ones were left out, yet the answer said "issued".
 *  - Fewer or other names (a recorded one missing): refused,
 *    KEYEDGE_ERR_ACME_DOMAINS naming the entry and both lists, unless the
 *    operator asks to replace the list (`"replaceDomains": true`, `keyedge
 *    cert issue --replace-domains`): a typo or a forgotten `--domain` would
 *    otherwise stop a name being served at the next reload, which certbot asks
 *    an interactive operator to confirm (its `--cert-name` prompt).
 * The list is judged when asked for and again under the name's issuance lock
 * (orders.ts), on the list recorded then: an issue asked while another one
 * (here, or another node's) changed it drops none of that one's names.
 * The recorded list changes once a certificate for the new list is stored
 * (orders.ts): an order that fails (a new name not pointed here yet) leaves
 * the entry renewing what it served, on its own schedule, and the failure is
 * the answer. The names it keeps come first, in their recorded order, so the
 * entry's first domain still names it.
 *
 * Without an entry name, an issue is for the entry that records one of its
 * names, whichever name comes first (`--domain new --domain a` expands `a`'s
 * entry as `--domain a --domain new` does, certbot's `--expand`): a second
 * entry beside it served `a` from two certificates, both renewed. Names that
 * several entries record are refused (KEYEDGE_ERR_ACME_DOMAINS), since which
 * one to keep is the operator's call: an entry name says it.
 */
import { KeyedgeError } from '../../keyserver/shared/errors.js';

/** Whether two lists hold the same names (a certificate's SANs have no order that matters, RFC 5280 §4.2.1.6). */
export function sameDomains(a: readonly string[], b: readonly string[]): boolean {
  const set = new Set(a);
  return set.size === new Set(b).size && b.every((d) => set.has(d));
}

/**
 * The names an operator's issue of `requested` orders for the entry `name` that records `recorded`: `undefined` to renew
 * the recorded list, else the list to order (an expansion, or a replacement when `replace`). Throws KEYEDGE_ERR_ACME_DOMAINS
 * when the list asked for leaves out a recorded name and `replace` was not given.
 */
export function domainsToOrder(name: string, recorded: readonly string[], requested: readonly string[], replace: boolean): string[] | undefined {
  if (sameDomains(recorded, requested)) return undefined;
  const dropped = recorded.filter((d) => !requested.includes(d));
  if (dropped.length > 0 && !replace) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_ACME_DOMAINS',
      `certificate '${name}' is managed for [${recorded.join(', ')}]; the names asked for, [${requested.join(', ')}], leave out ` +
        `[${dropped.join(', ')}], which it serves or is ordered for: nothing ordered. To replace its names, issue again with ` +
        '--replace-domains (admin API: "replaceDomains": true); to add names, list every current one too',
    );
  }
  const kept = recorded.filter((d) => requested.includes(d));
  return [...new Set([...kept, ...requested])];
}

/** Whether `domains` cover `name`: listed, or under a listed wildcard of one label (RFC 6125 §6.4.3). */
export function covers(domains: readonly string[], name: string): boolean {
  const dot = name.indexOf('.');
  return domains.includes(name) || (dot > 0 && domains.includes(`*${name.slice(dot)}`));
}

/**
 * The managed entry an operator's issue of `requested` without an entry name is for, among `holders` (each live entry's
 * names: those it records and those its running order is for; maintain.ts): the entry that holds one of these names, or
 * `named` (the first domain's, entry-names.ts) when it is a holder or none is. Throws KEYEDGE_ERR_ACME_DOMAINS when
 * several entries hold them: one name on two certificates is two renewals, and every later issue of it is ambiguous.
 */
export function entryForList(named: string, requested: readonly string[], holders: ReadonlyMap<string, readonly string[]>): string {
  const entries = [...holders.keys()].filter((entry) => holders.get(entry)?.some((d) => requested.includes(d)));
  const candidates = !holders.has(named) || entries.includes(named) ? entries : [named, ...entries];
  if (candidates.length <= 1) return candidates[0] ?? named;
  const listed = candidates.map((entry) => `'${entry}' [${holders.get(entry)?.join(', ')}]`).join(', ');
  throw new KeyedgeError(
    'KEYEDGE_ERR_ACME_DOMAINS',
    `the names asked for, [${requested.join(', ')}], are managed under several certificates: ${listed}; nothing ordered. ` +
      'To move a name, first take it off the entry that loses it (keyedge cert issue OTHER --domain … --replace-domains, ' +
      'listing the names it keeps), then issue again',
  );
}
