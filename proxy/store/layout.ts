/**
 * Where things live below the fleet's etcd prefix, and which kind of state
 * a key is, so that a change tells the primary what to reload:
 *
 *   <prefix>certs/<name>    {"chain": PEM, "meta": StoreMeta}   (certs/store.ts's entry)
 *   <prefix>routes/<name>   a domain, as in the config file's `domains`
 *   <prefix>tickets         {"keys": [base64, newest first], "rotatedAt": ISO}
 *   <prefix>acme/...        the ACME issuer's shared state (acme/shared-state.ts,
 *                           acme/fleet-challenges.ts)
 *   <prefix>acme/on-demand/ the on-demand refusals and order counters
 *                           (acme/on-demand-ledger.ts): no kind. The ledger
 *                           reads them when it decides; an 'acme' change makes
 *                           every primary take the issuer state and rebuild its
 *                           challenge board (work for each), and a
 *                           client sending random names writes a refusal per
 *                           name, deleted again when its lease ends.
 *   <prefix>locks/<name>    lock keys (lock.ts), not state: never mirrored
 */
import type { IKeyValue } from 'etcd3';

export const CERTS = 'certs/';
export const ROUTES = 'routes/';
export const TICKETS = 'tickets';
export const LOCKS = 'locks/';
export const ACME = 'acme/';
export const ACME_ON_DEMAND = `${ACME}on-demand/`;

export type StoreChange = 'certificates' | 'routes' | 'tickets' | 'acme';

/** The kind of state at `key` (below the prefix); undefined for a key no reload cares about. */
export function kindOf(key: string): StoreChange | undefined {
  if (key.startsWith(CERTS)) return 'certificates';
  if (key.startsWith(ROUTES)) return 'routes';
  if (key === TICKETS) return 'tickets';
  if (key.startsWith(ACME_ON_DEMAND)) return undefined;
  if (key.startsWith(ACME)) return 'acme';
  return undefined;
}

/** `kv`'s key below `prefix`; undefined when it is not under it. */
export function keyOf(kv: IKeyValue, prefix: string): string | undefined {
  const key = kv.key.toString('utf8');
  return key.startsWith(prefix) ? key.slice(prefix.length) : undefined;
}
