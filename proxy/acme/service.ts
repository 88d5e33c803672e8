/**
 * The ACME part of the cluster primary, put together: state file, token keys,
 * issuer, challenge board, maintenance loop, metrics. cluster.ts calls
 * `startAcme` when `acme` is configured and gets back what the admin API and
 * the workers need.
 *
 * Why the primary: it already owns the certificate store, the one reload path
 * and the IPC channel to every worker; the workers stay on the data path and
 * never talk to the CA.
 */
import type { Registry } from 'prom-client';
import type { AcmeConfig, ProxyConfig } from '../../config/proxy-schema.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { registerAcmeMetrics } from '../metrics.js';
import { type BoardMessage, ChallengeBoard } from './challenges.js';
import { AcmeClient } from './client.js';
import { AcmeIssuer } from './issuer.js';
import { CertificateManager } from './maintain.js';
import { OnDemandGate } from './on-demand.js';
import { StateFile } from './state.js';
import { cliTokenKeys, type TokenKeys } from './token-keys.js';
import { readFileSync } from 'node:fs';
import type { CertificateRecord } from '../serving/spec.js';

export interface AcmeDeps {
  readonly config: ProxyConfig;
  readonly acme: AcmeConfig;
  readonly log: Logger;
  readonly registry: Registry;
  readonly keyserver: () => Promise<KeyserverClient>;
  readonly records: () => ReadonlyMap<string, CertificateRecord>;
  /** Validates and stores the chain, then reloads every worker; rejects when refused or not applied. */
  readonly store: (name: string, chainPem: string, keyId: string, domains: readonly string[]) => Promise<void>;
  /** Sends the board to every worker; resolves once each acknowledged it. */
  readonly broadcast: (message: BoardMessage) => Promise<void>;
  /** Overrides the token-key maker (tests). */
  readonly keys?: TokenKeys;
}

export interface RunningAcme {
  readonly manager: CertificateManager;
  readonly board: ChallengeBoard;
  /** Present when `acme.onDemand` is configured. */
  readonly onDemand: OnDemandGate | undefined;
  stop(): void;
}

export function startAcme(deps: AcmeDeps): RunningAcme {
  const { acme, log } = deps;
  const state = new StateFile(deps.config.stateDir);
  const keys = deps.keys ?? cliTokenKeys(acme.keyserverConfig);
  const board = new ChallengeBoard(deps.broadcast);
  let manager: CertificateManager | undefined;
  const metrics = registerAcmeMetrics(deps.registry, () => manager?.failing ?? 0);
  const issuer = new AcmeIssuer({
    config: acme,
    state,
    keys,
    keyserver: deps.keyserver,
    challenges: board,
    store: deps.store,
    log,
    onOrder: (result) => metrics.orders.inc({ result }),
  });
  const ca = acme.caBundle === null ? undefined : readFileSync(acme.caBundle, 'utf8');
  manager = new CertificateManager({
    config: acme,
    state,
    issuer,
    keys,
    records: deps.records,
    metrics,
    log,
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
  manager.start();
  const running = manager;
  const onDemand =
    acme.onDemand === null
      ? undefined
      : new OnDemandGate({
          config: acme.onDemand,
          log,
          isManaged: (name) => running.isManaged(name),
          order: (name) => void running.issue([name]).catch(() => undefined),
          onOutcome: (outcome) => metrics.onDemand.inc({ outcome }),
        });
  log.info({ directory: acme.directory, managed: Object.keys(state.state.certificates).length }, 'ACME issuer started');
  return { manager, board, onDemand, stop: () => manager?.stop() };
}

const UNSIGNED = {
  jwk: { crv: 'P-256', kty: 'EC', x: '', y: '' },
  sign: () => Promise.reject(new Error('unsigned client')),
} as const;
