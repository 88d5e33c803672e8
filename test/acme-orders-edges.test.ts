/**
 * The edges of an entry's orders, without pebble (a fake issuer, a mutable map
 * of loaded records, the real CertificateManager, OrderRunner, OnDemandGate):
 *
 *  1. A failed order records a new list only when the store step says it wrote
 *     its chain (ChainStoredNotLoadedError): a serving certificate that changed
 *     for another reason (an operator's `cert replace`, a fleet peer's renewal
 *     loaded late) leaves the entry's names alone; a chain stored whose reload
 *     was refused as a whole makes them the entry's.
 *  2. An issue without an entry name (entryForList): a failed on-demand entry
 *     nothing serves holds no names; two entries holding the names are a 409
 *     whose advice works; two such issues at once cannot put one new name on
 *     two entries (running orders' names count).
 *  3. The on-demand gate: an expansion started while it awaits its ask endpoint
 *     covers the name, and the gate's order is not placed; a name whose order
 *     failed waits out its backoff before the gate orders it again; its check
 *     of the managed names costs no walk of every entry per name; its orders
 *     run at most renewal.maxConcurrent at once.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { AcmeError, ChainStoredNotLoadedError } from '../proxy/acme/errors.js';
import { OnDemandGate } from '../proxy/acme/on-demand.js';
import type { CertificateManager } from '../proxy/acme/maintain.js';
import { StateFile } from '../proxy/acme/state.js';
import { cliTokenKeys } from '../proxy/acme/token-keys.js';
import type { CertificateRecord } from '../proxy/serving/spec.js';
import { heldAnswer, recordingManager, TEST_ACME } from './helpers/acme-manager.js';
import { CLI, REPO } from './helpers/basics.js';
import { captureLog, writeConfigFile } from './helpers/keyserver.js';
import { createCa, issue } from './helpers/pki.js';

const DAY = 86_400_000;

async function record(name: string, dnsNames: string[], keyId: string, serial: string): Promise<CertificateRecord> {
  const ca = await createCa(`edges CA ${serial}`);
  const leaf = await issue(ca, { commonName: dnsNames[0]!, dnsNames, keyAlgorithm: 'ec-p256', notAfter: new Date(Date.now() + 90 * DAY) });
  return { name, chainPem: leaf.certPem, keyId, serial, names: dnsNames } as unknown as CertificateRecord;
}

async function waitUntil(done: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(done()).toBe(true);
}

/** The on-demand gate for `manager`, wired as service.ts wires it, with `onDemand` settings on a test CA. */
function wiredGate(
  manager: CertificateManager,
  onDemand: Record<string, unknown>,
  extra: { readonly backoff?: boolean; readonly onOutcome?: ConstructorParameters<typeof OnDemandGate>[0]['onOutcome'] } = {},
): OnDemandGate {
  const config = loadProxyConfig(undefined, { keyserver: { socket: '/nonexistent' }, acme: { directory: 'https://ca.example/dir', onDemand } }).acme!.onDemand!;
  return new OnDemandGate({
    config,
    log: captureLog('warn').logger,
    isManaged: (name) => manager.isManaged(name),
    ...(extra.backoff === false ? {} : { backingOff: (name: string) => manager.backingOff(name) }),
    order: (name) => void manager.issue([name], undefined, true).catch(() => undefined),
    ...(extra.onOutcome === undefined ? {} : { onOutcome: extra.onOutcome }),
  });
}

function withDir<T>(run: (state: StateFile) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'keyedge-acme-edges-'));
  return run(new StateFile(dir)).finally(() => rmSync(dir, { recursive: true, force: true }));
}

