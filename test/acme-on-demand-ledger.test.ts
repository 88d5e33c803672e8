/**
 * The on-demand ledger of a fleet (proxy/acme/on-demand-ledger.ts) against a
 * real etcd member, under what a client can make of it: every name in its SNI
 * the ask endpoint refuses is a refusal the ledger shares with the fleet, up
 * to a cap. Checking the cap walked the store's whole mirror (every
 * certificate's keys too) for each refusal, so a flood of random names made
 * the primary walk it as fast as the ask endpoint answered; it is counted at
 * most once a second now. The fleet's hourly limits and a refusal seen by
 * another node are in fleet-acme-state.test.ts.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { FleetLedger } from '../proxy/acme/on-demand-ledger.js';
import type { EtcdStore } from '../proxy/store/etcd-store.js';
import { EtcdStores } from './helpers/etcd-stores.js';
import { waitFor } from './helpers/proxy-cluster.js';

let stores: EtcdStores;
const config = loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir', onDemand: { refusedSeconds: 60 } } }).acme!.onDemand!;

beforeAll(async () => {
  stores = await EtcdStores.start('/od-ledger/', 2_000);
}, 60_000);
afterAll(() => stores?.close());

/** `store`, with each walk of its mirror by keys() counted. */
function counted(store: EtcdStore): { store: EtcdStore; walks: () => number } {
  let walks = 0;
  const proxy = new Proxy(store, {
    get(target, prop) {
      if (prop === 'keys') {
        return (under: string) => {
          walks++;
          return target.keys(under);
        };
      }
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { store: proxy, walks: () => walks };
}

it('500 refused names in a burst: shared with the fleet, the mirror walked once to count them, not once per name', async () => {
  const a = counted(await stores.store('/od/', 'a'));
  const ledger = new FleetLedger(a.store, config, stores.log);
  for (let i = 0; i < 500; i++) ledger.rememberRefusal(`r${i}.flood.test`, 'the ask endpoint answered 403');
  expect(a.walks()).toBeLessThanOrEqual(2);
  expect(ledger.refused('r0.flood.test')).toBe(true);
  // Shared all the same: another node knows them once its mirror has them.
  const other = new FleetLedger(await stores.store('/od/', 'b'), config, stores.log);
  await waitFor('node B to know the refusals', () => (other.refused('r0.flood.test') && other.refused('r499.flood.test') ? true : undefined), 15_000);
  expect(other.refused('r500.flood.test')).toBe(false);
});
