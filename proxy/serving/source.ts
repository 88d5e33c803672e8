/**
 * The one reload path. Every trigger (start, a file change in the store or
 * the config, SIGHUP, the admin API, a change in the fleet's etcd) ends in
 * `ServingSource.next()`, which reloads the config file, reads the store,
 * validates what changed and returns the delta to apply; `commit()` records
 * it once applied. The store is the certificate store directory, or in a
 * fleet the etcd store's mirror (store/etcd-store.ts), whose routes are then
 * added to the config file's domains.
 *
 * Owned by the cluster primary (or by a worker started on its own, as tests
 * and benchmarks do). Concurrency: one `next()`/`commit()` at a time; the
 * caller serialises (coordinator.ts).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { loadProxyConfig } from '../../config/load.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { KeyedgeError, RemoteError } from '../../keyserver/shared/errors.js';
import { connectAnyKeyserver, keyserverSpkiLookup } from '../certs/keyserver-lookup.js';
import { loadIssuerPool } from '../certs/issuers.js';
import { putCertificate } from '../certs/manage.js';
import { VerdictCache } from '../certs/verdict-cache.js';
import { checkOriginTargets } from '../http/origins.js';
import { CertificateStore } from '../certs/store.js';
import { assertStoreNotReplaced, presentDirectoryId } from '../certs/store-dir.js';
import type { EtcdStore } from '../store/etcd-store.js';
import type { HeldLock } from '../store/lock.js';
import { storedRoutes } from '../store/routes.js';
import type { EntryStorage } from '../store/storage.js';
import { type KeptState, keepPacked, keptDir, loadKept, prepareKeptDir } from './kept.js';
import { LastServed } from './last-served.js';
import { PACK_THRESHOLD, type PackedDelta } from './pack.js';
import { InTurn } from './in-turn.js';
import { LayeredMap } from './layered.js';
import { prepareServing, type SeenStat, servesFromStore } from './prepare.js';
import { loadSettled } from './settling-read.js';
import type { CertificateRecord, Refusal, Routing, ServingDelta } from './spec.js';

/** Settings that only a restart can change: a reload that changes them applies the rest and says so. */
const RESTART_ONLY = [
  'workers',
  'listen',
  'httpRedirect',
  'admin',
  'keyserver',
  'stateDir',
  'certStore',
  'tls',
  'limits',
  'forwarding',
  'log',
  'shutdownGraceMs',
  'etcd',
  // Started once by the primary (acme/service.ts): the issuer, its key server config and the on-demand gate keep the
  // section they were started with. A reload that changed it said nothing, leaving the operator believing it applied.
  'acme',
  // Read once by the primary's supervisor and serving distribution (cluster-supervisor.ts, cluster.ts): likewise.
  'workerStartTimeoutMs',
  'workerSilentTimeoutMs',
  'reloadApplyTimeoutMs',
] as const;

type RestartOnly = (typeof RESTART_ONLY)[number];

/** The restart-only settings of `config`. */
function runningSettings(config: ProxyConfig): Pick<ProxyConfig, RestartOnly> {
  return Object.fromEntries(RESTART_ONLY.map((key) => [key, config[key]])) as Pick<ProxyConfig, RestartOnly>;
}

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
function routeRefusal(refused: { readonly name: string; readonly message: string; readonly revision: number }): string {
  return `${refused.name}\0${refused.revision}\0${refused.message}`;
}

/** What an upload pins instead of the entry's current names and key id, where it came from, and the issuance lock it holds. */
type UploadPin = { readonly keyId?: string; readonly names?: readonly string[]; readonly source?: string; readonly lock?: HeldLock };