describe('orders.ts: a failed order whose entry serves another serial afterwards', () => {
  it("an expansion failing while the operator's `cert replace` of the same entry loads keeps the entry's names (the stored certificate's)", () =>
    withDir(async (state) => {
      state.state.certificates['shop.example'] = { domains: ['shop.example'], keyId: 'k1', failures: 0 };
      const records = new Map([['shop.example', await record('shop.example', ['shop.example'], 'k1', 'S1')]]);
      // The operator's replacement (same pinned key, certs/manage.ts), for the names the entry serves.
      const replaced = await record('shop.example', ['shop.example'], 'k1', 'S2');
      const { manager, orders } = recordingManager(state, {
        records,
        answer: async (request) => {
          if (request.domains.includes('cart.example')) {
            // The replacement's watch reload commits while this order waits on the CA; then cart.example fails validation.
            records.set('shop.example', replaced);
            throw new AcmeError('validation of cart.example failed: unauthorized', { problem: 'unauthorized' });
          }
          return { keyId: 'k1', chainPem: '', newKey: false };
        },
      });
      await expect(manager.issue(['shop.example', 'cart.example'])).rejects.toThrow(/validation of cart.example failed/);
      // Not [shop.example, cart.example], a list no stored certificate has.
      expect(state.state.certificates['shop.example']?.domains).toEqual(['shop.example']);
      // Its next renewal orders cart.example again, which fails validation every time: shop.example's certificate expires.
      await manager.renew('shop.example').catch(() => undefined);
      expect(orders.at(-1)?.domains).toEqual(['shop.example']);
    }));

  it("in a fleet: a peer's renewal loaded here only after this node's lock, then this node's expansion fails: the peer's names, not the failed list", () =>
    withDir(async (state) => {
      state.state.certificates['shop.example'] = { domains: ['shop.example'], keyId: 'k1', failures: 0 };
      const records = new Map([['shop.example', await record('shop.example', ['shop.example'], 'k1', 'S1')]]);
      // Node A renewed shop.example under the lock (k2, S2); node B's records learn it from the store's watch, after B holds the lock.
      const peers = await record('shop.example', ['shop.example'], 'k2', 'S2');
      const { manager } = recordingManager(state, {
        records,
        answer: async () => {
          records.set('shop.example', peers);
          throw new AcmeError('validation of cart.example failed: unauthorized', { problem: 'unauthorized' });
        },
      });
      await expect(manager.issue(['shop.example', 'cart.example'])).rejects.toThrow();
      // The peer's key comes with the fleet's shared state (shared-state.ts), not from this failure.
      expect(state.state.certificates['shop.example']?.domains).toEqual(['shop.example']);
    }));

  it('the chain stored, the reload refused as a whole (key server away a moment, the config file mid-edit): the entry records the stored list', () =>
    withDir(async (state) => {
      state.state.certificates['shop.example'] = { domains: ['shop.example'], keyId: 'k1', failures: 0 };
      const records = new Map([['shop.example', await record('shop.example', ['shop.example'], 'k1', 'S1')]]);
      const { manager } = recordingManager(state, {
        records,
        answer: async () => {
          // cluster.ts's store: putCertificate wrote [shop, cart] on k2, then coordinator.reload reported the whole pass refused.
          throw new ChainStoredNotLoadedError('k2', 'cannot validate against the key server');
        },
      });
      await expect(manager.issue(['shop.example', 'cart.example'])).rejects.toThrow(/stored but not loaded/);
      // Kept at [shop.example] (the loaded records did not change), the next renewal ordered shop.example alone once the
      // store's chain loaded, and its store write dropped cart.example.
      expect(state.state.certificates['shop.example']?.domains).toEqual(['shop.example', 'cart.example']);
      expect(state.state.certificates['shop.example']?.keyId).toBe('k2');
      // The key before is retired (deleted after its grace only if nothing serves it then), the stored one is not.
      expect(state.state.retiredKeys.map((r) => r.keyId)).toEqual(['k1']);
    }));
});

