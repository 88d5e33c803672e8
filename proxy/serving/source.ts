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
 *
 * This file holds the pass and the commit that move what serves on (its
 * records, refusals and entries present: served-records.ts). Its parts: the
 * config a pass reads with (pass-config.ts, restart-only.ts), the key server
 * it validates against (keyserver-check.ts), what a pass found
 * (next-serving.ts), the validation (prepare.ts), uploads (upload.ts), and
 * what is kept for the next start (next-start.ts).
 */
import assert from 'node:assert/strict';
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { loadIssuerPool } from '../certs/issuers.js';
import { VerdictCache } from '../certs/verdict-cache.js';
import { CertificateStore } from '../certs/store.js';
import type { EtcdStore } from '../store/etcd-store.js';
import type { EntryStorage } from '../store/storage.js';
import { connectForPass, passLookup } from './keyserver-check.js';
import { type NextServing, routeRefusal } from './next-serving.js';
import { NextStart } from './next-start.js';
import type { PackedDelta } from './pack.js';
import { InTurn } from './in-turn.js';
import { prepareServing, type SeenStat } from './prepare.js';
import { passConfig } from './pass-config.js';
import { restartNeeded } from './restart-only.js';
import { ServedRecords } from './served-records.js';
import type { CertificateRecord, Refusal, Routing, ServingDelta } from './spec.js';
import { type UploadPin, uploadCertificate } from './upload.js';