export class ServingSource {
  #config: ProxyConfig;
  /** Layered (layered.ts): a commit of k changes costs O(k + changes since the base), not a copy of every record. */
  #records = new LayeredMap<string, CertificateRecord>(new Map());
  #refusals = new Map<string, Refusal>();
  #generation = 0;
  #followed: readonly string[] = [];
  /** Owned here, updated in place by each commit (a targeted pass answers for its names alone). */
  #present = new Set<string>();
  readonly #seen = new Map<string, SeenStat>();
  /** The config's certificates refused as they are (prepare.ts refusedConfig): said once, not at every pass. */
  readonly #refusedConfig = new Map<string, { readonly inputId: string; readonly issuers: string; readonly refusal: Refusal }>();
  /** A fleet's entries whose latest value is refused: the etcd revision judged (statId), for the log of last served versions. */
  readonly #refusedAt = new Map<string, string>();
  readonly #uploads = new InTurn<string>();
  /** The store directory the last committed pass listed (certs/store-dir.ts): another one in its place is not taken empty. */
  #storeDirId: string | undefined;
  /** The serving state the last run kept (kept.ts), until the first pass has used it; then only what can be sent again. */
  #kept: KeptState | undefined;
  /** Records made from the kept state's rows at start: a state of exactly these is the kept pack. */
  #fromKept = new WeakSet<CertificateRecord>();
  readonly #keepState: boolean;
  /** The version of each store entry last served, for a start that refuses its files (last-served.ts); with the kept state. */
  readonly #lastServed: LastServed | undefined;
  /** The generation the log of last served versions speaks for; 0: the last run's, not yet written by this one. */
  #servedGeneration = 0;
  readonly #warn: (message: string) => void;
  #fileDomains: ProxyConfig['domains'];
  readonly #reloadConfig: boolean;
  readonly #onUnverified: ((reason: string, warning: string) => void) | undefined;
  readonly #shared: EtcdStore | undefined;
  readonly #verdicts: VerdictCache;
  /**
   * The stored routes' refusals the last committed pass found (routeRefusal): each is a warning once, not again at
   * every pass (but at every reload an operator asks for). A fleet's reload runs at each change anywhere in etcd, so a route written by hand or by a broken node
   * (thousands, say) was logged again each time.
   */
  #refusedRoutes: ReadonlySet<string> = new Set();