describe('domain-lists.ts entryForList: an issue without an entry name', () => {
  it('a failed on-demand entry nothing serves does not make an expansion of the first name a 409 (it expanded before this change)', () =>
    withDir(async (state) => {
      state.state.certificates['a.example'] = { domains: ['a.example'], keyId: 'k1', failures: 0 };
      state.state.certificates['b.example'] = {
        domains: ['b.example'],
        keyId: '',
        failures: 1,
        onDemand: true,
        notBefore: new Date(Date.now() + 60_000).toISOString(),
        lastError: { code: 'KEYEDGE_ERR_ACME', message: 'validation failed', at: new Date().toISOString() },
      };
      const { manager } = recordingManager(state, { answer: async () => ({ keyId: 'k2', chainPem: '', newKey: true }) });
      // Not KEYEDGE_ERR_ACME_DOMAINS "managed under several certificates", for up to a day (until b.example is forgotten).
      await expect(manager.issue(['a.example', 'b.example'])).resolves.toMatchObject({ entry: 'a.example', domains: ['a.example', 'b.example'] });
    }));

  it("the 409's advice works: take the name off the entry that loses it, then issue again", () =>
    withDir(async (state) => {
      state.state.certificates['home.example'] = { domains: ['home.example', 'blog.example'], keyId: 'k1', failures: 0 };
      state.state.certificates['shop.example'] = { domains: ['shop.example', 'till.example'], keyId: 'k2', failures: 0 };
      const { manager } = recordingManager(state, { answer: async () => ({ keyId: 'k3', chainPem: '', newKey: true }) });
      await expect(manager.issue(['blog.example', 'shop.example'])).rejects.toMatchObject({
        code: 'KEYEDGE_ERR_ACME_DOMAINS',
        message: expect.stringContaining('--replace-domains'),
      });
      await manager.issue(['till.example'], 'shop.example', false, true);
      await manager.issue(['home.example', 'blog.example', 'shop.example']);
      const recording = Object.entries(state.state.certificates).filter(([, m]) => m.domains.includes('shop.example'));
      expect(recording.map(([name]) => name)).toEqual(['home.example']);
    }));
});

describe('domain-lists.ts entryForList: two issues without an entry name at once', () => {
  it('two expansions adding the same new name to two entries: one is refused, not both recorded', () =>
    withDir(async (state) => {
      state.state.certificates['a.example'] = { domains: ['a.example'], keyId: 'k1', failures: 0 };
      state.state.certificates['b.example'] = { domains: ['b.example'], keyId: 'k2', failures: 0 };
      const { answer, release } = heldAnswer('k3');
      const { manager } = recordingManager(state, { answer });
      // The first's order runs (its names not yet recorded) when the second is judged.
      const first = manager.issue(['new.example', 'a.example']);
      const second = manager.issue(['new.example', 'b.example']);
      release();
      const settled = await Promise.allSettled([first, second]);
      const recording = Object.entries(state.state.certificates).filter(([, m]) => m.domains.includes('new.example'));
      // Not both: a.example and b.example recording new.example (two certificates, both renewed), and every later
      // issue naming new.example without NAME refused as "managed under several certificates".
      expect(settled.map((s) => s.status).sort()).toEqual(['fulfilled', 'rejected']);
      expect(recording).toHaveLength(1);
    }));
});

