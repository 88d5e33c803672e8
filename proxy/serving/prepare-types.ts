/**
 * What a preparing pass (prepare.ts) is given and gives back, and what it
 * remembers between passes of a store entry's files (SeenStat). Apart from
 * the pass itself so that each part of it (prepare-config.ts,
 * prepare-store.ts, prepare-judge.ts, serve-last.ts) reads one contract
 * rather than the whole pass; no behaviour lives here.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { CertificateCandidate, ValidationContext } from '../certs/validate.js';
import type { VerdictCache } from '../certs/verdict-cache.js';
import type { EntryStorage } from '../store/storage.js';
import type { KeptRow, KeptState } from './kept.js';
import type { ServedVersion } from './last-served.js';
import type { CertificateRecord, Refusal } from './spec.js';

export interface PreparedServing {
  /** Every record to serve; after a targeted pass, only the config's and the named entries' (the rest of `previous` carries over). */
  readonly records: ReadonlyMap<string, CertificateRecord>;
  readonly refused: readonly Refusal[];
  readonly warnings: readonly { readonly name: string; readonly message: string }[];
  /** Names whose record is new or changed since `previous`. */
  readonly changed: readonly string[];
  /** Every entry present now, in the config or the store, served or not; after a targeted pass, of the config and the named entries only. */
  readonly present: ReadonlySet<string>;
  /** Entries whose files kept changing while read: nothing was concluded, look again soon. */
  readonly unsettled: readonly string[];
  /** Chain paths to watch beyond the store directory: the config's chains and the store's symlinks (proxy/serving/watch.ts). */
  readonly followed: readonly string[];
  /** Entries whose record was made from the kept state's row (`kept`), unread. */
  readonly fromKept: ReadonlySet<string>;
  /** Only the entries of `only` were looked at (false: every entry was, `records` and `present` speak for all). */
  readonly targeted: boolean;
  /** Which directory the store's path named as this pass listed it (certs/store-dir.ts); undefined: none, or not a directory store. */
  readonly storeDirId: string | undefined;
  /** The identity (statId) of each store entry this pass refused, as read: in a fleet, its etcd revision (last-served.ts). */
  readonly refusedAt: ReadonlyMap<string, string>;
}

/** What a pass last saw of a store entry's files. */
export interface SeenStat {
  readonly statId: string;
  /** The input id of the version read with this identity. */
  readonly inputId: string;
  /** The files had not changed for QUIET_MS before they were read: any later change moves the identity. */
  readonly settled: boolean;
  /**
   * This version was refused under the issuer pool of this fingerprint: a later pass that finds the same identity
   * (and pool) carries the refusal over when no version of the entry serves, or keeps the version that serves,
   * neither judging the entry again nor reporting it again; with another pool it judges it again. Not for a refusal
   * time or the key server may lift (RETRIED): those are judged every pass.
   */
  readonly refused?: { readonly issuers: string; readonly refusal: Refusal };
  /**
   * A directory entry's read failed with this message (a chain over 1 MiB, a link loop, metadata that is not JSON):
   * each pass reads it again (a directory's permissions or a mount can change what the same file reads), and says
   * the refusal again only when the file or the failure changes. Said at every rescan, it logged an error and counted
   * a refused reload every 30 s for as long as the file stayed.
   */
  readonly unreadable?: string;
}

export interface PrepareOptions {
  readonly config: ProxyConfig;
  readonly store: EntryStorage;
  readonly previous: ReadonlyMap<string, CertificateRecord>;
  readonly validation: ValidationContext;
  /**
   * Store entries seen unchanged since their record was made, by a stat of
   * their files; updated in place. Owned by one caller: not shared between
   * concurrent prepares.
   */
  readonly seen: Map<string, SeenStat>;
  /**
   * The config's certificates refused as they are, by name: the input (chain text) and issuer pool judged, and the
   * refusal (or the read's failure) said. A later pass that finds the same input carries the refusal over, neither
   * judging nor reporting it again (RETRIED ones aside): each rescan logged it again. Updated in place; owned by one caller.
   */
  readonly refusedConfig?: Map<string, { readonly inputId: string; readonly issuers: string; readonly refusal: Refusal }>;
  /** Read and compare the content of every store entry whose stat identity is not settled (SIGHUP, the admin API). */
  readonly verify?: boolean;
  /** The serving state kept by the last run (kept.ts): entries whose files still match are not read. */
  readonly kept?: KeptState;
  /** Verdicts remembered by content hash (certs/verdicts.ts): an input judged before is not parsed again. Default: none kept. */
  readonly verdicts?: VerdictCache;
  /**
   * Look only at these store entries (a file store's watch named them):
   * every other record of `previous` carries over (not in `records`), and
   * `followed` of the previous pass carries over. Ignored for stores that
   * cannot be asked about single entries (the fleet's store).
   */
  readonly only?: {
    readonly names: ReadonlySet<string>;
    readonly followed: readonly string[];
  };
  /**
   * The store directory's identity when the last pass listed it (PreparedServing.storeDirId). Another directory in
   * its place is looked at whole (`only` ignored), and refused when it holds no certificate while entries were
   * served from the store (certs/store-dir.ts).
   */
  readonly storeDirId?: string | undefined;
  /** At start: the version of a store entry the last run served (last-served.ts), for an entry whose files are refused. */
  readonly lastServed?: (name: string) => ServedVersion | undefined;
}

/** A certificate read (or taken from the kept state) whose verdict is still to be given (prepare-judge.ts). */
export interface Pending {
  readonly candidate: CertificateCandidate;
  readonly from: CertificateRecord['from'];
  readonly inputId: string;
  /** Taken from the kept state: its verdict is known and its chain is in the kept pack. */
  readonly kept?: KeptRow;
}
