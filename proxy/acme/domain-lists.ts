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
 * (maintain.ts), on the list recorded then: an issue asked while another one
 * (here, or another node's) changed it drops none of that one's names.
 * The recorded list changes only once a certificate for the new list serves
 * (maintain.ts): an order that fails (a new name not pointed here yet) leaves
 * the entry renewing what it served, and the failure is the answer.
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
  return [...new Set(requested)];
}