describe('on-demand gate: the managed check and the order', () => {
  it('an expansion started while the gate awaits its ask endpoint: the name is not ordered as a second entry', async () => {
    let answerAsk: () => void = () => undefined;
    const asked = new Promise<void>((resolve) => {
      answerAsk = resolve;
    });
    let askArrived: () => void = () => undefined;
    const arrived = new Promise<void>((resolve) => {
      askArrived = resolve;
    });
    const server = http.createServer((_req, res) => {
      askArrived();
      void asked.then(() => res.end('ok'));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await withDir(async (state) => {
        state.state.certificates['shop.example'] = { domains: ['shop.example'], keyId: 'k1', failures: 0 };
        let finish: () => void = () => undefined;
        const expansionHeld = new Promise<void>((resolve) => {
          finish = resolve;
        });
        const { manager, orders } = recordingManager(state, {
          answer: async (request) => {
            if (request.domains.length > 1) await expansionHeld;
            return { keyId: `k${orders.length + 1}`, chainPem: '', newKey: true };
          },
        });
        const ask = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
        // `.example` is a special-use name no public CA issues for: a private CA's gate (publicNamesOnly off) lets it through.
        const onDemand = { ask, askTimeoutMs: 10_000, publicNamesOnly: false };
        const gate = wiredGate(manager, onDemand, { backoff: false });
        const decided = gate.wanted('cart.example');
        await arrived;
        // The operator expands shop.example to cart.example while the gate waits for its ask endpoint.
        const expansion = manager.issue(['shop.example', 'cart.example']);
        expect(manager.isManaged('cart.example')).toBe(true);
        answerAsk();
        const outcome = await decided;
        finish();
        await expansion;
        // The gate said 'ordered', but made no entry and order of its own for cart.example beside shop.example's.
        expect(outcome).toBe('ordered');
        expect(Object.keys(state.state.certificates)).toEqual(['shop.example']);
        expect(orders.map((o) => o.domains)).toEqual([['shop.example', 'cart.example']]);
      });
    } finally {
      server.close();
    }
  });
});

describe('on-demand gate: a name whose order failed', () => {
  it("waits out its backoff before it is ordered again: it does not spend its registered domain's hourly orders", () =>
    withDir(async (state) => {
      const failing = 'gone.shop.example';
      const { manager, orders } = recordingManager(state, {
        answer: async (request) => {
          // The CA cannot validate it (its CNAME points elsewhere now, or a CAA record names another CA).
          if (request.name === failing) throw new AcmeError(`validation of ${failing} failed: unauthorized`, { problem: 'unauthorized' });
          return { keyId: `k${orders.length}`, chainPem: '', newKey: true };
        },
      });
      const onDemand = { maxOrdersPerDomainPerHour: 3, publicNamesOnly: false };
      const outcomes: string[] = [];
      const gate = wiredGate(manager, onDemand, {
        onOutcome: (outcome, reason) => outcomes.push(reason === undefined ? outcome : `${outcome}:${reason}`),
      });
      expect(await gate.wanted(failing)).toBe('ordered');
      await waitUntil(() => state.state.certificates[failing]?.failures === 1 && !(manager.view(failing) as { renewing: boolean }).renewing);
      // Its handshakes come back (each worker reports it every 10 s): within its backoff (a minute, doubling), none orders.
      for (let i = 0; i < 3; i++) await gate.wanted(failing);
      expect(orders.map((o) => o.name)).toEqual([failing]);
      expect(outcomes.slice(1)).toEqual(['ignored:backoff', 'ignored:backoff', 'ignored:backoff']);
      // Another name under the same registered domain still has the hour's orders it had.
      expect(await gate.wanted('www.shop.example')).toBe('ordered');
      // Its backoff over, its next handshake orders it again, through the gate's limits.
      state.state.certificates[failing]!.notBefore = new Date(Date.now() - 1000).toISOString();
      expect(await gate.wanted(failing)).toBe('ordered');
      await waitUntil(() => state.state.certificates[failing]?.failures === 2 && !(manager.view(failing) as { renewing: boolean }).renewing);
      expect(orders.map((o) => o.name)).toEqual([failing, 'www.shop.example', failing]);
      // Ordered while its backoff runs (the gate asked before it began): refused, not sent to the CA.
      await expect(manager.issue([failing], undefined, true)).rejects.toThrow(/backoff/);
      expect(orders).toHaveLength(3);
    }));
});

describe("on-demand gate: the managed check's cost", () => {
  it('does not walk every managed entry for each name a handshake brings; an entry recorded since is still found', () =>
    withDir(async (state) => {
      // A platform's worth of managed certificates, each serving (fewer than on a platform: the count below says the cost).
      for (let i = 0; i < 5_000; i++) {
        const name = `www.customer${i}.example`;
        state.state.certificates[name] = { domains: [name, `*.customer${i}.example`], keyId: `k${i}`, failures: 0, lastIssuedAt: 'then' };
      }
      // Every walk of the entries (Object.entries, Object.keys) is counted.
      let walks = 0;
      state.state.certificates = new Proxy(state.state.certificates, {
        ownKeys(target) {
          walks++;
          return Reflect.ownKeys(target);
        },
      });
      const { manager, orders } = recordingManager(state, { answer: async () => ({ keyId: 'k-new', chainPem: '', newKey: true }) });
      const gate = wiredGate(manager, { maxOrdersPerDomainPerHour: 1, publicNamesOnly: false });
      // A client sending random names under one registered domain (a ClientHello each, no crypto on either side): the first is
      // ordered, the domain's hour is full then, and every other one rate-limited.
      const started = performance.now();
      for (let i = 0; i < 300; i++) await gate.wanted(`r${i}.flood.example`, '192.0.2.7');
      const elapsed = performance.now() - started;
      // Each name walked every entry (with 20,000: some 35 ms a name, the primary's event loop held): 300 walks. Now the
      // index is built once, again for the one order (and its state saved), and at most once a second.
      expect(orders.map((o) => o.name)).toEqual(['r0.flood.example']);
      expect(walks, `${walks} walks of the entries for 300 names in ${Math.round(elapsed)} ms`).toBeLessThan(15);
      for (const name of ['www.customer7.example', 'api.customer7.example', 'www.customer4999.example']) expect(manager.isManaged(name), name).toBe(true);
      for (const name of ['customer7.example', 'a.b.customer7.example']) expect(manager.isManaged(name), name).toBe(false);
      // An expansion recorded since the index was built is found at once, by the gate and by the issue's own check.
      await manager.issue(['www.customer7.example', '*.customer7.example', 'shop.example']);
      expect(manager.isManaged('shop.example')).toBe(true);
      expect(await gate.wanted('shop.example', '192.0.2.8')).toBe('ignored');
      expect(orders.map((o) => o.name)).toEqual(['r0.flood.example', 'www.customer7.example']);
    }));
});

describe('on-demand orders at once', () => {
  it('are at most renewal.maxConcurrent, as every order: the others wait their turn, and each is ordered once', () =>
    withDir(async (state) => {
      let running = 0;
      let most = 0;
      const { answer, release } = heldAnswer('k-new');
      const { manager, orders } = recordingManager(state, {
        answer: async (request) => {
          most = Math.max(most, ++running);
          try {
            // The operator's renewal of a waiting name, below, fails at the CA.
            if (request.name === 'www.tenant11.example') throw new AcmeError('validation of www.tenant11.example failed', { problem: 'unauthorized' });
            return await answer();
          } finally {
            running--;
          }
        },
      });
      const gate = wiredGate(manager, { publicNamesOnly: false });
      // A burst of new names the ask policy allows (customers onboarding, or a client cycling allowed names): each order
      // makes a key in the token by a `keyedge key generate` child (a node process) and holds a key-server connection.
      const names = Array.from({ length: 12 }, (_, i) => `www.tenant${i}.example`);
      for (const [i, name] of names.entries()) expect(await gate.wanted(name, `192.0.2.${i + 1}`)).toBe('ordered');
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(TEST_ACME.renewal.maxConcurrent).toBe(4);
      expect(orders).toHaveLength(4);
      // Waiting, each is managed: its next handshake orders nothing more.
      expect(await gate.wanted('www.tenant11.example', '192.0.2.99')).toBe('ignored');
      // The operator renews one that waits (its order goes at once) and it fails: the waiting order is not placed after it,
      // past its backoff.
      await expect(manager.renew('www.tenant11.example')).rejects.toThrow(/validation/);
      release();
      await waitUntil(() => orders.length >= 12 && running === 0);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(most).toBe(5);
      expect(orders.map((o) => o.name).sort()).toEqual([...names].sort());
      for (const name of names.slice(0, 11)) expect(state.state.certificates[name]?.keyId, name).toBe('k-new');
      expect(state.state.certificates['www.tenant11.example']?.failures).toBe(1);
    }));
});

describe('a new list waiting behind a running renewal of its entry', () => {
  it('its names count as ordered: a concurrent issue of one of them makes no second entry', () =>
    withDir(async (state) => {
      state.state.certificates['a.example'] = { domains: ['a.example'], keyId: 'k1', failures: 0 };
      let release: () => void = () => undefined;
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      let n = 0;
      const { manager } = recordingManager(state, {
        answer: async () => {
          if (n++ === 0) await held;
          return { keyId: `k${n + 1}`, chainPem: '', newKey: true };
        },
      });
      const renewal = manager.renew('a.example');
      const expansion = manager.issue(['a.example', 'c.example']);
      expect(manager.isManaged('c.example')).toBe(true);
      const second = manager.issue(['c.example']);
      release();
      await Promise.allSettled([renewal, expansion, second]);
      const holding = Object.entries(state.state.certificates).filter(([, m]) => m.domains.includes('c.example'));
      expect(holding.map(([name]) => name)).toEqual(['a.example']);
    }));
});

describe('token-keys.ts: deleting a retired key', () => {
  it('a key already gone from the token counts as deleted (another node, or a lock lost before its record went)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-acme-keys-'));
    try {
      const keys = cliTokenKeys(writeConfigFile(dir), CLI);
      const made = await keys.generate('ec-p256', 'acme-gone-test');
      await keys.remove(made.keyId);
      await expect(keys.remove(made.keyId)).resolves.toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  // A primary where /proc is not mounted (a private mount namespace here) cannot wipe the variable: that was silent.
  const canHideProc = spawnSync('unshare', ['-m', 'sh', '-c', 'mount -t tmpfs none /proc']).status === 0;
  it.skipIf(!canHideProc)(
    'a PIN variable the primary cannot wipe from its /proc environ block is told (the name, never the PIN)',
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'keyedge-acme-keys-'));
      try {
        const config = writeConfigFile(dir, { pkcs11: { pin: { env: 'KEYEDGE_TEST_WIPE_PIN' } } });
        const module = pathToFileURL(join(REPO, 'dist', 'proxy', 'acme', 'token-keys.js')).href;
        const script = `import { cliTokenKeys } from ${JSON.stringify(module)}; cliTokenKeys(process.argv[1], 'keyedge', (m) => console.log(m));`;
        const hidden = 'mount -t tmpfs none /proc && exec "$0" --input-type=module -e "$1" "$2"';
        const out = execFileSync('unshare', ['-m', 'sh', '-c', hidden, process.execPath, script, config], {
          env: { ...process.env, KEYEDGE_TEST_WIPE_PIN: 'wipe-test-pin-7351' },
          encoding: 'utf8',
          timeout: 30_000,
        });
        expect(out).toContain('KEYEDGE_TEST_WIPE_PIN could not be wiped');
        expect(out.includes('wipe-test-pin-7351'), 'the PIN in the warning').toBe(false);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    30_000,
  );
});

