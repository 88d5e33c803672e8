/**
 * The ACME part of the cluster primary, put together: state file, token keys,
 * issuer, challenge board, maintenance loop, metrics. cluster.ts calls
 * `startAcme` when `acme` is configured and gets back what the admin API and
 * the workers need.
 *
 * Why the primary: it already owns the certificate store, the one reload path
 * and the IPC channel to every worker; the workers stay on the data path and
 * never talk to the CA.
 *
 * One node alone keeps its state in `<stateDir>/acme/state.json` and its
 * challenges on its own board. In a fleet (`shared`: the etcd store) the
 * account, the managed certificates' state, the challenges, the on-demand
 * refusals and rate-limit counts are the fleet's, and orders run under
 * per-name locks: any node may order, one does per name, every node answers
 * the challenges (shared-state.ts, fleet-challenges.ts, issuance-locks.ts,
 * on-demand-ledger.ts).
 */
import type { Registry } from 'prom-client';
import type { AcmeConfig, ProxyConfig } from '../../config/proxy-schema.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { maskedUrl } from '../masked-url.js';
import { registerAcmeMetrics } from '../metrics.js';
import { type BoardMessage, ChallengeBoard } from './challenges.js';
import { AcmeClient } from './client.js';
import { AcmeIssuer, readCaBundle, type StoreChain } from './issuer.js';
import { CertificateManager } from './maintain.js';
import { OnDemandGate } from './on-demand.js';
import { FleetChallenges } from './fleet-challenges.js';
import { FleetLedger } from './on-demand-ledger.js';
import { fleetLocks } from './issuance-locks.js';
import { SharedIssuerState } from './shared-state.js';
import { type IssuerStateStore, StateFile } from './state.js';
import type { EtcdStore } from '../store/etcd-store.js';
import { cliTokenKeys, type TokenKeys } from './token-keys.js';
import type { CertificateRecord } from '../serving/spec.js';

export interface AcmeDeps {
  readonly config: ProxyConfig;
  readonly acme: AcmeConfig;
  readonly log: Logger;
  readonly registry: Registry;
  readonly keyserver: () => Promise<KeyserverClient>;
  readonly records: () => ReadonlyMap<string, CertificateRecord>;
  /** Whether the store or the config has an entry of that name, serving or refused (maintain.ts ManagerDeps.stored). */
  readonly stored?: (name: string) => boolean;
  /** Validates and stores the chain (fenced by `lock` in a fleet), then reloads every worker; rejects when refused or not applied. */
  readonly store: StoreChain;
  /** See IssuerDeps. */
  readonly assertStorable?: (name: string) => void;
  /** Sends the board to every worker; resolves once each acknowledged it. */
  readonly broadcast: (message: BoardMessage) => Promise<void>;
  /** The fleet's store, when `etcd` is configured. */
  readonly shared?: EtcdStore | undefined;
  /** How long a new challenge waits for every node of the fleet to serve it. */
  readonly publishWaitMs?: number;
  /** Overrides the token-key maker (tests). */
  readonly keys?: TokenKeys;
}

export interface RunningAcme {
  readonly manager: CertificateManager;
  readonly board: ChallengeBoard;
  /** Present when `acme.onDemand` is configured. */
  readonly onDemand: OnDemandGate | undefined;
  /** The fleet's ACME keys changed (the store's watch). */
  storeChanged(): void;
  stop(): void;
}

export function startAcme(deps: AcmeDeps): RunningAcme {
  const { acme, log } = deps;
  const { shared } = deps;
  const state: IssuerStateStore = shared === undefined ? new StateFile(deps.config.stateDir) : new SharedIssuerState(shared, log);
  const keys = deps.keys ?? cliTokenKeys(acme.keyserverConfig, undefined, (message) => log.warn(message));
  const board = new ChallengeBoard(deps.broadcast);
  const fleet = shared === undefined ? undefined : new FleetChallenges(shared, board, log, deps.publishWaitMs ?? 10_000);
  // One node alone needs no lock: its manager's in-flight map keeps one order per name.
  let manager: CertificateManager | undefined;
  // The fleet's state taken: the names its entries record may have changed (maintain.ts namesChanged).
  const refresh = (): void => {
    state.refresh?.();
    manager?.namesChanged();
  };
  const locks = shared === undefined ? {} : { locks: fleetLocks(shared, refresh) };
  const metrics = registerAcmeMetrics(deps.registry, () => manager?.failing ?? 0);
  const issuer = new AcmeIssuer({
    config: acme,
    state,
    keys,
    keyserver: deps.keyserver,
    challenges: fleet ?? board,
    store: deps.store,
    ...(deps.assertStorable === undefined ? {} : { assertStorable: deps.assertStorable }),
    ...locks,
    log,
    onOrder: (result) => metrics.orders.inc({ result }),
  });
  const ca = readCaBundle(acme);
  manager = new CertificateManager({
    config: acme,
    state,
    issuer,
    keys,
    records: deps.records,
    ...(deps.stored === undefined ? {} : { stored: deps.stored }),
    metrics,
    log,
    ...locks,
    renewalWindow: async (certId) => {
      // The renewal-info GET needs no signature (RFC 9773 §4.2): no account, no key server.
      const client = new AcmeClient({ directoryUrl: acme.directory, signer: UNSIGNED, timeoutMs: acme.timeoutMs, ...(ca === undefined ? {} : { ca }) });
      try {
        return await client.renewalInfo(certId);
      } finally {
        client.close();
      }
    },
  });
  fleet?.start();
  manager.start();
  const running = manager;
  const onDemand =
    acme.onDemand === null
      ? undefined
      : new OnDemandGate({
          config: acme.onDemand,
          log,
          // A certificate already named so (uploaded, or the config file's), serving or refused for now, is not ACME's to take:
          // the order's chain replaced it.
          isManaged: (name) => running.isManaged(name) || running.inStore(name),
          backingOff: (name) => running.backingOff(name),
          order: (name) => void running.issue([name], undefined, true).catch(() => undefined),
          onOutcome: (outcome, reason) => metrics.onDemand.inc(reason === undefined ? { outcome } : { outcome, reason }),
          ...(shared === undefined ? {} : { ledger: new FleetLedger(shared, acme.onDemand, log) }),
        });
  log.info({ directory: maskedUrl(acme.directory), managed: Object.keys(state.state.certificates).length }, 'ACME issuer started');
  return {
    manager,
    board,
    onDemand,
    storeChanged: () => {
      refresh();
      fleet?.changed();
    },
    stop: () => {
      manager?.stop();
      fleet?.stop();
    },
  };
}

const UNSIGNED = {
  jwk: { crv: 'P-256', kty: 'EC', x: '', y: '' },
  sign: () => Promise.reject(new Error('unsigned client')),
} as const;
