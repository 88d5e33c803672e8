/**
 * What one pass of the reload path found (source.ts `next()`): the delta to
 * apply, the config it was read with, what was refused and said, and what
 * `commit()` records once the delta is applied. Data only, and the key a
 * stored route's refusal is remembered by, so it is said once.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { Refusal, ServingDelta } from './spec.js';

export interface NextServing {
  readonly delta: ServingDelta;
  readonly config: ProxyConfig;
  /** Refusals found by this pass (each entry keeps serving its previous version, if any). */
  readonly refused: readonly Refusal[];
  readonly warnings: readonly { readonly name: string; readonly message: string }[];
  /** Settings that changed in the file but need a restart. */
  readonly restartNeeded: readonly string[];
  /** Every certificate entry present, served or refused. */
  readonly present: ReadonlySet<string>;
  /** Entries whose files kept changing while read: they keep what served; another pass should look again soon. */
  readonly unsettled: readonly string[];
  /** Chain paths whose links and directories the watch should follow (watch.ts). */
  readonly followed: readonly string[];
  /** The config file's own domains (`config.domains` adds the shared store's routes to them). */
  readonly fileDomains: ProxyConfig['domains'];
  /** Only the entries named by `next({ only })` were looked at. */
  readonly targeted: boolean;
  /** Which directory the store's path named as this pass listed it (certs/store-dir.ts). */
  readonly storeDirId: string | undefined;
  /** The names a targeted pass answered for (its own and the config's certificates); `present` and the delta speak of these alone. */
  readonly answered: readonly string[];
  /** Every stored route refused now, said or not (routeRefusal): what `commit` remembers as said. */
  readonly refusedRoutes?: ReadonlySet<string>;
  /** The identity of each store entry this pass refused, as read (prepare.ts): in a fleet, its etcd revision. */
  readonly refusedAt?: ReadonlyMap<string, string>;
}

/** A stored route's refusal, as remembered once said: the same version refused for the same reason is not said again. */
export function routeRefusal(refused: { readonly name: string; readonly message: string; readonly revision: number }): string {
  return `${refused.name}\0${refused.revision}\0${refused.message}`;
}