describe('the renewal loop past renewal.maxConcurrent', () => {
  it('starts the next due entry as an order ends, not a pass (checkSeconds) later; never more than maxConcurrent at once, each entry once', () =>
    withDir(async (state) => {
      // Ten entries due now (none serves yet); one of them is refused at once (before the CA is asked).
      const names = Array.from({ length: 10 }, (_, i) => `n${i}.example.net`);
      for (const name of names) state.state.certificates[name] = { domains: [name], keyId: '', failures: 0 };
      let running = 0;
      let most = 0;
      const { manager, orders } = recordingManager(state, {
        answer: async (request) => {
          most = Math.max(most, ++running);
          try {
            if (request.name === 'n5.example.net') throw new Error('refused at once');
            await new Promise((resolve) => setTimeout(resolve, 5));
            return { keyId: `k-${request.name}`, chainPem: '', newKey: true };
          } finally {
            running--;
          }
        },
      });
      await manager.tick();
      expect(orders).toHaveLength(TEST_ACME.renewal.maxConcurrent);
      // One pass: the six left start as places free. Before, they waited for the next pass, an hour later at the defaults
      // (some 96 renewals a day in all).
      for (let i = 0; i < 500 && !(orders.length >= names.length && running === 0); i++) await new Promise((resolve) => setTimeout(resolve, 10));
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(orders.map((o) => o.name)).toEqual(names);
      expect(most).toBe(TEST_ACME.renewal.maxConcurrent);
      for (const name of names) expect(state.state.certificates[name]?.keyId, name).toBe(name === 'n5.example.net' ? '' : `k-${name}`);
      expect(state.state.certificates['n5.example.net']?.failures).toBe(1);
    }));
});

