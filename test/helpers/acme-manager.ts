/**
 * A CertificateManager without a CA: its issuer records each order it is asked for and answers with the test's
 * `answer`, over the test's loaded records (none unless given) and a temporary state file. For the policy and the
 * orders' edges (acme-policy, acme-orders-edges).
 */
import { Registry } from 'prom-client';
import { loadProxyConfig } from '../../config/load.js';
import type { AcmeIssuer, IssueRequest } from '../../proxy/acme/issuer.js';
import { CertificateManager } from '../../proxy/acme/maintain.js';
import type { StateFile } from '../../proxy/acme/state.js';
import { registerAcmeMetrics } from '../../proxy/metrics.js';
import { captureLog } from './keyserver.js';

/** The default `acme` section, for a CA that is never asked. */
export const TEST_ACME = loadProxyConfig(undefined, { keyserver: { socket: '/nonexistent' }, acme: { directory: 'https://ca.example/dir' } }).acme!;

type ManagerDeps = ConstructorParameters<typeof CertificateManager>[0];

/** A manager over `state` whose issuer records each order it is asked for and answers with `answer`. */
export function recordingManager(
  state: StateFile,
  options: {
    answer: (request: IssueRequest) => Promise<unknown>;
    records?: ReturnType<ManagerDeps['records']>;
    renewalWindow?: ManagerDeps['renewalWindow'];
  },
): { manager: CertificateManager; orders: IssueRequest[] } {
  const orders: IssueRequest[] = [];
  const issuer = {
    issue: (request: IssueRequest) => {
      orders.push(request);
      return options.answer(request);
    },
  } as unknown as AcmeIssuer;
  const manager = new CertificateManager({
    config: TEST_ACME,
    state,
    issuer,
    keys: { generate: () => Promise.reject(new Error('unused')), remove: async () => undefined },
    records: () => options.records ?? new Map(),
    metrics: registerAcmeMetrics(new Registry(), () => 0),
    log: captureLog('warn').logger,
    renewalWindow: options.renewalWindow ?? (async () => undefined),
  });
  return { manager, orders };
}

/** An issuer's answer held until `release()`: the orders run while the test acts, then each gets `keyId`. */
export function heldAnswer(keyId: string): { answer: () => Promise<unknown>; release: () => void } {
  let release: () => void = () => undefined;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  return {
    answer: async () => {
      await held;
      return { keyId, chainPem: '', newKey: true };
    },
    release: () => release(),
  };
}
