import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { entryNameFor } from '../proxy/acme/entry-names.js';
import type { AcmeIssuer, IssueRequest } from '../proxy/acme/issuer.js';
import { CertificateManager } from '../proxy/acme/maintain.js';
import { StateFile } from '../proxy/acme/state.js';
import { STORE_ENTRY_NAME } from '../proxy/certs/store.js';
import { registerAcmeMetrics } from '../proxy/metrics.js';
import { captureLog } from './helpers/keyserver.js';

// The store entry a managed certificate is kept under (proxy/acme/entry-names.ts). Entry names were the first domain
// cut to 64 characters: two names alike in their first 64 shared one entry, so `keyedge cert issue` for the second
// renewed the first one's certificate, and a handshake for the second was ignored by the on-demand gate as managed.
// Names of at most 64 characters keep the entry name they had; an entry made under a cut name before stays where it is.
// End to end against pebble: test/acme-issue.test.ts (the CLI) and test/acme-on-demand.test.ts (the gate).
const acme = loadProxyConfig(undefined, { keyserver: { socket: '/nonexistent' }, acme: { directory: 'https://ca.example/dir' } }).acme!;

/** Two 70-character names alike in their first 64. */
const LONG = `${'a'.repeat(60)}.twin.test`;
const TWIN = `${'a'.repeat(60)}.twim.test`;
/** What the first domain's entry name looks like, not exactly what a lower-case DNS name can be. */
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A manager over a fresh state file whose issuer records each order and answers it at once. */
function manager(): { manager: CertificateManager; state: StateFile; orders: IssueRequest[] } {
  const dir = mkdtempSync(join(tmpdir(), 'keyedge-entry-names-'));
  dirs.push(dir);
  const state = new StateFile(dir);
  const orders: IssueRequest[] = [];
  const issuer = {
    issue: async (request: IssueRequest) => {
      orders.push(request);
      return { keyId: `key-${orders.length}`, chainPem: '', newKey: true };
    },
  } as unknown as AcmeIssuer;
  const running = new CertificateManager({
    config: acme,
    state,
    issuer,
    keys: { generate: () => Promise.reject(new Error('unused')), remove: async () => undefined },
    records: () => new Map(),
    metrics: registerAcmeMetrics(new Registry(), () => 0),
    log: captureLog('warn').logger,
    renewalWindow: async () => undefined,
  });
  return { manager: running, state, orders };
}

describe('entry names of managed certificates', () => {
  it('a name of at most 64 characters is its entry name, as before (`*` spelled `_`)', () => {
    const at64 = `${'b'.repeat(55)}.ok.test1`;
    expect(at64).toHaveLength(64);
    for (const [domains, name] of [
      [['www.example.com', 'api.example.com'], 'www.example.com'],
      [['*.example.com'], '_.example.com'],
      [[at64], at64],
      [[`*.${at64.slice(2)}`], `_.${at64.slice(2)}`],
    ] as const) {
      expect(entryNameFor(domains)).toBe(name);
    }
  });

  it('two names alike in their first 64 characters get two entry names the store accepts, each its own', () => {
    expect(LONG.slice(0, 64)).toBe(TWIN.slice(0, 64));
    const names = [LONG, TWIN, `*.${LONG.slice(2)}`, `*.${TWIN.slice(2)}`, `${'c'.repeat(63)}.${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(61)}`];
    const entries = names.map((n) => entryNameFor([n]));
    expect(new Set(entries).size).toBe(names.length);
    for (const entry of entries) {
      expect(entry).toHaveLength(64);
      expect(entry).toMatch(STORE_ENTRY_NAME);
      // `_` past the first character: no DNS name's entry name (at most 64 characters, itself) is ever one of these.
      expect(entry.slice(1)).toContain('_');
      expect(entry).not.toMatch(DNS_NAME);
    }
    // Readable: the name's first 47 characters, then 16 hex digits of its SHA-256; the same name, the same entry.
    expect(entries[0]).toMatch(new RegExp(`^${LONG.slice(0, 47).replaceAll('.', '\\.')}_[0-9a-f]{16}$`));
    expect(entries[2]!.startsWith('_.')).toBe(true);
    expect(entryNameFor([LONG, 'other.test'])).toBe(entries[0]);
  });

  it('keyedge cert issue for the second name orders its own entry, and the on-demand gate sees it as not managed', async () => {
    const { manager: running, state, orders } = manager();
    await running.issue([LONG]);
    // Before: the twin was "managed" (its handshake ignored) and its issue renewed the first name's entry.
    expect(running.isManaged(LONG)).toBe(true);
    expect(running.isManaged(TWIN)).toBe(false);
    await running.issue([TWIN]);
    expect(orders.map((o) => o.domains)).toEqual([[LONG], [TWIN]]);
    expect(orders[0]!.name).not.toBe(orders[1]!.name);
    expect(Object.keys(state.state.certificates).sort()).toEqual([entryNameFor([LONG]), entryNameFor([TWIN])].sort());
    expect(running.isManaged(TWIN)).toBe(true);
  });

  it('an entry made under the cut name before stays its name’s: renewed in place, not ordered again; the twin gets its own', async () => {
    const { manager: running, state, orders } = manager();
    const cut = LONG.slice(0, 64);
    state.state.certificates[cut] = { domains: [LONG], keyId: 'key-old', failures: 0, lastIssuedAt: new Date().toISOString() };
    expect(running.isManaged(LONG)).toBe(true);
    expect(running.entryOf([LONG])).toBe(cut);
    expect(running.isManaged(TWIN)).toBe(false);
    await running.issue([LONG]);
    await running.issue([TWIN]);
    expect(orders.map((o) => [o.name, o.domains])).toEqual([
      [cut, [LONG]],
      [entryNameFor([TWIN]), [TWIN]],
    ]);
    expect(Object.keys(state.state.certificates).sort()).toEqual([cut, entryNameFor([TWIN])].sort());
  });
});