describe('the renewal loop stopped (the primary shutting down)', () => {
  it('starts no renewal left of its pass as the orders running end', () =>
    withDir(async (state) => {
      const names = Array.from({ length: 10 }, (_, i) => `s${i}.example.net`);
      for (const name of names) state.state.certificates[name] = { domains: [name], keyId: '', failures: 0 };
      const { answer, release } = heldAnswer('k-held');
      const { manager, orders } = recordingManager(state, { answer });
      await manager.tick();
      expect(orders).toHaveLength(TEST_ACME.renewal.maxConcurrent);
      manager.stop();
      // Before, each order that ended started the next one left of the pass: the primary, its workers gone, stayed up
      // ordering the backlog (keys made in the token, challenges nobody answered).
      release();
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(orders).toHaveLength(TEST_ACME.renewal.maxConcurrent);
    }));
});

describe('on-demand gate: a failed name ordered again while every order place is taken', () => {
  it('waiting its turn, it is in progress: its next handshakes order nothing, and its registered domain keeps its hour', () =>
    withDir(async (state) => {
      const failed = 'failed.shop.example';
      const past = new Date(Date.now() - 1000).toISOString();
      // Its first order failed (validation) and its backoff is over: its next handshake orders it again.
      state.state.certificates[failed] = {
        domains: [failed],
        keyId: '',
        failures: 1,
        onDemand: true,
        notBefore: past,
        lastError: { code: 'KEYEDGE_ERR_ACME', message: 'validation failed', at: past },
      };
      const { answer, release } = heldAnswer('k-new');
      const { manager, orders } = recordingManager(state, { answer });
      // The operator's orders take every place (renewal.maxConcurrent): the gate's order waits its turn.
      const busy = Array.from({ length: TEST_ACME.renewal.maxConcurrent }, (_, i) => manager.issue([`busy${i}.other.example`]).catch(() => undefined));
      const outcomes: string[] = [];
      const gate = wiredGate(
        manager,
        { maxOrdersPerDomainPerHour: 3, publicNamesOnly: false },
        {
          onOutcome: (outcome, reason) => outcomes.push(reason === undefined ? outcome : `${outcome}:${reason}`),
        },
      );
      expect(await gate.wanted(failed, '192.0.2.1')).toBe('ordered');
      // Each worker reports it again every 10 s while it waits: before, each report was ordered again (the domain's hour
      // spent, then rate_limited), and the domain's other new names were rate-limited for the hour.
      for (let i = 0; i < 5; i++) await gate.wanted(failed, `192.0.2.${i + 2}`);
      expect(outcomes).toEqual(['ordered', ...Array(5).fill('ignored:managed')]);
      expect(manager.isManaged(failed)).toBe(true);
      expect(manager.backingOff(failed)).toBe(false);
      expect(await gate.wanted('new.shop.example', '192.0.2.50')).toBe('ordered');
      release();
      await Promise.all(busy);
      await waitUntil(() => orders.length === TEST_ACME.renewal.maxConcurrent + 2 && !(manager.view(failed) as { renewing: boolean }).renewing);
      expect(orders.filter((o) => o.name === failed)).toHaveLength(1);
      expect(state.state.certificates[failed]).toMatchObject({ keyId: 'k-new', failures: 0 });
    }));
});