  /**
   * `reloadConfig`: re-read `config.source` on every pass after the first.
   * `onUnverified`: told when the start had to go ahead without the key server: the failure's message, and the
   * warning worded by its cause (unverifiedStartWarning).
   * `shared`: the fleet's store (etcd), which then holds the certificate
   * entries and adds its routes to the file's domains; else the store directory.
   * `warn`: told when the verdict file (certs/verdict-cache.ts, in the state
   * directory) is ignored or cannot be written.
   */
  constructor(
    config: ProxyConfig,
    options: {
      readonly reloadConfig: boolean;
      readonly onUnverified?: (reason: string, warning: string) => void;
      readonly shared?: EtcdStore;
      readonly warn?: (message: string) => void;
      /** Keep whole states in the state directory for the next start (the cluster primary: kept.ts). */
      readonly keepState?: boolean;
    },
  ) {
    this.#keepState = options.keepState === true;
    this.#warn = options.warn ?? (() => {});
    this.#config = config;
    this.#fileDomains = config.domains;
    this.#reloadConfig = options.reloadConfig;
    this.#onUnverified = options.onUnverified;
    this.#shared = options.shared;
    this.#verdicts = new VerdictCache({ file: VerdictCache.fileIn(config.stateDir), warn: options.warn ?? (() => {}) });
    const shared = this.#shared;
    this.#lastServed = !this.#keepState
      ? undefined
      : shared === undefined
        ? new LastServed(keptDir(config.stateDir), config.certStore.dir, this.#warn)
        : new LastServed(keptDir(config.stateDir), shared.dir, this.#warn, { revisionOf: (record) => this.#revisionOf(record) });
    // A fleet's node keeps its own log, of etcd revisions (last-served.ts): one left by an earlier run on the store
    // directory would, after this run, name versions older than what served since.
    if (this.#keepState && shared !== undefined) new LastServed(keptDir(config.stateDir), config.certStore.dir, this.#warn).discard();
  }

  get config(): ProxyConfig {
    return this.#config;
  }
  get records(): ReadonlyMap<string, CertificateRecord> {
    return this.#records;
  }
  /** The generation of the last committed pass: what serves now (0 before the first). */
  get generation(): number {
    return this.#generation;
  }
  /** Entries whose latest version was refused, until they change or are removed. */
  get refusals(): ReadonlyMap<string, Refusal> {
    return this.#refusals;
  }
  get store(): EntryStorage {
    return this.#shared ?? new CertificateStore(this.#config.certStore.dir);
  }
  /** The chain paths outside the store directory (or links out of it) that the last committed pass read. */
  get followed(): readonly string[] {
    return this.#followed;
  }

  /**
   * Prepares the next delta. Throws a ConfigError when the config file is
   * refused as a whole (bad JSON, schema, sni.default missing, the
   * intermediates unreadable): nothing changes then. `verify`: compare every
   * store entry's content, not only its stat (an operator's explicit reload).
   * `only`: look at these store entries alone (a watch event or a PUT named
   * them; prepare.ts), keeping every other record; ignored on the first pass.
   */
  async next(options: { readonly verify?: boolean; readonly only?: ReadonlySet<string> } = {}): Promise<NextServing> {
    // A refusal of a file changed a moment ago is looked at again once it is quiet (settling-read.ts loadSettled).
    const reloaded = this.#reloadConfig && this.#generation > 0 ? await loadSettled(this.#config.source, loadProxyConfig) : undefined;
    const fileDomains = reloaded?.domains ?? this.#fileDomains;
    const routes =
      this.#shared === undefined ? undefined : storedRoutes(this.#shared, path.dirname(this.#config.source), new Set(fileDomains.map((d) => d.name)));
    const fromFile = reloaded ?? this.#config;
    // A restart-only setting the file changed keeps its running value until the restart, for this pass too: the
    // certificates were checked against the key server and read from the store directory the file named, while the
    // workers went on signing through the running one and serving its store (every handshake for a renewal whose key
    // only the new key server had failed; a new store directory dropped every running entry and lost uploads).
    const config: ProxyConfig = Object.freeze({
      ...fromFile,
      ...runningSettings(this.#config),
      domains: routes === undefined ? fileDomains : [...fileDomains, ...routes.domains],
    });
    checkOriginTargets(config.domains);
    // The running certStore settings (a restart-only key), with the file's current content.
    const issuers = loadIssuerPool(this.#config.certStore.intermediates, config.source);
    let client: KeyserverClient | undefined;
    try {
      client = await connectKeyserver(config);
    } catch (err) {
      // A reload waits for the key server: swapping in a certificate whose key
      // nobody checked could fail every handshake for it. At start there is
      // nothing to keep serving, and the keyless bridge checks each key
      // against its chain when it reaches the key server, so the proxy comes
      // up and reports not ready until then.
      if (this.#generation > 0)
        throw new KeyedgeError('KEYEDGE_ERR_CLOSED', `cannot validate against the key server: ${(err as Error).message}`, { cause: err });
      this.#onUnverified?.((err as Error).message, unverifiedStartWarning(err));
    }
    let lookup = client;
    const asked = options.only !== undefined && this.#generation > 0;
    const kept = this.#generation === 0 && this.#keepState && this.#shared === undefined ? loadKept(config.stateDir, this.#warn) : undefined;
    try {
      const prepared = await prepareServing({
        config,
        store: this.#shared ?? new CertificateStore(config.certStore.dir),
        previous: this.#records,
        seen: this.#seen,
        refusedConfig: this.#refusedConfig,
        verify: options.verify === true,
        verdicts: this.#verdicts,
        ...(kept === undefined ? {} : { kept }),
        // At start, an entry whose files are refused serves the version the last run served (serve-last.ts).
        ...(this.#generation === 0 && this.#lastServed !== undefined ? { lastServed: this.#lastServed.reader(kept) } : {}),
        ...(asked ? { only: { names: options.only!, followed: this.#followed } } : {}),
        storeDirId: this.#storeDirId,
        validation: {
          now: new Date(),
          issuers,
          keyserverSpki: async (keyId, leafSpki) => {
            if (lookup === undefined) return leafSpki;
            try {
              return await keyserverSpkiLookup(lookup)(keyId, leafSpki);
            } catch (err) {
              if (this.#generation > 0 || err instanceof RemoteError) throw err;
              // Hung or gone at start: the same as unreachable, once for all the rest.
              if (lookup !== undefined) this.#onUnverified?.((err as Error).message, unverifiedStartWarning(err));
              lookup = undefined;
              return leafSpki;
            }
          },
        },
      });
      if (kept !== undefined) {
        this.#kept = kept;
        for (const name of prepared.fromKept) {
          const record = prepared.records.get(name);
          if (record !== undefined) this.#fromKept.add(record);
        }
      }
      // A targeted pass answered for its names and the config's certificates (before and now) alone. Asked for, a pass
      // may still look at everything: the fleet's store, a store directory another one took the place of (prepare.ts).
      const targeted = asked && prepared.targeted;
      const answered = targeted ? [...options.only!, ...this.#config.certificates.map((c) => c.name), ...config.certificates.map((c) => c.name)] : undefined;
      const remove = (answered ?? [...this.#records.keys()]).filter((name) => this.#records.has(name) && !prepared.records.has(name));
      const upsert = [...prepared.records.values()].filter((r) => this.#records.get(r.name) !== r);
      const routing: Routing = { domains: config.domains, sni: config.sni };
      return {
        delta: { generation: this.#generation + 1, routing, upsert, remove },
        config,
        refused: prepared.refused,
        warnings: [
          ...prepared.warnings,
          // Said again to an operator who asks (SIGHUP, POST /reload): stored routes have no listing of their own.
          ...(routes?.refused ?? [])
            .filter((r) => options.verify === true || !this.#refusedRoutes.has(routeRefusal(r)))
            .map((r) => ({ name: r.name, message: r.message })),
        ],
        restartNeeded: RESTART_ONLY.filter((key) => JSON.stringify(fromFile[key]) !== JSON.stringify(this.#config[key])),
        present: prepared.present,
        unsettled: prepared.unsettled,
        followed: prepared.followed,
        fileDomains,
        targeted,
        answered: answered ?? [],
        storeDirId: prepared.storeDirId,
        refusedRoutes: new Set((routes?.refused ?? []).map(routeRefusal)),
        refusedAt: prepared.refusedAt,
      };
    } finally {
      client?.close();
    }
  }

  /**
   * Validates a chain for store entry `name` (the admin API's PUT) and writes
   * it, keeping the entry's pinned names and key id unless `pin` gives new
   * ones (the ACME issuer's renewal with a new key). Rejects, leaving the
   * store unchanged, when the chain is refused.
   */
  putCertificate(name: string, chainText: string, pin: UploadPin = {}): Promise<void> {
    // One upload of an entry at a time (in-turn.ts): each validates against what the one before it wrote.
    return this.#uploads.run(name, () => this.#put(name, chainText, pin));
  }

  async #put(name: string, chainText: string, pin: UploadPin): Promise<void> {
    // An ACME order's result in a fleet: written only while its issuance lock is held (store/lock.ts).
    let store = pin.lock !== undefined && this.#shared !== undefined ? this.#shared.fenced(pin.lock) : this.store;
    // Refused before any validation when the shared store cannot take it.
    this.#shared?.assertWritable();
    // A store directory renamed away is not recreated empty by an upload, nor is one an empty directory took the place
    // of filled with it: the next pass would take it for the whole store, and serve that entry alone (certs/store-dir.ts).
    if (store instanceof CertificateStore) {
      const now = presentDirectoryId(store.dir);
      // Cheapest first: the identity (a stat) rules out nearly every upload before the records are walked or the store listed.
      if (now !== this.#storeDirId && servesFromStore(this.#records) && store.list().length === 0) assertStoreNotReplaced(store.dir, this.#storeDirId, now);
      // Written into the directory checked here or into none: one swapped in during the validation or the write is
      // refused too (certs/store-write.ts).
      store = new CertificateStore(store.dir, { dirId: now });
    }
    const client = await connectKeyserver(this.#config);
    try {
      await putCertificate(
        store,
        {
          mode: store.has(name) ? 'replace' : 'add',
          name,
          chainText,
          source: pin.source ?? 'admin API',
          ...(pin.keyId === undefined ? {} : { keyId: pin.keyId }),
          ...(pin.names === undefined ? {} : { names: pin.names }),
        },
        {
          now: new Date(),
          keyserverSpki: keyserverSpkiLookup(client),
          issuers: loadIssuerPool(this.#config.certStore.intermediates, this.#config.source),
          reserved: this.#config.certificates.map((c) => c.name),
        },
      );
    } finally {
      client.close();
    }
  }

  /** Records `next` as what now serves. */
  commit(next: NextServing): void {
    assert.equal(next.delta.generation, this.#generation + 1, 'deltas are committed in order');
    const previous = this.#records;
    // Verdicts of inputs that no longer serve: a targeted pass names them, a full one keeps only what serves.
    const superseded: string[] = [];
    for (const name of next.delta.remove) {
      const old = previous.get(name);
      if (old !== undefined) superseded.push(old.inputId);
      this.#refusals.delete(name);
    }
    for (const record of next.delta.upsert) {
      const old = previous.get(record.name);
      if (old !== undefined && old.inputId !== record.inputId) superseded.push(old.inputId);
      this.#refusals.delete(record.name);
    }
    let records = previous.with(
      next.delta.upsert.map((r) => [r.name, r] as const),
      next.delta.remove,
    );
    // A new base once the changes on top outgrow a quarter of it: each commit copies the top layer.
    if (records.changes > Math.max(1024, records.base.size / 4)) records = new LayeredMap(new Map(records));
    for (const refusal of next.refused) this.#refusals.set(refusal.name, refusal);
    if (next.targeted) {
      for (const name of next.answered) {
        if (next.present.has(name)) this.#present.add(name);
        else this.#present.delete(name);
      }
    } else this.#present = new Set(next.present);
    // Refusals of entries that have since gone from the store are moot.
    for (const name of this.#refusals.keys()) if (!this.#present.has(name)) this.#refusals.delete(name);
    this.#records = records;
    this.#generation = next.delta.generation;
    // Verdicts of what no longer serves go with the next write of the file.
    if (!next.targeted) {
      if (next.delta.upsert.length > 0 || next.delta.remove.length > 0 || next.delta.generation === 1)
        this.#verdicts.retain(new Set([...records.values()].map((r) => r.inputId)));
    } else this.#verdicts.forget(superseded);
    this.#followed = next.followed;
    this.#refusedRoutes = next.refusedRoutes ?? new Set();
    this.#storeDirId = next.storeDirId;
    this.#fileDomains = next.fileDomains;
    // Restart-only settings keep their running values; routing and certificates move on.
    this.#config = Object.freeze({ ...this.#config, domains: next.config.domains, sni: next.config.sni, certificates: next.config.certificates });
    this.#keepServed(next);
  }

  /**
   * The etcd revision a fleet's served record speaks for (last-served.ts): the refused value judged after it, while it
   * serves on; else its own, as read. Undefined when not known (the row is then never fallen back on).
   */
  #revisionOf(record: CertificateRecord): string | undefined {
    const refused = this.#refusedAt.get(record.name);
    if (refused !== undefined) return refused;
    const seen = this.#seen.get(record.name);
    return seen?.inputId === record.inputId ? seen.statId : undefined;
  }

  /**
   * Brings the log of last served versions (last-served.ts) to the generation just committed: the delta appended
   * when the log speaks for the one before; else, for a state that goes to the workers inline, the log written
   * whole; else (a large state, or a large change) it waits for the whole state the workers are sent as a pack,
   * which starts it anew (keepWritten): until then it holds what they served last.
   */
  #keepServed(next: NextServing): void {
    const { delta } = next;
    const log = this.#lastServed;
    if (log === undefined || this.#servedGeneration >= delta.generation) return;
    const fleet = this.#shared !== undefined;
    // A fleet's entry whose new value is refused while its previous version serves on: that version's row now speaks
    // for the refused revision (the one a restart may find and fall back from). Kept until the entry changes.
    const refusedOn: CertificateRecord[] = [];
    if (fleet) {
      for (const record of delta.upsert) this.#refusedAt.delete(record.name);
      for (const name of delta.remove) this.#refusedAt.delete(name);
      for (const [name, statId] of next.refusedAt ?? []) {
        const record = this.#records.get(name);
        if (record === undefined || this.#refusedAt.get(name) === statId) continue;
        this.#refusedAt.set(name, statId);
        if (!delta.upsert.includes(record)) refusedOn.push(record);
      }
      for (const name of this.#refusedAt.keys()) if (!this.#records.has(name) || !this.#refusals.has(name)) this.#refusedAt.delete(name);
    }
    const size = this.#records.size;
    const lines = log.lines;
    const follows = lines !== undefined && this.#servedGeneration === delta.generation - 1 && delta.upsert.length + delta.remove.length <= PACK_THRESHOLD;
    // A small state's log is written whole again once it holds twice its rows; a large one's starts anew with each pack
    // (a fleet's, which keeps no pack, is written whole instead).
    if (follows && ((size > PACK_THRESHOLD && !fleet) || lines <= 2 * size + 64)) log.append([...delta.upsert, ...refusedOn], delta.remove);
    else if (size <= PACK_THRESHOLD || fleet) log.rewrite(null, this.#records.values());
    else return;
    this.#servedGeneration = delta.generation;
  }

  /** Writes the remembered verdicts now, if any changed, and stops the save timer (at shutdown). */
  close(): void {
    this.#verdicts.flush();
    this.#verdicts.close();
  }

  /** Everything that serves now, as one whole delta: what a starting worker needs. */
  snapshot(): ServingDelta {
    return {
      generation: this.#generation,
      routing: { domains: this.#config.domains, sni: this.#config.sni },
      upsert: [...this.#records.values()],
      remove: [],
      whole: true,
    };
  }

  /** The directory whole states are kept in for the next start (kept.ts), made now; undefined when none are kept. */
  keptDir(): string | undefined {
    return this.#keepState && this.#shared === undefined ? prepareKeptDir(this.#config.stateDir, this.#kept?.packed.file) : undefined;
  }

  /** The file of the pack kept by the last run, until a newer whole state is written. */
  get keptPack(): string | undefined {
    return this.#kept?.packed.file;
  }

  /** The kept pack when `whole` is exactly the state it holds (every record taken from it at start): sent again, not written. */
  keptPackFor(whole: ServingDelta): PackedDelta | undefined {
    const kept = this.#kept;
    if (kept === undefined || whole.upsert.length !== kept.count) return undefined;
    for (const record of whole.upsert) if (!this.#fromKept.has(record)) return undefined;
    // What serves is the kept pack's state: the log of last served versions starts anew on it.
    if (this.#shared === undefined) this.#lastServed?.rewrite(kept.packed.file, []);
    this.#servedGeneration = whole.generation;
    return kept.packed;
  }

  /** Records a whole state just written for the workers as the one kept for the next start. */
  keepWritten(packed: PackedDelta, whole: ServingDelta, chains: Float64Array): void {
    this.#kept = undefined;
    const statOf = (record: CertificateRecord): string | undefined => {
      const seen = this.#seen.get(record.name);
      return seen?.settled && seen.inputId === record.inputId ? seen.statId : undefined;
    };
    // The log of last served versions starts anew on it; or, when it could not be kept, goes (it would be stale).
    if (keepPacked(this.#config.stateDir, packed, whole.upsert, chains, statOf, this.#warn)) this.#lastServed?.rewrite(packed.file, []);
    else this.#lastServed?.discard();
    this.#servedGeneration = whole.generation;
  }

  /** What serves once `delta` (the next, not yet committed) is applied, as one whole delta: a rebase of the workers (serving/distribute.ts). */
  wholeWith(delta: ServingDelta): ServingDelta {
    const records = new Map(this.#records);
    for (const name of delta.remove) records.delete(name);
    for (const record of delta.upsert) records.set(record.name, record);
    return { generation: delta.generation, routing: delta.routing, upsert: [...records.values()], remove: [], whole: true };
  }
}

/**
 * The warning of a start that goes ahead without the key server, worded by its cause: its connection settings refused
 * here (a client key that is no key or not its certificate's, KEYEDGE_ERR_CONFIG; a TLS file that cannot be read,
 * KEYEDGE_ERR_SETUP), a config error that no wait mends, or the key server not reached (down, hung, refusing).
 */
export function unverifiedStartWarning(err: unknown): string {
  const code = err instanceof KeyedgeError ? err.code : undefined;
  return code === 'KEYEDGE_ERR_CONFIG' || code === 'KEYEDGE_ERR_SETUP'
    ? 'key server not contacted at start, its connection settings refused (a config error, not an outage): certificates load unverified'
    : 'key server unreachable at start: certificates load unverified, handshakes wait for it';
}

export function connectKeyserver(config: ProxyConfig): Promise<KeyserverClient> {
  // Validation is off the handshake path: a key server busy signing may take longer than a handshake's deadline.
  return connectAnyKeyserver(config.keyserver, Math.max(config.keyserver.timeoutMs * 4, 2_000));
}