export class ServingSource {
  #config: ProxyConfig;
  /** The records, refusals and entries present that serve now (served-records.ts). */
  readonly #served = new ServedRecords();
  #generation = 0;
  #followed: readonly string[] = [];
  readonly #seen = new Map<string, SeenStat>();
  /** The config's certificates refused as they are (prepare.ts refusedConfig): said once, not at every pass. */
  readonly #refusedConfig = new Map<string, { readonly inputId: string; readonly issuers: string; readonly refusal: Refusal }>();
  readonly #uploads = new InTurn<string>();
  /** The store directory the last committed pass listed (certs/store-dir.ts): another one in its place is not taken empty. */
  #storeDirId: string | undefined;
  /** What this run keeps for the next start: the kept pack, the log of last served versions (next-start.ts). */
  readonly #nextStart: NextStart;
  #fileDomains: ProxyConfig['domains'];
  /** The origin CA files of the committed routing table, as the pass that made it read them (pass-config.ts). */
  #originCas: Routing['originCas'];
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
    this.#config = config;
    this.#fileDomains = config.domains;
    this.#reloadConfig = options.reloadConfig;
    this.#onUnverified = options.onUnverified;
    this.#shared = options.shared;
    this.#verdicts = new VerdictCache({ file: VerdictCache.fileIn(config.stateDir), warn: options.warn ?? (() => {}) });
    this.#nextStart = new NextStart({
      keepState: options.keepState === true,
      stateDir: config.stateDir,
      storeDir: config.certStore.dir,
      shared: options.shared,
      seen: this.#seen,
      warn: options.warn ?? (() => {}),
    });
  }

  get config(): ProxyConfig {
    return this.#config;
  }
  get records(): ReadonlyMap<string, CertificateRecord> {
    return this.#served.records;
  }
  /** The generation of the last committed pass: what serves now (0 before the first). */
  get generation(): number {
    return this.#generation;
  }
  /** Entries whose latest version was refused, until they change or are removed. */
  get refusals(): ReadonlyMap<string, Refusal> {
    return this.#served.refusals;
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
    const { config, fromFile, fileDomains, routes, originCas } = await passConfig(this.#config, {
      reload: this.#reloadConfig && this.#generation > 0,
      fileDomains: this.#fileDomains,
      shared: this.#shared,
    });
    // The running certStore settings (a restart-only key), with the file's current content.
    const issuers = loadIssuerPool(this.#config.certStore.intermediates, config.source);
    const client = await connectForPass(config, this.#generation === 0, this.#onUnverified);
    const asked = options.only !== undefined && this.#generation > 0;
    const kept = this.#generation === 0 ? this.#nextStart.loadKept() : undefined;
    const lastServed = this.#generation === 0 ? this.#nextStart.lastServedReader(kept) : undefined;
    try {
      const prepared = await prepareServing({
        config,
        store: this.#shared ?? new CertificateStore(config.certStore.dir),
        previous: this.#served.records,
        seen: this.#seen,
        refusedConfig: this.#refusedConfig,
        verify: options.verify === true,
        verdicts: this.#verdicts,
        ...(kept === undefined ? {} : { kept }),
        // At start, an entry whose files are refused serves the version the last run served (serve-last.ts).
        ...(lastServed === undefined ? {} : { lastServed }),
        ...(asked ? { only: { names: options.only!, followed: this.#followed } } : {}),
        storeDirId: this.#storeDirId,
        validation: {
          now: new Date(),
          issuers,
          keyserverSpki: passLookup(client, this.#generation === 0, this.#onUnverified),
        },
      });
      if (kept !== undefined) this.#nextStart.adopt(kept, prepared.fromKept, prepared.records);
      // A targeted pass answered for its names and the config's certificates (before and now) alone. Asked for, a pass
      // may still look at everything: the fleet's store, a store directory another one took the place of (prepare.ts).
      const targeted = asked && prepared.targeted;
      const answered = targeted ? [...options.only!, ...this.#config.certificates.map((c) => c.name), ...config.certificates.map((c) => c.name)] : undefined;
      const remove = (answered ?? [...this.#served.records.keys()]).filter((name) => this.#served.records.has(name) && !prepared.records.has(name));
      const upsert = [...prepared.records.values()].filter((r) => this.#served.records.get(r.name) !== r);
      const routing: Routing = { domains: config.domains, sni: config.sni, originCas };
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
        restartNeeded: restartNeeded(fromFile, this.#config),
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
    return this.#uploads.run(name, () =>
      uploadCertificate(
        {
          // Read as the upload reaches each step: a pass may commit while it waits for the key server.
          config: () => this.#config,
          shared: this.#shared,
          store: this.store,
          storeDirId: this.#storeDirId,
          records: this.#served.records,
        },
        name,
        chainText,
        pin,
      ),
    );
  }

  /** Records `next` as what now serves. */
  commit(next: NextServing): void {
    assert.equal(next.delta.generation, this.#generation + 1, 'deltas are committed in order');
    const superseded = this.#served.apply(next);
    const records = this.#served.records;
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
    this.#originCas = next.delta.routing.originCas;
    // Restart-only settings keep their running values; routing and certificates move on.
    this.#config = Object.freeze({ ...this.#config, domains: next.config.domains, sni: next.config.sni, certificates: next.config.certificates });
    this.#nextStart.committed(next, records, this.#served.refusals);
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
      routing: { domains: this.#config.domains, sni: this.#config.sni, originCas: this.#originCas },
      upsert: [...this.#served.records.values()],
      remove: [],
      whole: true,
    };
  }

  /** The directory whole states are kept in for the next start (kept.ts), made now; undefined when none are kept. */
  keptDir(): string | undefined {
    return this.#nextStart.keptDir();
  }

  /** The file of the pack kept by the last run, until a newer whole state is written. */
  get keptPack(): string | undefined {
    return this.#nextStart.keptPack;
  }

  /** The kept pack when `whole` is exactly the state it holds (every record taken from it at start): sent again, not written. */
  keptPackFor(whole: ServingDelta): PackedDelta | undefined {
    return this.#nextStart.keptPackFor(whole);
  }

  /** Records a whole state just written for the workers as the one kept for the next start. */
  keepWritten(packed: PackedDelta, whole: ServingDelta, chains: Float64Array): void {
    this.#nextStart.keepWritten(packed, whole, chains);
  }

  /** What serves once `delta` (the next, not yet committed) is applied, as one whole delta: a rebase of the workers (serving/distribute.ts). */
  wholeWith(delta: ServingDelta): ServingDelta {
    return this.#served.wholeWith(delta);
  }
}