describe('a failed on-demand entry a day old, ordered again while every order place is taken', () => {
  it('is not forgotten by the pass while its order waits its turn: the order is placed when a place frees', () =>
    withDir(async (state) => {
      const failed = 'old.shop.example';
      const dayAgo = new Date(Date.now() - 25 * 3_600_000).toISOString();
      // Its last failure is more than a day old and its backoff over: the pass forgets such an entry, unless it is ordered.
      state.state.certificates[failed] = {
        domains: [failed],
        keyId: '',
        failures: 1,
        onDemand: true,
        notBefore: dayAgo,
        lastError: { code: 'KEYEDGE_ERR_ACME', message: 'validation failed', at: dayAgo },
      };
      const { answer, release } = heldAnswer('k-new');
      const { manager, orders } = recordingManager(state, { answer });
      const busy = Array.from({ length: TEST_ACME.renewal.maxConcurrent }, (_, i) => manager.issue([`busy${i}.other.example`]).catch(() => undefined));
      const gate = wiredGate(manager, { publicNamesOnly: false });
      expect(await gate.wanted(failed, '192.0.2.1')).toBe('ordered');
      // The maintenance pass runs while it waits. Before, it forgot the entry, and the waiting order was dropped at its turn.
      await manager.tick();
      expect(state.state.certificates[failed]).toBeDefined();
      release();
      await Promise.all(busy);
      await waitUntil(() => orders.some((o) => o.name === failed) && !(manager.view(failed) as { renewing: boolean }).renewing);
      expect(state.state.certificates[failed]).toMatchObject({ keyId: 'k-new', failures: 0 });
    }));
});
